# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""PNG/JPEG/BMP and small single-page TIFF photos through MONAI's PILReader."""

from __future__ import annotations

from os import PathLike

from monai.data import MetaTensor

from ..errors import ImageReadError
from .limits import check_photo_header
from .readers import DEFAULT_MAX_VOXELS, cached_loader, clean_meta, file_name, run_loader

__all__ = ["load_photo"]

#: PIL modes (after the photo reader's conversion) that hold 8-bit samples.
_PIL_8BIT_MODES = ("L", "RGB")


def load_photo(path: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> MetaTensor:
    """Load a photo as ``(C, H, W)`` (``"image"``, modality ``"OT"``); ``meta["bit_depth"]`` is 8 for 8-bit files.

    The size the header claims is checked first (:func:`~.limits.check_photo_header`: aspect ratio, pixels), and
    a photo whose longer side exceeds :data:`~.limits.MAX_DECODE_SIDE` is reduced by an integer factor while it
    is decoded (JPEG DCT scaling, else a box reduction), so no full-size float copy of a huge photo is made.

    Args:
        path: the image file.
        max_voxels: size limit.

    Raises:
        ImageReadError: unreadable, zero-size, too elongated or too large.
    """
    check_photo_header(path)
    img = run_loader(cached_loader("photo"), path)
    bit_depth = 8 if img.meta.get("mode") in _PIL_8BIT_MODES else None  # mode after the reader's conversion
    if img.ndim != 3 or min(img.shape[1:]) <= 0:
        raise ImageReadError(f"unexpected decoded image of {img.ndim} dimensions", path)
    if img.numel() > max_voxels:
        raise ImageReadError(f"image is larger than the limit of {max_voxels} samples", path)
    channels = img.shape[0]
    meta = {"modality": "OT", "photometric": "RGB" if channels == 3 else "MONOCHROME2"}
    return clean_meta(img, {**meta, "window_center": None, "window_width": None, "source": file_name(path),
                            "layout": "image", "bit_depth": bit_depth})
