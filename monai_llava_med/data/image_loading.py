# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Plain image loading for photographs/figures (JPEG, PNG, TIFF...), LLaVA-Med's "pad" preprocessing.

The file is read with PIL; the pixels go through the same LLaVA "pad" path as every other image
(:class:`monai_llava_med.transforms.ImageToClipPixels`: mean-coloured square canvas, bicubic resize, CLIP
normalisation). Medical formats (DICOM, NIfTI, slides) go through
``monai_llava_med.transforms.MedicalImageToPixels``, passed to the data sets as ``image_loader``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from monai_llava_med.errors import ImageReadError
from monai_llava_med.constants import CLIP_MEAN, CLIP_STD
from monai_llava_med.transforms.limits import check_photo_header, reduce_photo
from monai_llava_med.transforms.pixels import ImageToClipPixels

__all__ = ["PILImageToPixels", "read_rgb"]


def read_rgb(img: Image.Image) -> np.ndarray:
    """``(3, H, W)`` uint8 of any PIL mode; 16-bit and float greyscale are min-max scaled to 8 bits first."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()


class PILImageToPixels:
    """Load an image file with PIL into LLaVA pixel values.

    Same contract as ``MedicalImageToPixels``: ``path -> {"pixel_values": (1, 3, S, S), "views": 1,
    "modality": None, "source": path}``.

    Args:
        image_size: output side S (336 for CLIP-L/336).
        mean: normalisation mean and padding colour.
        std: normalisation std.
    """

    def __init__(
        self, image_size: int = 336, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
    ) -> None:
        self.pixels = ImageToClipPixels(int(image_size), tuple(mean), tuple(std))

    def __call__(self, path: str | os.PathLike) -> dict[str, Any]:
        """Read ``path``; raises :class:`ImageReadError` naming the file for unreadable or absurd images.

        The size the header claims is checked first and large photos are reduced while decoding, as in
        :func:`monai_llava_med.transforms.photo.load_photo` (``docs/limits.md``).
        """
        check_photo_header(path)
        try:
            with Image.open(path) as img:
                pixels = self.pixels(read_rgb(reduce_photo(img)))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise ImageReadError(f"cannot read the image: {type(e).__name__} while decoding it", path) from e
        return {"pixel_values": pixels.unsqueeze(0), "views": 1, "modality": None, "source": str(path)}
