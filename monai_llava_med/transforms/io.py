# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Loading medical images through MONAI readers, with validation and typed errors.

:class:`LoadMedicalImage` reads a DICOM file, a DICOM series folder, a multi-frame DICOM, a NIfTI, NRRD or
MetaImage volume or a PNG/JPEG/single-page TIFF with :class:`monai.transforms.LoadImage` (``PydicomReader``,
``NibabelReader``, our :class:`~.sitk_reader.SimpleITKImageReader`, ``PILReader``) and returns a channel-first
:class:`monai.data.MetaTensor`:

* 2D images: ``(C, H, W)`` as stored, ``meta["layout"] == "image"``; a DICOM slice with ImageOrientationPatient
  also carries the RAS affine of that array and ``meta["patient_geometry"] = True``;
* volumes with patient geometry (series, NIfTI, NRRD, MetaImage, enhanced multi-frame DICOM whose frames form one
  stack): ``(C, X, Y, Z)`` with a RAS affine, ``meta["layout"] == "volume"`` (DICOM: :mod:`.dicom_geometry`);
* multi-frame DICOM without per-slice geometry: ``(C, X, Y, F)``, ``meta["layout"] == "frames"``.

Only non-identifying fields are kept in ``meta``: ``modality``, ``photometric``, ``window_center``,
``window_width``, ``source`` (the file or folder name), the affine and spacing; photos also get ``bit_depth``
(8 for 8-bit greyscale/colour files, ``None`` for 16-bit, integer or float ones). The readers live in
:mod:`.input_kind` (which reader a path needs), :mod:`.dicom_header`, :mod:`.dicom_file`, :mod:`.dicom_series`,
:mod:`.nifti`, :mod:`.sitk_header`, :mod:`.sitk_reader` and :mod:`.photo`.
"""

from __future__ import annotations

from os import PathLike

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ..errors import ImageReadError
from .dicom_file import load_dicom_file
from .dicom_header import check_dicom_pixels, read_dicom_header
from .dicom_series import DicomSeriesInfo, load_dicom_series, scan_dicom_series
from .input_kind import InputKind, detect_input_kind
from .nifti import load_nifti
from .photo import load_photo
from .readers import DEFAULT_MAX_VOXELS, check_values
from .sitk_reader import SimpleITKImageReader, load_sitk_volume

__all__ = [
    "InputKind",
    "DicomSeriesInfo",
    "detect_input_kind",
    "read_dicom_header",
    "check_dicom_pixels",
    "scan_dicom_series",
    "load_dicom_file",
    "load_dicom_series",
    "load_nifti",
    "load_sitk_volume",
    "SimpleITKImageReader",
    "load_photo",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "LoadMedicalImageD",
    "LoadMedicalImageDict",
    "DEFAULT_MAX_VOXELS",
]


class LoadMedicalImage(Transform):
    """Load any supported radiology input or photo through MONAI readers into a validated MetaTensor.

    Args:
        max_voxels: refuse inputs larger than this (zero-size inputs are always refused).
        modality: override the modality (NIfTI, NRRD, MetaImage and photos have none); ``None`` keeps the file's or
            a guess (NIfTI, NRRD, MetaImage: ``"CT"`` when the values look like Hounsfield units, else ``"MR"``; see
            :func:`~monai_llava_med.transforms.nifti.guess_nifti_modality`).

    Returns (from ``__call__``):
        a channel-first MetaTensor; see the module docstring for layouts and ``meta`` keys.
    """

    def __init__(self, max_voxels: int = DEFAULT_MAX_VOXELS, modality: str | None = None) -> None:
        self.max_voxels = max_voxels
        self.modality = modality

    def __call__(self, path: str | PathLike, kind: InputKind | None = None) -> MetaTensor:  # type: ignore[override]
        """Load ``path``.

        Args:
            path: file or DICOM series folder.
            kind: skip detection when the caller already knows the kind.
        """
        kind = kind or detect_input_kind(path)
        if kind == "dicom":
            img = load_dicom_file(path, self.max_voxels)
        elif kind == "dicom_series":
            img = load_dicom_series(path, self.max_voxels)
        elif kind == "nifti":
            img = load_nifti(path, self.max_voxels)
        elif kind in ("nrrd", "metaimage"):
            img = load_sitk_volume(path, self.max_voxels)
        elif kind == "image":
            img = load_photo(path, self.max_voxels)
        else:
            raise ImageReadError("a whole-slide image must go through the pathology transforms", path)
        check_values(img, path)
        if self.modality is not None:
            img.meta["modality"] = self.modality.upper()
        return img


class LoadMedicalImaged(MapTransform):
    """Dictionary wrapper of :class:`LoadMedicalImage`: replaces each path under ``keys`` by the loaded image.

    Args:
        keys: keys holding paths.
        max_voxels: see :class:`LoadMedicalImage`.
        modality: see :class:`LoadMedicalImage`.
        allow_missing_keys: do not raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        modality: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(max_voxels, modality)

    def __call__(self, data: dict) -> dict:  # type: ignore[override]
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


LoadMedicalImageD = LoadMedicalImageDict = LoadMedicalImaged

