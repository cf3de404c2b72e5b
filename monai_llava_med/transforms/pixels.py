# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Image -> vision-tower pixels in LLaVA "pad" mode, in torch, for single images and batches.

The reference pastes the image at the centre of a square canvas filled with the CLIP mean colour
(``int(mean * 255)`` per channel, i.e. (122, 116, 104)), resizes it with PIL bicubic to the encoder size and
normalises with the CLIP mean/std. :class:`ImageToClipPixels` does the same with
``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` on 8-bit data, whose kernel is PIL's.

Intended differences from ``CLIPImageProcessorPil`` + pad-to-square (measured in ``tests/test_transforms_pixels.py``):
float inputs are rounded to 8 bits first (the model was trained on 8-bit PNGs); downscaled or same-size images
match within 1/255 per pixel before normalisation; when a small image is *upscaled*, torch and PIL round their
intermediate 8-bit pass differently, so a few pixels next to sharp edges (under 1 %) differ by 2/255.

Memory: the square canvas holds ``max(H, W)^2 x 3`` bytes, so an image whose longer side exceeds
:data:`PAD_FIRST_MAX_SIDE` is first reduced by the smallest integer factor that brings it within that side (mean of
each block), then padded and resized as usual: the canvas stays under ``PAD_FIRST_MAX_SIDE^2 x 3`` bytes and the image
keeps its place on it to within a fraction of an output pixel. Images up to that side are processed exactly as
before (pad, then resize).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from ..constants import CLIP_MEAN, CLIP_STD
from .readers import all_finite

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "PAD_FIRST_MAX_SIDE",
    "pad_to_square",
    "ImageToClipPixels",
    "ImageToClipPixelsd",
    "ImageToClipPixelsD",
    "ImageToClipPixelsDict",
]


#: Longest side padded before resizing (the reference order); longer images are resized first, then padded.
PAD_FIRST_MAX_SIDE = 4096


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> ``size`` with bicubic + antialias (torch's port of PIL's resampler)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size, mode="bicubic", antialias=True)


def _box_reduce(x: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> ``(B, 3, ceil(H / k), ceil(W / k))``: mean of each ``k x k`` block, plane by plane."""
    out = torch.empty((*x.shape[:2], -(-x.shape[-2] // k), -(-x.shape[-1] // k)), dtype=torch.uint8)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = F.avg_pool2d(x[b, c][None].float(), k, ceil_mode=True)
            out[b, c] = torch.floor(plane[0] + 0.5).to(torch.uint8)
    return out


def _to_uint8(t: torch.Tensor) -> torch.Tensor:
    """Values in [0, 255] -> uint8, floats rounded half up (``floor(x + 0.5)``); same shape.

    Raises:
        ValueError: a float tensor with NaN/inf values.
    """
    if t.dtype == torch.uint8:
        return t
    if t.is_floating_point():
        if not all_finite(t):
            raise ValueError("image holds NaN/inf values")
        # x + 0.5 >= 0.5 after the clamp, so the cast's truncation is floor(x + 0.5)
        return t.clamp(0, 255).add_(0.5).to(torch.uint8)
    return t.clamp(0, 255).to(torch.uint8)


def _grey_uint8(img: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, bool]:
    """``(..., C, H, W)`` in [0, 255] -> uint8 with C in {1, 3} (alpha dropped) and whether C is 1 (grey).

    Conversion happens before a grey image is spread to three channels, so it runs on one plane.

    Raises:
        ValueError: fewer than 3 dimensions, a channel count other than 1, 3 or 4, a zero-size side, NaN/inf.
    """
    t = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img)
    if isinstance(t, torch.Tensor) and type(t) is not torch.Tensor:
        t = t.as_subclass(torch.Tensor)  # drop MetaTensor: its metadata has no place in the pixels
    if t.ndim < 3:
        raise ValueError(f"expected a (C, H, W) image or (B, C, H, W) batch, got shape {tuple(t.shape)}")
    channels = t.shape[-3]
    if channels == 4:
        t = t[..., :3, :, :]
    elif channels not in (1, 3):
        raise ValueError(f"expected 1, 3 or 4 channels, got {channels} (shape {tuple(t.shape)})")
    if min(t.shape[-2:]) <= 0:
        raise ValueError(f"image has a zero-size side: {tuple(t.shape)}")
    return _to_uint8(t), channels == 1


def _to_rgb(t: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., 1 or 3, H, W)`` -> ``(..., 3, H, W)`` (grey spread to three channels, a view)."""
    return t.expand(*t.shape[:-3], 3, *t.shape[-2:]) if t.shape[-3] == 1 else t


def _to_uint8_rgb(img: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(..., C, H, W)`` with values in [0, 255], C in {1, 3, 4} -> uint8 ``(..., 3, H, W)``."""
    return _to_rgb(_grey_uint8(img)[0])


def pad_to_square(img: torch.Tensor, fill: Sequence[int]) -> torch.Tensor:
    """Paste ``(..., 3, H, W)`` at the centre of a square canvas of side ``max(H, W)`` filled with ``fill``.

    The offset is ``(side - short) // 2``, as in the reference ``expand2square``.

    Args:
        img: image or batch, channel-first.
        fill: one value per channel, same dtype as ``img``.
    """
    h, w = img.shape[-2:]
    if h == w:
        return img
    side = max(h, w)
    canvas = torch.empty((*img.shape[:-2], side, side), dtype=img.dtype)
    canvas[...] = torch.as_tensor(fill, dtype=img.dtype).view(3, 1, 1)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[..., top : top + h, left : left + w] = img
    return canvas


class ImageToClipPixels(Transform):
    """``(C, H, W)`` or ``(B, C, H, W)`` image in [0, 255] -> CLIP-normalised float32 pixels in LLaVA pad mode.

    Args:
        image_size: the vision tower's input size (336 for LLaVA-Med v1.5).
        image_mean: CLIP mean, also the pad colour (times 255, truncated to integers as in the reference).
        image_std: CLIP std.
        pad: pad to square first ("pad" mode); ``False`` squashes the image to the square instead.

    Returns (from ``__call__``):
        float32 ``(3, S, S)`` or ``(B, 3, S, S)``.
    """

    def __init__(
        self,
        image_size: int = 336,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        pad: bool = True,
    ) -> None:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError("image_mean and image_std need three values, std positive")
        self.image_size = int(image_size)
        self.fill = tuple(int(m * 255) for m in image_mean)
        self.pad = pad
        self._mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1) * 255.0)

    def _resized(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Padded and resized uint8 ``(..., C, S, S)``; C is 1 for a grey image that needs no coloured padding."""
        x, grey = _grey_uint8(img)
        single = x.ndim == 3
        if single:
            x = x.unsqueeze(0)
        elif x.ndim != 4:
            raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
        s = self.image_size
        if not (grey and (not self.pad or x.shape[-1] == x.shape[-2])):
            # (a grey image without coloured padding is resized as its one plane: the same pixels, a third the work)
            x = _to_rgb(x)
            if self.pad and max(x.shape[-2:]) > PAD_FIRST_MAX_SIDE and x.shape[-1] != x.shape[-2]:
                x = _box_reduce(x, math.ceil(max(x.shape[-2:]) / PAD_FIRST_MAX_SIDE))  # bounded canvas, same geometry
            if self.pad:
                x = pad_to_square(x, self.fill)
        x = _resize(x, (s, s))
        return x[0] if single else x

    def to_unnormalised(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Pad and resize only: float32 values in [0, 255] (what PIL would hold before rescale/normalise)."""
        return _to_rgb(self._resized(img)).float().contiguous()

    def neutral(self) -> torch.Tensor:
        """The neutral image: a ``(3, S, S)`` canvas of the pad colour, normalised as any image is.

        It holds no content, and it is exactly what an 8-bit image of the pad colour becomes (the bundle's blanked
        baseline), so an answer to such a blank image and to the neutral image coincide.
        """
        canvas = torch.tensor(self.fill, dtype=torch.float32).view(3, 1, 1).expand(3, self.image_size, self.image_size)
        return (canvas - self._mean).mul_(self._inv_std).contiguous()

    def __call__(self, img: torch.Tensor | np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """Pad, resize and normalise ``img``, into ``out`` (a float32 tensor of the result's shape) when given."""
        x = self._resized(img).float().contiguous()
        if out is None:
            return (x - self._mean).mul_(self._inv_std)  # a grey plane broadcasts to three channels
        return torch.sub(x, self._mean, out=out).mul_(self._inv_std)


class ImageToClipPixelsd(MapTransform):
    """Dictionary wrapper of :class:`ImageToClipPixels`.

    Args:
        keys: image keys.
        image_size: see :class:`ImageToClipPixels`.
        image_mean: see :class:`ImageToClipPixels`.
        image_std: see :class:`ImageToClipPixels`.
        pad: see :class:`ImageToClipPixels`.
        output_key: write the pixels under this key (single key only) instead of replacing the image.
        allow_missing_keys: do not raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_size: int = 336,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        pad: bool = True,
        output_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if output_key is not None and len(self.keys) != 1:
            raise ValueError("output_key needs exactly one input key")
        self.output_key = output_key
        self.transform = ImageToClipPixels(image_size, image_mean, image_std, pad)

    def __call__(self, data: dict) -> dict:  # type: ignore[override]
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key or key] = self.transform(d[key])
        return d


ImageToClipPixelsD = ImageToClipPixelsDict = ImageToClipPixelsd
