# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""NRRD (``.nrrd``/``.nhdr``) and MetaImage (``.mha``/``.mhd``) volumes through SimpleITK, behind MONAI's reader API.

:class:`SimpleITKImageReader` is a :class:`monai.data.ImageReader`: ``LoadImage(reader=SimpleITKImageReader())``
gives the same array layout and metadata as MONAI's ``ITKReader`` (channel-less ``(X, Y, Z)`` array, ``affine`` and
``original_affine`` in RAS, ``spatial_shape``, ``original_channel_dim``) with the lighter SimpleITK package instead
of ``itk``. :func:`load_sitk_volume` is the project's loader: header checks first (:mod:`.sitk_header`), then the
reader, then the same ``meta`` as a NIfTI volume, so reorientation (``CanonicalOrientation``) and views are shared.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, MetaTensor
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from ..errors import ImageReadError, VolumeError
from .nifti import guess_nifti_modality
from .readers import DEFAULT_MAX_VOXELS, cached_loader, check_values, clean_meta, file_name, run_loader
from .sitk_header import SITK_SUFFIXES, check_sitk_header, has_sitk, quiet_itk, sitk, sitk_format

__all__ = ["SimpleITKImageReader", "load_sitk_volume"]

class SimpleITKImageReader(ImageReader):
    """Read NRRD and MetaImage files with SimpleITK as MONAI's ``ITKReader`` would with ``itk``.

    The array is returned in ``(X, Y, Z)`` index order (ITK's, i.e. the numpy array of
    ``sitk.GetArrayFromImage`` transposed), like ``ITKReader(reverse_indexing=False)``; a 2D image becomes a
    one-slice volume. The file's ImageIO is chosen by suffix, so a ``.nrrd`` file is read as NRRD or not at all.

    Args:
        affine_lps_to_ras: convert ITK's LPS affine to RAS (as ``ITKReader`` and ``NibabelReader`` give it).
    """

    def __init__(self, affine_lps_to_ras: bool = True) -> None:
        super().__init__()
        self.affine_lps_to_ras = affine_lps_to_ras

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        """Whether every file has a NRRD/MetaImage suffix and SimpleITK is installed."""
        return has_sitk and all(Path(f).suffix.lower() in SITK_SUFFIXES for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any) -> Any:
        """Read one file (a ``SimpleITK.Image``) or several (a list of them).

        Args:
            data: file name(s).
            kwargs: unused (kept for the ``ImageReader`` signature).
        """
        images = []
        for name in ensure_tuple(data):
            reader = sitk.ImageFileReader()
            reader.SetImageIO(sitk_format(name)[1])
            reader.SetFileName(str(name))
            with quiet_itk():
                image = reader.Execute()
            images.append(sitk.JoinSeries(image) if image.GetDimension() == 2 else image)
        return images if len(images) > 1 else images[0]

    def _affine(self, image: Any) -> np.ndarray:
        n = image.GetDimension()
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(n, n)
        affine = np.eye(n + 1)
        affine[:n, :n] = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
        affine[:n, n] = np.asarray(image.GetOrigin(), dtype=np.float64)
        return orientation_ras_lps(affine) if self.affine_lps_to_ras else affine

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """The voxels ``(X, Y, Z)`` (stacked on a first axis for several images) and the first image's metadata.

        Args:
            img: what :meth:`read` returned.
        """
        images = list(img) if isinstance(img, (list, tuple)) else [img]  # ensure_tuple would iterate the voxels
        arrays, meta = [], {}
        for i, image in enumerate(images):
            if image.GetNumberOfComponentsPerPixel() != 1:
                raise ValueError("only single-component (scalar) images are supported")
            arrays.append(sitk.GetArrayFromImage(image).T)  # a copy: it outlives the SimpleITK image
            if i == 0:
                affine = self._affine(image)
                meta = {
                    MetaKeys.ORIGINAL_AFFINE: affine,
                    MetaKeys.AFFINE: affine.copy(),
                    MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
                    MetaKeys.SPATIAL_SHAPE: np.asarray(image.GetSize()),
                    MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if len(images) == 1 else 0,
                    "spacing": np.asarray(image.GetSpacing()),
                }
        return (arrays[0] if len(arrays) == 1 else np.stack(arrays)), meta


def load_sitk_volume(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> MetaTensor:
    """Load one NRRD/MetaImage volume as float32 ``(C, X, Y, Z)`` (``"volume"``), its header checked first.

    Args:
        path: a ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file (detached data next to it).
        max_voxels: size limit, checked from the header before any voxel is read.

    Raises:
        ImageReadError: unreadable or truncated file, missing or misplaced data file, size over the limit.
        VolumeError: 4D, vector or complex data, unusable geometry, NaN/inf values.
    """
    fmt = check_sitk_header(path, max_voxels)
    img = run_loader(cached_loader("sitk"), path, on_error=lambda e: ImageReadError(
        f"cannot read the {fmt} file (ITK {type(e).__name__}: truncated, corrupt or unsupported encoding)", path))
    if img.ndim != 4:
        raise VolumeError(f"unexpected {img.ndim - 1}D data; expected one 3D volume", path)
    img = img.float()
    check_values(img, path)
    meta = {"modality": guess_nifti_modality(img), "photometric": "MONOCHROME2", "window_center": None,
            "window_width": None}
    return clean_meta(img, {**meta, "source": file_name(path), "layout": "volume"})
