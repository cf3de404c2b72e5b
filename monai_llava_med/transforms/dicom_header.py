# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""DICOM headers: reading them with pydicom, validating them before decoding, and the few values we keep.

Every parse failure becomes a :class:`~monai_llava_med.errors.DicomDecodeError` naming the file; messages never
quote a header value.
"""

from __future__ import annotations

import math
from os import PathLike
from typing import Any

from monai.utils import optional_import

from ..errors import DicomDecodeError, ImageReadError, VolumeError
from .limits import check_deflated_dicom, check_image_size
from .readers import DEFAULT_MAX_VOXELS, short_text

pydicom, _ = optional_import("pydicom")

__all__ = ["read_dicom_header", "check_dicom_pixels", "header_value", "tag_floats", "check_geometry", "dicom_meta",
           "SCAN_TAGS"]

_BITS_ALLOWED = (1, 8, 16, 32, 64)
#: Header fields a series scan reads (``specific_tags`` keeps the scan of hundreds of slices fast).
SCAN_TAGS = (
    "SeriesInstanceUID", "Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "InstanceNumber", "SliceThickness", "Modality", "PhotometricInterpretation", "WindowCenter", "WindowWidth",
)
#: Geometry elements and the number of values each must hold.
_GEOMETRY_TAGS = {"ImageOrientationPatient": 6, "ImagePositionPatient": 3, "PixelSpacing": 2}


def read_dicom_header(path: str | PathLike, stop_before_pixels: bool = False) -> Any:
    """Read a DICOM header with pydicom, turning every parse failure into :class:`DicomDecodeError`.

    Args:
        path: the DICOM file.
        stop_before_pixels: read only the fields a series scan needs and stop at PixelData; otherwise read the
            whole header with large values deferred.

    Returns:
        the ``pydicom.Dataset`` (pixel data not decoded).

    Raises:
        DicomDecodeError: unreadable, or a deflated data set inflating beyond :data:`~.limits.MAX_INFLATED_BYTES`.
    """
    check_deflated_dicom(path)  # pydicom inflates a deflated data set whole: bound it first
    try:
        if stop_before_pixels:
            return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(SCAN_TAGS))
        return pydicom.dcmread(path, defer_size=4096)
    except Exception as e:  # InvalidDicomError, EOFError, struct.error, OSError ...
        raise DicomDecodeError(f"not a readable DICOM file ({type(e).__name__}: {short_text(e)})", path) from e


def check_dicom_pixels(ds: Any, path: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    """Validate a DICOM header before decoding: PixelData present, sane size, known sample layout.

    Args:
        ds: a dataset from :func:`read_dicom_header` (read with pixels deferred, not stopped before them).
        path: the file, for messages.
        max_voxels: refuse images with more samples than this.

    Raises:
        DicomDecodeError: no PixelData, bad BitsAllocated.
        ImageReadError: zero or absurd dimensions (also a frame beyond the aspect-ratio or pixel limits of
            :mod:`.limits`).
        VolumeError: malformed ImageOrientationPatient, ImagePositionPatient or PixelSpacing.
    """
    if "PixelData" not in ds:
        kind = "FloatPixelData" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else None
        detail = f" (has {kind}, which is not supported)" if kind else " (it may be a report or presentation state)"
        raise DicomDecodeError("DICOM file has no PixelData" + detail, path)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise ImageReadError(f"zero-size image: Rows={rows}, Columns={cols}, NumberOfFrames={frames}", path)
    if spp not in (1, 3, 4):
        raise ImageReadError(f"unsupported SamplesPerPixel={spp}", path)
    if rows * cols * frames * spp > max_voxels:
        raise ImageReadError(
            f"absurd image size {rows}x{cols}x{frames}x{spp} samples (limit {max_voxels}); refusing to decode", path
        )
    check_image_size(rows, cols, path)  # each frame: aspect ratio and pixels (limits.MAX_IMAGE_PIXELS)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in _BITS_ALLOWED:
        raise DicomDecodeError(f"unsupported BitsAllocated={bits}", path)
    check_geometry(ds, path)


def header_value(ds: Any, keyword: str) -> float | None:
    """First numeric value of a (possibly multi-valued) header element, or None."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def tag_floats(ds: Any, keyword: str, n: int, path: str | PathLike, where: str = "") -> tuple[float, ...] | None:
    """A geometry element as exactly ``n`` finite floats, or None when it is absent or empty.

    Args:
        ds: a pydicom dataset.
        keyword: the element, e.g. ``"ImageOrientationPatient"`` (6 values) or ``"PixelSpacing"`` (2).
        n: number of values the element must hold.
        path: the file or folder, for messages.
        where: prefix naming the slice inside a folder, for messages.

    Raises:
        VolumeError: the element holds other than ``n`` values, or non-numeric or non-finite ones.
    """
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        multi = isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
        values = tuple(float(v) for v in (value if multi else [value]))
    except (TypeError, ValueError, OverflowError) as e:
        raise VolumeError(f"{where}malformed {keyword}: values are not numbers", path) from e
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise VolumeError(f"{where}malformed {keyword}: expected {n} finite numbers, got {len(values)}", path)
    return values


def check_geometry(ds: Any, path: str | PathLike, where: str = "") -> dict[str, tuple[float, ...] | None]:
    """ImageOrientationPatient, ImagePositionPatient and PixelSpacing parsed by :func:`tag_floats` (None: absent)."""
    return {k: tag_floats(ds, k, n, path, where) for k, n in _GEOMETRY_TAGS.items()}


def dicom_meta(ds: Any, source: str) -> dict[str, Any]:
    """The non-identifying fields of a DICOM header that the transforms use."""
    return {
        "modality": str(ds.get("Modality", "OT") or "OT").upper(),
        "photometric": str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper(),
        "window_center": header_value(ds, "WindowCenter"),
        "window_width": header_value(ds, "WindowWidth"),
        "source": source,
    }
