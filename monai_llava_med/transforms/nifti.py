# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""NIfTI volumes through MONAI's NibabelReader, with the header (shape, affine) checked before reading."""

from __future__ import annotations

import math
from os import PathLike

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import optional_import

from ..errors import ImageReadError, VolumeError
from .limits import check_data_size
from .readers import DEFAULT_MAX_VOXELS, cached_loader, check_values, clean_meta, file_name, run_loader

nib, _ = optional_import("nibabel")

__all__ = ["load_nifti", "guess_nifti_modality"]


def guess_nifti_modality(img: torch.Tensor) -> str:
    """``"CT"`` when values look like Hounsfield units (5th percentile <= -700, max <= 4000: air), else ``"MR"``."""
    flat = img.reshape(-1)
    sample = flat[:: max(1, flat.numel() // 1_000_000)].double().numpy()
    return "CT" if float(np.percentile(sample, 5)) <= -700 and float(flat.max()) <= 4000 else "MR"


def load_nifti(path: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> MetaTensor:
    """Load one 3D (or 2D, as one axial slice) NIfTI volume as float32 ``(C, X, Y, Z)`` (``"volume"``).

    Before any voxel is read, the data size the header claims (dimensions x data type) is compared with the bytes
    the file holds (for ``.nii.gz``, the gzip stream is inflated in 1 MB chunks and counted, nothing kept), so a
    forged 60-byte header cannot make the reader allocate gigabytes.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        max_voxels: size limit (checked from the header before reading).

    Raises:
        ImageReadError: unreadable, zero-size or absurd, or holding less data than its header claims.
        VolumeError: NaN/inf or singular affine, more than one volume, NaN/inf values.
    """
    try:
        nii = nib.load(str(path))
        shape = tuple(int(s) for s in nii.shape)
        affine = np.asarray(nii.affine, dtype=np.float64)
        itemsize, offset = int(nii.get_data_dtype().itemsize), int(nii.dataobj.offset)
    except Exception as e:
        raise ImageReadError(f"not a readable NIfTI file ({type(e).__name__} while reading its header)", path) from e
    if not np.isfinite(affine).all():
        raise VolumeError("NIfTI affine (sform/qform/pixdim) holds NaN/inf values", path)
    sv = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if not sv[0] > 0 or sv[-1] <= 1e-8 * sv[0]:
        raise VolumeError("NIfTI affine (sform/qform/pixdim) is singular (zero voxel size or collapsed axes)", path)
    if len(shape) > 4 or (len(shape) == 4 and shape[3] != 1):
        raise VolumeError(f"unexpected {len(shape)}D data (more than one volume); expected one 3D volume", path)
    if len(shape) < 2 or min(shape) <= 0:
        raise ImageReadError("zero-size or degenerate NIfTI shape", path)
    if math.prod(shape) > max_voxels:
        raise ImageReadError(f"absurd NIfTI size: more than the limit of {max_voxels} voxels", path)
    check_data_size(math.prod(shape), itemsize, offset, path, gzipped=str(path).lower().endswith(".gz"))
    img = run_loader(cached_loader("nifti"), path)
    if img.ndim == 5:
        img = img[..., 0]
    if img.ndim == 3:  # a 2D NIfTI: one axial slice
        img = img.unsqueeze(-1)
    img = img.float()
    check_values(img, path)
    modality = guess_nifti_modality(img)
    meta = {"modality": modality, "photometric": "MONOCHROME2", "window_center": None, "window_width": None}
    return clean_meta(img, {**meta, "source": file_name(path), "layout": "volume"})
