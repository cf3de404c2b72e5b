# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Leading-byte signatures of the image files the apps accept, shared by MONAI Label's upload checks and the
server's ``data:`` URL sniffing (so a renamed text or executable file is refused before any reader sees it)."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable

__all__ = ["FILE_SIGNATURES", "SNIFF_ORDER", "matches_signature", "sniff_suffix"]

_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _nifti_header_size(head: bytes) -> bool:
    """NIfTI-1/2 files start with ``sizeof_hdr`` = 348 or 540, in either byte order."""
    return len(head) >= 4 and any(struct.unpack(order + "i", head[:4])[0] in (348, 540) for order in "<>")


def _metaimage_header(head: bytes) -> bool:
    """A MetaImage (``.mha``) file starts with ``Key = value`` lines of its header (``ObjectType = Image``...)."""
    return re.match(rb"(ObjectType|ObjectSubType|NDims|Comment|DimSize|TransformType)\s*=", head) is not None


#: Suffix -> test of a file's first 132 bytes (DICOM: ``DICM`` at offset 128).
FILE_SIGNATURES: dict[str, Callable[[bytes], bool]] = {
    ".png": lambda h: h.startswith(b"\x89PNG\r\n\x1a\n"),
    ".jpg": lambda h: h.startswith(b"\xff\xd8\xff"),
    ".jpeg": lambda h: h.startswith(b"\xff\xd8\xff"),
    ".tif": lambda h: h[:4] in _TIFF,
    ".tiff": lambda h: h[:4] in _TIFF,
    ".svs": lambda h: h[:4] in _TIFF,
    ".dcm": lambda h: h[128:132] == b"DICM",
    ".nii": _nifti_header_size,
    ".nii.gz": lambda h: h.startswith(b"\x1f\x8b"),
    ".nrrd": lambda h: h.startswith(b"NRRD000"),
    ".mha": _metaimage_header,
}

#: The order :func:`sniff_suffix` tries by default: the strict signatures first, the NIfTI header size last.
SNIFF_ORDER = (".png", ".jpg", ".dcm", ".nii.gz", ".nii")


def matches_signature(head: bytes, suffix: str) -> bool:
    """Whether ``head`` (a file's leading bytes) starts the way ``suffix`` (a key of :data:`FILE_SIGNATURES`) says."""
    return FILE_SIGNATURES[suffix](head)


def sniff_suffix(data: bytes, order: Iterable[str] = SNIFF_ORDER) -> str | None:
    """The first suffix of ``order`` whose signature ``data`` carries, or ``None``.

    Args:
        data: the file's content (or at least its first 132 bytes).
        order: suffixes (keys of :data:`FILE_SIGNATURES`) to try, in order.
    """
    return next((suffix for suffix in order if FILE_SIGNATURES[suffix](data)), None)
