# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""DICOM headers: reading them with pydicom, validating them before decoding, and the few values we keep.

Every parse failure becomes a :class:`~monai_llava_med.errors.DicomDecodeError` naming the file; messages name the
element (its keyword) and the problem, never its value, and pydicom's warnings and log records (which quote values)
are kept from the user (:class:`~.readers.QuietReaders`). Integer fields are read by one function,
:func:`header_int`; modality and photometric interpretation are reported only from closed vocabularies.
"""

from __future__ import annotations

import math
import os
from os import PathLike
from typing import Any

from monai.utils import optional_import

from ..constants import MODALITY_CODES
from ..errors import DicomDecodeError, ImageReadError, VolumeError
from .limits import check_deflated_dicom, check_image_size
from .readers import DEFAULT_MAX_VOXELS, QuietReaders, redact_text

pydicom, _ = optional_import("pydicom")

__all__ = ["read_dicom_header", "check_dicom_pixels", "check_rescale", "header_int", "header_value", "tag_floats",
           "check_geometry", "dicom_meta", "functional_item", "header_strings", "PHOTOMETRIC_CODES", "SCAN_TAGS"]

_BITS_ALLOWED = (1, 8, 16, 32, 64)
#: PhotometricInterpretation (0028,0004) defined terms (PS3.3 C.7.6.3.1.2); anything else is ``"unknown"``.
PHOTOMETRIC_CODES = frozenset(
    "MONOCHROME1 MONOCHROME2 RGB YBR_FULL YBR_FULL_422 YBR_PARTIAL_420 YBR_PARTIAL_422 YBR_ICT YBR_RCT HSV ARGB "
    "CMYK XYB".split() + ["PALETTE COLOR"]
)
#: Header fields a series scan reads (``specific_tags`` keeps the scan of hundreds of slices fast); PixelData is
#: kept as a deferred element (its length and offset, never its value) for :mod:`.dicom_pixel_data`.
SCAN_TAGS = (
    "SeriesInstanceUID", "Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "InstanceNumber", "SliceThickness", "Modality", "PhotometricInterpretation", "WindowCenter", "WindowWidth",
    "RescaleSlope", "RescaleIntercept", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "PixelData",
)
#: Geometry elements and the number of values each must hold.
_GEOMETRY_TAGS = {"ImageOrientationPatient": 6, "ImagePositionPatient": 3, "PixelSpacing": 2}
#: Physically possible ranges (mm, direction cosines) of geometry values: (lowest, highest, lowest exclusive).
_GEOMETRY_RANGES = {
    "ImageOrientationPatient": (-1.01, 1.01, False),
    "ImagePositionPatient": (-1e6, 1e6, False),
    "PixelSpacing": (0.0, 1e4, True),
}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
_PIXEL_DATA = 0x7FE00010


def read_dicom_header(path: str | PathLike, scan: bool = False) -> Any:
    """Read a DICOM header with pydicom, turning every parse failure into :class:`DicomDecodeError`.

    No pixel value is read either way: large values (PixelData) are deferred, pydicom seeks past them.

    Args:
        path: the DICOM file.
        scan: read only :data:`SCAN_TAGS`, the fields a series scan needs; otherwise the whole header.

    Returns:
        the ``pydicom.Dataset`` (pixel data not read; its element keeps its declared length and offset).

    Raises:
        DicomDecodeError: not DICOM, truncated (an element, PixelData included, that ends past the end of the
            file), or a deflated data set inflating beyond :data:`~.limits.MAX_INFLATED_BYTES`.
    """
    check_deflated_dicom(path)  # pydicom inflates a deflated data set whole: bound it first
    with QuietReaders() as quiet:
        try:
            if scan:
                ds = pydicom.dcmread(path, defer_size=1024, specific_tags=list(SCAN_TAGS))
            else:
                ds = pydicom.dcmread(path, defer_size=4096)
        except Exception as e:  # InvalidDicomError, EOFError, struct.error, OSError ...
            raise DicomDecodeError(f"not a readable DICOM file ({type(e).__name__}: {redact_text(e)})", path) from e
    if "PixelData" not in ds and any("End of file reached" in w for w in quiet.warnings):
        raise DicomDecodeError("file is truncated: it ends inside an element (the header or an encapsulated "
                               "PixelData)", path)
    _check_deferred_lengths(ds, path)
    return ds


def _check_deferred_lengths(ds: Any, path: str | PathLike) -> None:
    """Refuse a deferred element whose declared length runs past the end of the file.

    pydicom reads such a value with one ``read(length)`` call, which reserves the declared size (up to 4 GB) before
    finding the file shorter; the value would be cut anyway.
    """
    if str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) == _DEFLATED:
        return  # read from the inflated stream, whose size is bounded by check_deflated_dicom
    size = os.path.getsize(path)
    for raw in list(vars(ds).get("_dict", {}).values()):  # the raw elements: reading a value would convert it
        length, tell = getattr(raw, "length", 0), getattr(raw, "value_tell", None)
        if getattr(raw, "value", b"") is None and tell is not None and length != _UNDEFINED_LENGTH \
                and tell + length > size:
            if getattr(raw, "tag", None) == _PIXEL_DATA:
                raise DicomDecodeError("file is truncated: its pixel data (PixelData) ends before its declared "
                                       "length", path)
            raise DicomDecodeError("file is truncated or corrupt: an element's declared length runs past the end "
                                   "of the file", path)


def _is_multi(value: Any) -> bool:
    """Whether an element value holds several values (pydicom's ``MultiValue``, or a list/tuple)."""
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _get(ds: Any, keyword: str, path: str | PathLike, where: str = "") -> Any:
    """``ds.get(keyword)``; a value pydicom cannot convert (odd byte length, or an unknown VR) is a typed error."""
    try:
        with QuietReaders():
            return ds.get(keyword)
    except Exception as e:  # pydicom's odd-byte-length, unknown-VR and value conversion errors alike
        raise DicomDecodeError(f"{where}unreadable {keyword} element ({type(e).__name__})", path) from e


def header_int(ds: Any, keyword: str, path: str | PathLike, default: Any = 0, where: str = "") -> Any:
    """A single-valued integer header field (Rows, NumberOfFrames...), read safely: the one place that does.

    Args:
        ds: a pydicom dataset.
        keyword: the element.
        path: the file or folder, for messages.
        default: returned when the element is absent or empty (``None`` to tell absence apart).
        where: prefix naming the slice inside a folder, for messages.

    Returns:
        the integer, or ``default``.

    Raises:
        DicomDecodeError: several values, not an integer (``"NaN"``, ``"abc"``, ``1.5``), or an unreadable element.
    """
    value = _get(ds, keyword, path, where)
    if value is None or value == "":
        return default
    if _is_multi(value):
        raise DicomDecodeError(f"{where}malformed {keyword}: several values where one integer is expected", path)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not (math.isfinite(number) and number.is_integer()):
        raise DicomDecodeError(f"{where}malformed {keyword}: not an integer", path)
    return int(number)


def header_strings(ds: Any) -> list[str]:
    """The text values of the top-level elements and file meta of ``ds`` (to take out of a reader's message)."""
    out: list[str] = []
    with QuietReaders():
        for group in (getattr(ds, "file_meta", None), ds):
            for tag in list(group.keys()) if group is not None else []:
                try:
                    value = group[tag].value
                except Exception:
                    continue
                out.extend(str(v) for v in (value if _is_multi(value) else [value])
                           if isinstance(v, (str, int, float)) or type(v).__name__ == "PersonName")
    return out


def check_rescale(ds: Any, path: str | PathLike, where: str = "") -> None:
    """Refuse a RescaleSlope that is zero (a blank image) or not finite, and a non-finite RescaleIntercept.

    Args:
        ds: a pydicom dataset, or a functional group item holding the two elements.
        path: the file or folder, for messages.
        where: prefix naming the slice or frame, for messages.

    Raises:
        DicomDecodeError: naming the element and the problem (never its value).
    """
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        raw = _get(ds, keyword, path, where)
        if raw is None or raw == "":
            continue
        value = header_value(ds, keyword)
        if value is None:
            raise DicomDecodeError(f"{where}invalid {keyword}: not a finite number", path)
        if keyword == "RescaleSlope" and value == 0:
            raise DicomDecodeError(f"{where}invalid RescaleSlope: zero (every pixel would get the same value)", path)


def check_dicom_pixels(ds: Any, path: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    """Validate a DICOM header before decoding: PixelData present, sane size, known sample layout.

    Args:
        ds: a dataset from :func:`read_dicom_header` (read with pixels deferred, not stopped before them).
        path: the file, for messages.
        max_voxels: refuse images with more samples than this.

    Raises:
        DicomDecodeError: no PixelData, a segmentation object, malformed integer fields, bad BitsAllocated, zero or
            non-finite RescaleSlope.
        ImageReadError: zero or absurd dimensions (also a frame beyond the aspect-ratio or pixel limits of
            :mod:`.limits`).
        VolumeError: malformed ImageOrientationPatient, ImagePositionPatient or PixelSpacing.
    """
    if "PixelData" not in ds:
        kind = "FloatPixelData" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else None
        detail = f" (has {kind}, which is not supported)" if kind else " (it may be a report or presentation state)"
        raise DicomDecodeError("DICOM file has no PixelData" + detail, path)
    if "SegmentSequence" in ds:
        raise DicomDecodeError("a DICOM segmentation (SEG) holds label masks, not an image; load the series it "
                               "segments instead", path)
    rows, cols = header_int(ds, "Rows", path), header_int(ds, "Columns", path)
    frames = header_int(ds, "NumberOfFrames", path, default=1)
    spp = header_int(ds, "SamplesPerPixel", path, default=1)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise ImageReadError("zero-size image: Rows, Columns or NumberOfFrames is not positive", path)
    if spp not in (1, 3, 4):
        raise ImageReadError("unsupported SamplesPerPixel (1, 3 or 4 expected)", path)
    if rows * cols * frames * spp > max_voxels:
        raise ImageReadError(
            f"absurd image size: Rows x Columns x NumberOfFrames x SamplesPerPixel is over the limit of {max_voxels} "
            "samples; refusing to decode", path
        )
    check_image_size(rows, cols, path)  # each frame: aspect ratio and pixels (limits.MAX_IMAGE_PIXELS)
    bits = header_int(ds, "BitsAllocated", path)
    if bits not in _BITS_ALLOWED:
        raise DicomDecodeError(f"unsupported BitsAllocated (one of {', '.join(map(str, _BITS_ALLOWED))} expected)",
                               path)
    check_rescale(ds, path)
    check_geometry(ds, path)


def header_value(ds: Any, keyword: str) -> float | None:
    """First finite numeric value of a (possibly multi-valued) header element, or None (also when unreadable)."""
    try:
        with QuietReaders():
            value = ds.get(keyword)
    except Exception:
        return None
    if value is None or value == "":
        return None
    if _is_multi(value):
        value = value[0] if len(value) else None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def tag_floats(ds: Any, keyword: str, n: int, path: str | PathLike, where: str = "") -> tuple[float, ...] | None:
    """A geometry element as exactly ``n`` finite floats in their physical range, or None when it is absent or empty.

    A PixelSpacing of ``0\\0`` means unknown and is read as absent.

    Args:
        ds: a pydicom dataset.
        keyword: the element, e.g. ``"ImageOrientationPatient"`` (6 values) or ``"PixelSpacing"`` (2).
        n: number of values the element must hold.
        path: the file or folder, for messages.
        where: prefix naming the slice inside a folder, for messages.

    Raises:
        VolumeError: the element holds other than ``n`` values, or non-numeric, non-finite or physically impossible
            ones (a non-positive or over 10 m pixel spacing, a position over 1 km, a direction cosine over 1).
    """
    value = _get(ds, keyword, path, where)
    if value is None or value == "":
        return None
    try:
        values = tuple(float(v) for v in (value if _is_multi(value) else [value]))
    except (TypeError, ValueError, OverflowError) as e:
        raise VolumeError(f"{where}malformed {keyword}: values are not numbers", path) from e
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise VolumeError(f"{where}malformed {keyword}: expected {n} finite numbers", path)
    if keyword == "PixelSpacing" and values == (0.0, 0.0):
        return None  # "0\\0": written by some modalities for an unknown spacing (e.g. pydicom's RG1_J2KR.dcm)
    if keyword in _GEOMETRY_RANGES:
        low, high, open_low = _GEOMETRY_RANGES[keyword]
        if not all((low < v if open_low else low <= v) and v <= high for v in values):
            raise VolumeError(f"{where}malformed {keyword}: outside the physically possible range "
                              f"({'(' if open_low else '['}{low:g}, {high:g}])", path)
    return values


def check_geometry(ds: Any, path: str | PathLike, where: str = "") -> dict[str, tuple[float, ...] | None]:
    """ImageOrientationPatient, ImagePositionPatient and PixelSpacing parsed by :func:`tag_floats` (None: absent)."""
    return {k: tag_floats(ds, k, n, path, where) for k, n in _GEOMETRY_TAGS.items()}


def functional_item(ds: Any, sequence: str, frame: int = 0) -> Any:
    """The first item of ``sequence`` in an enhanced file's functional groups for ``frame``, or None.

    The frame's PerFrameFunctionalGroupsSequence item wins over the SharedFunctionalGroupsSequence one (DICOM
    PS3.3 C.7.6.16); files without functional groups give None.

    Args:
        ds: a pydicom dataset.
        sequence: a functional group macro, e.g. ``"PlanePositionSequence"`` or ``"FrameVOILUTSequence"``.
        frame: 0-based frame number.
    """
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups) or []
        if index < len(items):
            seq = items[index].get(sequence)
            if seq:
                return seq[0]
    return None


def dicom_meta(ds: Any, source: str) -> dict[str, Any]:
    """The non-identifying fields of a DICOM header that the transforms use.

    ``modality`` is one of :data:`~monai_llava_med.constants.MODALITY_CODES` (``"OT"`` when absent, ``"unknown"``
    when the header holds anything else); ``photometric`` one of :data:`PHOTOMETRIC_CODES` (``"MONOCHROME2"`` when
    absent, else ``"unknown"``). The window is the top-level WindowCenter/WindowWidth or, in an enhanced file, the
    FrameVOILUTSequence of the first frame (per-frame or shared functional group); numbers only.
    """
    voi = functional_item(ds, "FrameVOILUTSequence")
    window = {}
    for key, keyword in (("window_center", "WindowCenter"), ("window_width", "WindowWidth")):
        value = header_value(ds, keyword)
        window[key] = header_value(voi, keyword) if value is None and voi is not None else value
    return {
        "modality": _closed(ds, "Modality", MODALITY_CODES, "OT"),
        "photometric": _closed(ds, "PhotometricInterpretation", PHOTOMETRIC_CODES, "MONOCHROME2"),
        **window,
        "source": source,
    }


def _closed(ds: Any, keyword: str, vocabulary: frozenset[str], default: str) -> str:
    """A code string element as a member of ``vocabulary``; ``default`` when absent, ``"unknown"`` otherwise."""
    try:
        with QuietReaders():
            value = ds.get(keyword)
    except Exception:
        return "unknown"
    if value is None or value == "":
        return default
    text = str(value).strip().upper()
    return text if isinstance(value, str) and text in vocabulary else "unknown"
