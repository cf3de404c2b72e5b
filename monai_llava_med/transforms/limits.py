# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Resource bounds of the loaders and the header checks that enforce them before anything is decoded.

A few bytes of header can claim an image of any size: a 141-byte PNG of 1 x 30000 pixels, a 60-byte NIfTI header
of 1023 x 1024 x 1024 float32 values, a 500 KB deflated DICOM of 16000 x 16000. Every loader therefore checks the
size its input *claims* against the limits below and against the bytes the file actually holds, and photos are
reduced while they are decoded, before any float copy or pad canvas exists. ``docs/limits.md`` states the memory
bound these limits give (measured by ``tests/test_transforms_limits.py`` and the fuzz harness in ``tests/fuzz``).

Messages name the file and the limit, never a value read from the header.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from os import PathLike
from typing import Any, BinaryIO

from ..errors import DicomDecodeError, ImageReadError

__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_IMAGE_PIXELS",
    "MAX_DECODE_SIDE",
    "MAX_INFLATED_BYTES",
    "check_image_size",
    "reduction_factor",
    "check_photo_header",
    "reduce_photo",
    "stream_holds",
    "check_data_size",
    "check_deflated_dicom",
]

#: Longest side over shortest side of a 2D image (long-leg radiographs and ECG strips stay well below it).
MAX_ASPECT_RATIO = 20.0
#: Most pixels of a 2D image decoded at full size (a DICOM frame, a PNG/TIFF before reduction): 2^24 = 4096^2.
MAX_IMAGE_PIXELS = 1 << 24
#: Photos are reduced by an integer factor while decoding so that their longer side is at most this (6 x 336).
MAX_DECODE_SIDE = 2048
#: Most bytes a deflated DICOM data set may inflate to (its pixels plus header) before pydicom reads it.
MAX_INFLATED_BYTES = 1 << 28
_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
_REDUCIBLE_MODES = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr")
_CHUNK = 1 << 20


def check_image_size(height: int, width: int, path: str | PathLike, max_pixels: int = MAX_IMAGE_PIXELS,
                     max_aspect: float = MAX_ASPECT_RATIO) -> None:
    """Refuse a zero-size, too-elongated or too-large 2D image from the size its header claims.

    Args:
        height: rows the header claims.
        width: columns the header claims.
        path: the file, for messages.
        max_pixels: most ``height * width`` pixels.
        max_aspect: most ``max(height, width) / min(height, width)``.

    Raises:
        ImageReadError: naming the file and the limit (not the claimed size).
    """
    if height <= 0 or width <= 0:
        raise ImageReadError("zero-size image (its header claims no rows or no columns)", path)
    if max(height, width) > max_aspect * min(height, width):
        raise ImageReadError(f"absurd aspect ratio: the image is more elongated than the {max_aspect:g}:1 limit", path)
    if height * width > max_pixels:
        raise ImageReadError(f"absurd image size: larger than the limit of {max_pixels} pixels; refusing to decode",
                             path)


def reduction_factor(height: int, width: int, max_side: int = MAX_DECODE_SIDE) -> int:
    """Smallest integer ``k`` such that ``ceil(max(height, width) / k) <= max_side``."""
    return max(1, math.ceil(max(height, width) / max_side))


def _pil() -> Any:
    from PIL import Image  # pillow is a core dependency; imported here so importing limits stays cheap

    return Image


