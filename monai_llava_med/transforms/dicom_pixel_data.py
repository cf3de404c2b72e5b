# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The PixelData element of a DICOM header checked without decoding it: is every pixel the header declares there?

A series scan (:func:`~.dicom_series.scan_dicom_series`) runs :func:`check_pixel_data_size` on every slice, so a
slice that is never decoded (the lazy axial path decodes only the chosen ones) is still refused when it is cut
short. The check reads the element's declared length, which :func:`~.dicom_header.read_dicom_header` keeps without
reading the value; an encapsulated (compressed) PixelData has its fragment items walked (8 bytes read per item).
"""

from __future__ import annotations

import os
import struct
from os import PathLike
from typing import Any

from ..errors import DicomDecodeError
from .dicom_header import header_int

__all__ = ["expected_pixel_bytes", "check_pixel_data_size"]

_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
#: Transfer syntaxes whose PixelData is stored as plain samples (implicit/explicit little, explicit big, deflated).
_NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_DEFLATED = "1.2.840.10008.1.2.1.99"


def expected_pixel_bytes(ds: Any, path: str | PathLike) -> int | None:
    """Bytes a native (uncompressed) PixelData of ``ds`` must hold, without the padding byte; None when unknown.

    ``Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated / 8`` (rounded up for 1-bit data); a
    YBR_FULL_422 colour image stores two samples per pixel. None when a factor is absent or not positive (the
    decode-time header checks refuse those).

    Args:
        ds: a pydicom dataset.
        path: the file, for messages.

    Raises:
        DicomDecodeError: a malformed integer field (see :func:`~.dicom_header.header_int`).
    """
    rows, cols = header_int(ds, "Rows", path), header_int(ds, "Columns", path)
    frames = header_int(ds, "NumberOfFrames", path, default=1)
    spp = header_int(ds, "SamplesPerPixel", path, default=1)
    bits = header_int(ds, "BitsAllocated", path)
    if min(rows, cols, frames, spp, bits) <= 0:
        return None
    try:
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    except Exception:  # an unreadable value: compared with nothing, so the plain sample count is used
        photometric = ""
    samples = 2 if spp == 3 and photometric == "YBR_FULL_422" else spp
    return (rows * cols * frames * samples * bits + 7) // 8


def _transfer_syntax(ds: Any) -> str:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return str(uid) if uid is not None else "1.2.840.10008.1.2"


def _fragment_count(path: str | PathLike, start: int) -> int:
    """Fragment items after the Basic Offset Table of an encapsulated PixelData whose value starts at ``start``.

    Raises:
        DicomDecodeError: an item runs past the end of the file, the sequence delimiter is missing (truncated), or
            a tag other than an item or the delimiter is found (malformed).
    """
    size = os.path.getsize(path)
    items = 0
    with open(path, "rb") as f:
        f.seek(start)
        while True:  # each pass reads 8 bytes and only seeks forward, so the end of the file stops it
            head = f.read(8)
            if len(head) < 8:
                raise DicomDecodeError("file is truncated: its encapsulated PixelData ends before its sequence "
                                       "delimiter", path)
            group, element, length = struct.unpack("<HHL", head)
            tag = group << 16 | element
            if tag == _SEQUENCE_DELIMITER:
                return max(0, items - 1)  # the first item is the Basic Offset Table
            if tag != _ITEM or length == _UNDEFINED_LENGTH:
                raise DicomDecodeError("malformed encapsulated PixelData: an item that is no fragment", path)
            if f.tell() + length > size:
                raise DicomDecodeError("file is truncated: a PixelData fragment ends past the end of the file", path)
            f.seek(length, os.SEEK_CUR)
            items += 1


def check_pixel_data_size(ds: Any, path: str | PathLike) -> None:
    """Refuse a file whose PixelData cannot hold the pixels its header declares, without reading the pixels.

    Native transfer syntaxes: the element's length must be at least :func:`expected_pixel_bytes`. Encapsulated
    (compressed) ones: every fragment item lies inside the file, the sequence delimiter is there, and there is at
    least one fragment per frame. A value past the end of the file is refused when the header is read
    (:func:`~.dicom_header.read_dicom_header`). Other cases (a defined length under a compressed transfer syntax)
    are left to the decoder.

    Args:
        ds: a dataset from :func:`~.dicom_header.read_dicom_header` (``scan=True`` or a full read): PixelData is
            a deferred raw element, its value not read.
        path: the file, for messages.

    Raises:
        DicomDecodeError: no PixelData, too few bytes or fragments (a truncated file or slice), malformed
            fragment items; messages never quote a header value.
    """
    raw = vars(ds).get("_dict", {}).get(_PIXEL_DATA)  # the raw element: reading ds.PixelData would load the value
    if raw is None:
        raise DicomDecodeError("DICOM file has no PixelData (it may be a report or presentation state)", path)
    length = getattr(raw, "length", None)
    if length is None:  # an element pydicom has already converted
        value = getattr(raw, "value", None)
        length = len(value) if isinstance(value, (bytes, bytearray)) else None
    syntax = _transfer_syntax(ds)
    if length == _UNDEFINED_LENGTH:
        start = getattr(raw, "value_tell", None)
        if syntax == _DEFLATED or start is None:
            return  # offsets of a deflated data set are in the inflated stream, not in the file
        frames = header_int(ds, "NumberOfFrames", path, default=1)
        if _fragment_count(path, start) < max(1, frames):
            raise DicomDecodeError("file is truncated or incomplete: its encapsulated PixelData holds fewer "
                                   "fragments than frames", path)
        return
    if syntax not in _NATIVE or length is None:
        return
    expected = expected_pixel_bytes(ds, path)
    if expected is not None and length < expected:
        raise DicomDecodeError("file is truncated: its PixelData holds fewer bytes than Rows x Columns x "
                               "NumberOfFrames x SamplesPerPixel x BitsAllocated / 8", path)
