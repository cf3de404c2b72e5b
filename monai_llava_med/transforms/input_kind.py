# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Which reader a path needs: by folder and suffix, then by content (DICOM preamble, TIFF pyramid)."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Literal

from ..errors import DicomDecodeError, ImageReadError

__all__ = ["InputKind", "detect_input_kind", "is_dicom_file"]

InputKind = Literal["dicom", "dicom_series", "nifti", "nrrd", "metaimage", "image", "slide"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")
_METAIMAGE_SUFFIXES = (".mha", ".mhd")
_TIFF_SUFFIXES = (".tif", ".tiff", ".svs")
#: A single-level TIFF larger than this on a side is treated as a slide, not as a photo.
_SLIDE_MIN_SIDE = 10000


def _suffix(path: str | PathLike) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_dicom_file(path: str | PathLike) -> bool:
    """True when the file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def detect_input_kind(path: str | PathLike) -> InputKind:
    """Decide how a path is read: by folder/suffix, then by content (DICOM preamble, TIFF pyramid).

    Args:
        path: a file or a DICOM series folder.

    Returns:
        one of ``"dicom"``, ``"dicom_series"``, ``"nifti"``, ``"nrrd"`` (``.nrrd``/``.nhdr``), ``"metaimage"``
        (``.mha``/``.mhd``), ``"image"`` (PNG/JPEG/small single-page TIFF) or ``"slide"`` (pyramidal or very large
        TIFF/SVS).

    Raises:
        ImageReadError: missing path, empty file, empty folder, unsupported type.
        DicomDecodeError: a ``.dcm`` file without the DICOM preamble.
        SlideError: an unreadable TIFF.
    """
    p = Path(path)
    if p.is_dir():
        if not any(is_dicom_file(f) for f in p.iterdir() if f.is_file()):
            raise ImageReadError("folder holds no DICOM files (expected one DICOM series)", path)
        return "dicom_series"
    if not p.is_file():
        raise ImageReadError("no such file or folder", path)
    if p.stat().st_size == 0:
        raise ImageReadError("file is empty (0 bytes)", path)
    suffix = _suffix(p)
    if suffix in _NIFTI_SUFFIXES:
        return "nifti"
    if suffix in _NRRD_SUFFIXES:
        return "nrrd"
    if suffix in _METAIMAGE_SUFFIXES:
        return "metaimage"
    if suffix in _IMAGE_SUFFIXES:
        return "image"
    if suffix in _TIFF_SUFFIXES:
        from .pathology import tiff_level_shapes  # local import: pathology is only needed for TIFF

        shapes = tiff_level_shapes(p)
        if suffix == ".svs" or len(shapes) > 1 or max(shapes[0][:2]) > _SLIDE_MIN_SIDE:
            return "slide"
        return "image"
    if is_dicom_file(p):
        return "dicom"
    if suffix in (".dcm", ".dicom", ""):
        raise DicomDecodeError("not a DICOM file (no 'DICM' marker at byte 128)", path)
    raise ImageReadError(f"unsupported file type {suffix!r} (DICOM, NIfTI, NRRD, MetaImage, PNG/JPEG or TIFF expected)",
                         path)