def check_photo_header(path: str | PathLike) -> tuple[int, int]:
    """Open a PNG/JPEG/BMP/TIFF header with PIL (nothing decoded) and check the size it claims.

    JPEG is decoded at 1/2, 1/4 or 1/8 scale when it is larger than :data:`MAX_DECODE_SIDE` (PIL ``draft``), so
    its pixel limit applies to the reduced size; other formats are decoded at full size first.

    Args:
        path: the image file.

    Returns:
        ``(height, width)`` that the decoder will produce.

    Raises:
        ImageReadError: not an image PIL can identify, zero-size, elongated or too large.
    """
    image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with image.open(path) as im:
                width, height = (int(v) for v in im.size)
                if im.format == "JPEG" and max(width, height) > MAX_DECODE_SIDE and min(width, height) > 0:
                    k = reduction_factor(height, width)
                    im.draft(im.mode, (max(1, width // k), max(1, height // k)))
                    width, height = (int(v) for v in im.size)
    except image.DecompressionBombError as e:  # over twice PIL's MAX_IMAGE_PIXELS, even before any reduction
        raise ImageReadError("absurd image size: larger than the decoder's pixel limit; refusing to decode",
                             path) from e
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, struct.error, ValueError ...
        raise ImageReadError(f"cannot read the image ({type(e).__name__} while reading its header)", path) from e
    check_image_size(height, width, path)
    return height, width


def reduce_photo(im: Any, max_side: int = MAX_DECODE_SIDE) -> Any:
    """Decode an opened PIL image with its longer side reduced to at most ``max_side`` (``draft`` + ``reduce``).

    JPEG uses the decoder's own DCT scaling (``draft``), other formats PIL's box ``reduce`` right after decoding;
    images already within ``max_side`` are returned unchanged (same pixels as a plain decode).

    Args:
        im: an image from ``PIL.Image.open``, not yet loaded.
        max_side: the longest side wanted.
    """
    width, height = im.size
    if max(width, height) <= max_side:
        return im
    k = reduction_factor(height, width, max_side)
    if im.format == "JPEG":
        im.draft(im.mode, (max(1, width // k), max(1, height // k)))
        width, height = im.size
        k = reduction_factor(height, width, max_side)
    if k == 1:
        return im
    if im.mode.startswith("I;16"):
        im = im.convert("I")  # same values, a mode PIL can reduce
    elif im.mode not in _REDUCIBLE_MODES:
        im = im.convert("RGB")  # bilevel, palette (an index cannot be averaged) and the rest
    return im.reduce(k)


def _inflates_to(fh: BinaryIO, wbits: int, needed: int, members: bool = False) -> bool:
    """Whether the compressed stream read from ``fh`` inflates to at least ``needed`` bytes (1 MB chunks, nothing kept).

    Args:
        fh: the file, positioned at the start of the stream.
        wbits: ``zlib`` window bits: ``16 + MAX_WBITS`` for gzip, ``-MAX_WBITS`` for a raw deflate stream.
        needed: bytes wanted; counting stops as soon as they are reached.
        members: go on with the next member when a stream ends (multi-member gzip files).

    Returns:
        False also for a stream that ends early (truncated) or is corrupt.
    """
    inflate = zlib.decompressobj(wbits)
    total = 0
    try:
        while total < needed:
            data = inflate.unconsumed_tail or fh.read(_CHUNK)
            if not data:
                return False
            total += len(inflate.decompress(data, _CHUNK))
            if inflate.eof:
                if not (members and inflate.unused_data):
                    break
                rest = inflate.unused_data  # a multi-member gzip file: go on with the next member
                inflate = zlib.decompressobj(wbits)
                total += len(inflate.decompress(rest, _CHUNK))
    except zlib.error:
        return False
    return total >= needed


def stream_holds(path: str | PathLike, needed: int, gzipped: bool) -> bool:
    """Whether a file (or its gzip stream) holds at least ``needed`` bytes, read in 1 MB chunks, nothing kept.

    Args:
        path: the file.
        needed: bytes the header says must be there.
        gzipped: count the inflated bytes of the gzip stream instead of the file size.
    """
    if not gzipped:
        return os.path.getsize(path) >= needed
    with open(path, "rb") as fh:
        return _inflates_to(fh, 16 + zlib.MAX_WBITS, needed, members=True)


def check_data_size(n_values: int, itemsize: int, offset: int, path: str | PathLike, gzipped: bool,
                    what: str = "NIfTI") -> None:
    """Refuse a file whose header claims more data than the file (or its gzip stream) holds, before reading it.

    Args:
        n_values: values the header claims (product of its dimensions).
        itemsize: bytes per value of the header's data type.
        offset: where the data starts.
        path: the file.
        gzipped: the file is gzip-compressed.
        what: the format, for messages.

    Raises:
        ImageReadError: the file is shorter than its header says (truncated, or a forged header).
    """
    if n_values < 0 or itemsize <= 0 or offset < 0:
        raise ImageReadError(f"{what} header has a negative size, data type size or data offset", path)
    if not stream_holds(path, offset + n_values * itemsize, gzipped):
        raise ImageReadError(
            f"cannot read: the {what} file holds less data than its header claims (truncated or corrupt)", path)


def check_deflated_dicom(path: str | PathLike, max_bytes: int = MAX_INFLATED_BYTES) -> None:
    """Refuse a deflated DICOM file whose data set inflates to more than ``max_bytes`` (pydicom inflates all of it).

    Other transfer syntaxes and files whose meta header cannot be read are left to the DICOM reader.

    Args:
        path: the DICOM file.
        max_bytes: most inflated bytes.

    Raises:
        DicomDecodeError: the deflated data set inflates beyond ``max_bytes``.
    """
    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble

        with open(path, "rb") as fh:
            read_preamble(fh, force=False)
            meta = _read_file_meta_info(fh)
            if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED_TS:
                return
            # _read_file_meta_info leaves fh at the end of the meta group: the raw deflate stream starts here
            too_large = _inflates_to(fh, -zlib.MAX_WBITS, max_bytes + 1)
    except Exception:  # unreadable meta or stream: the DICOM reader reports it with its typed error
        return
    if too_large:
        raise DicomDecodeError(f"deflated DICOM data inflates to more than the limit of {max_bytes} bytes", path)
