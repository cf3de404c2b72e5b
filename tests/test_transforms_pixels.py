# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""LLaVA pad-mode pixels: parity with transformers' CLIPImageProcessorPil + pad-to-square, batches, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai_llava_med.transforms import CLIP_MEAN, CLIP_STD, ImageToClipPixels, ImageToClipPixelsd

transformers = pytest.importorskip("transformers")
CLIPImageProcessorPil = transformers.CLIPImageProcessorPil


def _expand2square(img: Image.Image, bg: tuple[int, ...]) -> Image.Image:
    """The reference LLaVA pad: paste at the centre of a square canvas of the mean colour."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), bg)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def _natural(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth shading, a sharp disc and a thin dark line: stands in for a photo/radiograph."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([127 + 110 * np.sin(xx / (9.0 + 3 * c) + c) * np.cos(yy / 13.0) for c in range(3)], -1)
    img[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 5) ** 2] = (230, 40, 90)
    img[h // 3 : h // 3 + 2] = 10
    return (img + rng.normal(0, 3, img.shape)).clip(0, 255).astype(np.uint8)


def _reference(img: np.ndarray, size: int) -> np.ndarray:
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    bg = tuple(int(m * 255) for m in proc.image_mean)
    out = proc(_expand2square(Image.fromarray(img), bg), return_tensors="pt")["pixel_values"][0].numpy()
    mean, std = np.array(CLIP_MEAN)[:, None, None], np.array(CLIP_STD)[:, None, None]
    return (out * std + mean) * 255.0  # back to [0, 255]: compare before normalisation


@pytest.mark.parametrize("h,w", [(500, 700), (701, 360), (1000, 1200), (336, 336), (400, 50), (360, 2000)])
def test_parity_downscale_within_one_level(h, w):
    img = _natural(h, w, h + w)
    ours = ImageToClipPixels(336).to_unnormalised(torch.from_numpy(img).permute(2, 0, 1)).numpy()
    ref = _reference(img, 336)
    assert ours.shape == ref.shape == (3, 336, 336)
    assert np.abs(ours - ref).max() <= 1.0 + 1e-3


@pytest.mark.parametrize("h,w", [(100, 80), (64, 64), (200, 150)])
def test_parity_upscale_documented_difference(h, w):
    img = _natural(h, w, h * w)
    ours = ImageToClipPixels(336).to_unnormalised(torch.from_numpy(img).permute(2, 0, 1)).numpy()
    diff = np.abs(ours - _reference(img, 336))
    assert diff.max() <= 2.0 + 1e-3 and (diff > 1.0 + 1e-3).mean() < 0.01 and diff.mean() < 0.1


def test_normalised_values_match_reference_and_pad_colour():
    img = _natural(120, 336, 3)
    ours = ImageToClipPixels(336)(torch.from_numpy(img).permute(2, 0, 1))
    proc = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    ref = proc(_expand2square(Image.fromarray(img), (122, 116, 104)), return_tensors="pt")["pixel_values"][0]
    assert ours.dtype == torch.float32
    assert float((ours - ref).abs().max()) <= 1.0 / 255 / min(CLIP_STD) + 1e-4
    # the pad band (top rows) is the mean colour (122, 116, 104) -> (int(m*255) - m*255) / (std*255)
    expected = [(int(m * 255) - m * 255) / (s * 255) for m, s in zip(CLIP_MEAN, CLIP_STD)]
    np.testing.assert_allclose(ours[:, 0, 0].numpy(), expected, atol=1e-5)


def test_grey_float_and_batch():
    t = ImageToClipPixels(32)
    grey = torch.linspace(0, 255, 40 * 20).view(1, 40, 20)
    rgb = grey.expand(3, 40, 20)
    np.testing.assert_allclose(t(grey).numpy(), t(rgb).numpy())
    batch = torch.stack([rgb, 255 - rgb])
    out = t(batch)
    assert out.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(out[1].numpy(), t(255 - rgb).numpy(), atol=1e-6)
    u8 = t(torch.floor(rgb + 0.5).to(torch.uint8))
    np.testing.assert_allclose(t(rgb).numpy(), u8.numpy())  # float input is rounded to 8 bits


def test_square_input_of_right_size_is_only_normalised():
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    out = ImageToClipPixels(16)(img)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(out, (img.float() / 255 - mean) / std, atol=1e-5, rtol=0)


def test_dict_wrapper_and_errors():
    d = ImageToClipPixelsd(keys="img", image_size=8, output_key="pixel_values")({"img": torch.zeros(1, 4, 6)})
    assert d["pixel_values"].shape == (3, 8, 8) and d["img"].shape == (1, 4, 6)
    with pytest.raises(ValueError, match="channels"):
        ImageToClipPixels(8)(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        ImageToClipPixels(8)(torch.full((1, 4, 4), float("nan")))
    with pytest.raises(ValueError):
        ImageToClipPixels(0)


@pytest.mark.parametrize("pad,shape", [(True, (512, 512)), (True, (96, 96)), (False, (300, 500)), (True, (300, 500))])
def test_grey_plane_equals_the_same_image_spread_to_rgb(pad, shape):
    """A grey image is converted and resized as one plane: bit for bit what its three-channel copy gives."""
    rng = np.random.default_rng(3)
    grey = torch.as_tensor(rng.uniform(-20, 280, (1, *shape)).astype(np.float32))
    grey[0, :, shape[1] // 2] = 127.5  # exact halves round up
    rgb = grey.expand(3, *shape).clone()
    pix = ImageToClipPixels(224, pad=pad)
    assert torch.equal(pix(grey), pix(rgb))
    assert torch.equal(pix(grey[None].repeat(2, 1, 1, 1)), pix(rgb[None].repeat(2, 1, 1, 1)))
    u8 = torch.as_tensor(rng.integers(0, 256, (1, *shape), dtype=np.uint8))
    assert torch.equal(pix.to_unnormalised(u8), pix.to_unnormalised(u8.expand(3, *shape)))
    bad = grey.clone()
    bad[0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        pix(bad)
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        pix(bad)


def test_out_argument_gives_the_same_pixels():
    """``out=`` writes exactly what the call returns (the pipeline fills its batch this way)."""
    rng = np.random.default_rng(5)
    pix = ImageToClipPixels(224)
    for img in (torch.as_tensor(rng.uniform(0, 255, (1, 300, 300)).astype(np.float32)),
                torch.as_tensor(rng.integers(0, 256, (3, 200, 320), dtype=np.uint8))):
        buf = torch.full((2, 3, 224, 224), 7.0)
        assert pix(img, out=buf[1]) is not None
        assert torch.equal(buf[1], pix(img)) and bool((buf[0] == 7.0).all())
