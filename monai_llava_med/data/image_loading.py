# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Plain image loading for photographs/figures (JPEG, PNG, TIFF...), LLaVA-Med's "pad" preprocessing.

The image is pasted onto a square canvas filled with the CLIP mean colour (LLaVA's ``expand2square``),
resized to ``image_size`` with PIL bicubic resampling (what ``CLIPImageProcessor`` does), and normalised
with the CLIP mean/std in torch. Medical formats (DICOM, NIfTI, slides) go through
``monai_llava_med.transforms.MedicalImageToPixels``, passed to the data sets as ``image_loader``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from monai_llava_med.errors import ImageReadError

__all__ = ["CLIP_MEAN", "CLIP_STD", "pad_to_square", "pil_to_pixels", "PILImageToPixels"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_MAX_PIXELS = 30000 * 30000


def pad_to_square(img: Image.Image, fill: Sequence[float] = CLIP_MEAN) -> Image.Image:
    """Paste an RGB image centred on a square canvas of colour ``fill`` (0-1 floats), like LLaVA.

    Args:
        img: an RGB PIL image.
        fill: canvas colour per channel in [0, 1].
    """
    w, h = img.size
    if w == h:
        return img
    colour = tuple(int(round(c * 255)) for c in fill)
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any PIL mode; 16-bit and float greyscale are min-max scaled to 8 bits first."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    return img.convert("RGB")


def pil_to_pixels(
    img: Image.Image,
    image_size: int = 336,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Pad to square with the mean colour, resize (bicubic) and normalise; returns ``(3, S, S)`` float32.

    Args:
        img: a PIL image of any mode.
        image_size: output side S.
        mean: per-channel normalisation mean (also the padding colour).
        std: per-channel normalisation std.
    """
    img = pad_to_square(_to_rgb(img), mean).resize((image_size, image_size), Image.Resampling.BICUBIC)
    t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s


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
        self.image_size = int(image_size)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, path: str | os.PathLike) -> dict[str, Any]:
        """Read ``path``; raises :class:`ImageReadError` naming the file for unreadable or absurd images."""
        try:
            with Image.open(path) as img:
                if img.width * img.height > _MAX_PIXELS or img.width < 1 or img.height < 1:
                    raise ImageReadError(f"unusable image size {img.width}x{img.height}", path)
                img.load()
                pixels = pil_to_pixels(img, self.image_size, self.mean, self.std)
        except ImageReadError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise ImageReadError(f"cannot read the image: {type(e).__name__}: {e}", path) from e
        return {"pixel_values": pixels.unsqueeze(0), "views": 1, "modality": None, "source": str(path)}
