# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Resource bounds (docs/limits.md): tiny files claiming huge images are refused from the header, huge photos are
reduced at decode, the pad canvas stays small, and the peak memory of the worst accepted 2D inputs stays under
the documented 1 GB. Peaks are measured in a forked child (``fuzz.runner.Runner``: VmHWM above its start)."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from _transforms_fixtures import make_ct_dataset, save_dicom
from fuzz.campaign import make_pipeline
from fuzz.runner import Runner
from monai_llava_med.errors import DicomDecodeError, ImageReadError
from monai_llava_med.transforms import pixels as pixels_module
from monai_llava_med.transforms.limits import MAX_DECODE_SIDE, MAX_IMAGE_PIXELS, check_deflated_dicom
from monai_llava_med.transforms.photo import load_photo
from monai_llava_med.transforms.pixels import PAD_FIRST_MAX_SIDE, ImageToClipPixels

#: The documented bound (docs/limits.md): peak RSS above the loaded pipeline for any accepted 2D input at 336 px.
BOUND_MB = 1024


@pytest.fixture(scope="module")
def runner():
    return Runner(make_pipeline(), timeout_s=120, memory_mb=100_000)


def _run(runner, path):
    out = runner.run(Path(path), [Path(path).name], [])
    assert out.category in ("ok", "typed"), out
    return out


def _png(path, shape, value=90):
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("shape", [(1, 30000), (30000, 1), (65535, 1), (1, 65535)])
def test_elongated_png_is_refused_from_its_header(tmp_path, runner, shape):
    path = _png(tmp_path / "thin.png", shape)
    assert path.stat().st_size < 400  # a few hundred bytes claim a huge canvas
    with pytest.raises(ImageReadError, match="aspect ratio") as info:
        load_photo(path)
    assert "thin.png" in str(info.value) and str(max(shape)) not in str(info.value)
    out = _run(runner, path)
    assert out.category == "typed" and out.peak_mb < 50 and out.seconds < 5


def test_forged_jpeg_claiming_12000_squared_is_decoded_reduced(tmp_path, runner):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 12000, 12000)  # SOF0: height, width
    path = tmp_path / "forged.jpg"
    path.write_bytes(bytes(data))
    assert path.stat().st_size < 5000
    out = _run(runner, path)
    assert out.peak_mb < 300 and out.seconds < 15, out


def _forged_nifti(path, shape, dtype, gz=False):
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), 1)
    raw = header.binaryblock + b"\x00" * 4 + b"\x00" * 1000  # header, extension flag, a little data
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("shape,dtype,gz", [((1023, 1024, 1024), np.float32, False),
                                            ((1023, 1024, 1024), np.float32, True),
                                            ((500, 500, 500), np.float64, True)])
def test_nifti_header_claiming_more_data_than_the_file_is_refused_before_reading(tmp_path, runner, shape, dtype, gz):
    path = _forged_nifti(tmp_path / ("forged.nii.gz" if gz else "forged.nii"), shape, dtype, gz)
    out = _run(runner, path)
    assert out.category == "typed" and out.error_type == "ImageReadError", out
    assert "less data than its header claims" in out.message or "absurd" in out.message
    assert out.peak_mb < 50 and out.seconds < 5, out


def test_nifti_with_all_its_data_still_loads(tmp_path):
    from monai_llava_med.transforms.nifti import load_nifti

    vol = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    for name in ("ok.nii", "ok.nii.gz"):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / name))
        assert torch.equal(load_nifti(tmp_path / name)[0], torch.as_tensor(vol))
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(gzip.decompress(data)[:-8]))
    with pytest.raises(ImageReadError, match="less data"):
        load_nifti(tmp_path / "cut.nii.gz")


def test_deflated_dicom_is_bounded_before_pydicom_inflates_it(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = make_ct_dataset(np.zeros((256, 256), np.int16))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = save_dicom(ds, tmp_path / "deflated.dcm")
    assert Path(path).stat().st_size < 10_000
    check_deflated_dicom(path)  # 128 KB of pixels: within the default limit
    with pytest.raises(DicomDecodeError, match="inflates to more than"):
        check_deflated_dicom(path, max_bytes=100_000)


def test_dicom_beyond_the_2d_limits_is_refused_from_its_header(tmp_path):
    from monai_llava_med.transforms.dicom_file import load_dicom_file

    ds = make_ct_dataset(np.zeros((4, 4), np.int16))
    ds.Rows, ds.Columns = 1, 30000
    with pytest.raises(ImageReadError, match="aspect ratio"):
        load_dicom_file(save_dicom(ds, tmp_path / "thin.dcm"))
    ds.Rows, ds.Columns = 5000, 5000
    with pytest.raises(ImageReadError, match="absurd image size"):
        load_dicom_file(save_dicom(ds, tmp_path / "large.dcm"))


def test_photos_are_reduced_at_decode_and_small_ones_are_untouched(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (MAX_DECODE_SIDE, 700, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    img = load_photo(tmp_path / "small.png")
    assert torch.equal(img, torch.as_tensor(small).permute(2, 0, 1).float())  # exactly PIL's plain decode
    big = np.zeros((3 * MAX_DECODE_SIDE - 5, 1500), np.uint8)
    big[:, 750:] = 200
    Image.fromarray(big).save(tmp_path / "big.png")
    Image.fromarray(big).convert("RGB").save(tmp_path / "big.jpg", quality=95)
    for name in ("big.png", "big.jpg"):
        img = load_photo(tmp_path / name)
        assert MAX_DECODE_SIDE // 2 <= max(img.shape[1:]) <= MAX_DECODE_SIDE, (name, img.shape)
        assert float(img[0, :, : img.shape[2] // 2 - 2].max()) < 20 and float(img[0, :, -1].min()) > 180


@pytest.mark.parametrize("noise", [False, True])
def test_huge_image_is_box_reduced_before_padding_within_tolerance(monkeypatch, noise):
    t = ImageToClipPixels(336)
    gen = torch.Generator().manual_seed(0)
    for h, w in [(300, 5000), (4500, 1200), (4097, 230)]:
        img = torch.full((3, h, w), 60.0)  # smooth content next to flat padding-like grey, or pure noise
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w // 3), indexing="ij")
        img[:, :, : w // 3] = (127 + 120 * torch.sin(yy * 20.0 / h) * torch.cos(xx * 60.0 / w)).round()
        if noise:
            img = (torch.rand((3, h, w), generator=gen) * 255).round()
        reduced_first = t.to_unnormalised(img)
        monkeypatch.setattr(pixels_module, "PAD_FIRST_MAX_SIDE", 10**9)  # the reference order on the full canvas
        padded_first = t.to_unnormalised(img)
        monkeypatch.undo()
        diff = (reduced_first - padded_first).abs().flatten()
        assert float(diff.mean()) < 0.25 and float(diff.quantile(0.99)) <= 2 and float(diff.max()) <= 6, (h, w)


def test_standard_images_keep_the_reference_order_exactly():
    img = (torch.rand((3, 700, PAD_FIRST_MAX_SIDE), generator=torch.Generator().manual_seed(1)) * 255).round()
    fill = ImageToClipPixels(336).fill
    canvas = pixels_module.pad_to_square(img.to(torch.uint8)[None], fill)
    ref = torch.nn.functional.interpolate(canvas.contiguous(memory_format=torch.channels_last), size=(336, 336),
                                          mode="bicubic", antialias=True)[0].float()
    assert torch.equal(ImageToClipPixels(336).to_unnormalised(img), ref)


def test_pixels_of_an_elongated_array_never_build_the_full_canvas(runner):
    img = torch.zeros((1, 60000, 3), dtype=torch.uint8)  # a 60000^2 x 3 canvas would be 10.8 GB
    lean = Runner(lambda _: {"pixel_values": ImageToClipPixels(336)(img)}, timeout_s=60, memory_mb=100_000)
    out = lean.run(Path("in-memory"), ["in-memory"], [])
    assert out.category == "ok" and out.peak_mb < 250, out  # canvas <= 4096^2 x 3 bytes (and its channels-last copy)


@pytest.mark.slow
def test_worst_accepted_2d_inputs_stay_under_the_documented_bound(tmp_path, runner):
    side = int(MAX_IMAGE_PIXELS**0.5)
    grad = (np.add.outer(np.arange(side), np.arange(side)) % 4000).astype(np.int16)
    inputs = [save_dicom(make_ct_dataset(grad), tmp_path / "max.dcm")]
    rows = 18300  # 18300 x 915: 20:1 and 16.7 M pixels, the most elongated image of (almost) the most pixels
    inputs.append(save_dicom(make_ct_dataset(np.zeros((rows, rows // 20), np.int16)), tmp_path / "long.dcm"))
    Image.fromarray(np.stack([(grad % 256).astype(np.uint8)] * 3, -1)).save(tmp_path / "max.png", compress_level=1)
    inputs.append(tmp_path / "max.png")
    for path in inputs:
        out = _run(runner, path)
        print(f"RESULT peak above start {Path(path).name}: {out.peak_mb:.0f} MB in {out.seconds:.1f} s")
        assert out.category == "ok" and out.peak_mb <= BOUND_MB, (path, out)


def test_the_data_sets_photo_loader_applies_the_same_limits(tmp_path):
    from monai_llava_med.data import PILImageToPixels

    with pytest.raises(ImageReadError, match="aspect ratio") as info:
        PILImageToPixels(32)(_png(tmp_path / "thin.png", (1, 30000)))
    assert "thin.png" in str(info.value) and "30000" not in str(info.value)
    out = PILImageToPixels(32)(_png(tmp_path / "big.png", (MAX_DECODE_SIDE + 900, 1200), value=255))  # reduced
    assert out["pixel_values"].shape == (1, 3, 32, 32)


@pytest.mark.parametrize("mode", ["1", "P", "I;16", "LA", "RGBA"])
def test_large_photos_of_every_mode_are_reduced(tmp_path, mode):
    arr = (np.add.outer(np.arange(MAX_DECODE_SIDE + 600), np.arange(900)) % 250).astype(np.uint8)
    im = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr.astype(np.uint16) * 200)
    im.save(tmp_path / "m.png")
    img = load_photo(tmp_path / "m.png")
    assert max(img.shape[1:]) <= MAX_DECODE_SIDE and img.shape[0] in (1, 3)
    if mode == "I;16":
        assert float(img.max()) > 255  # 16-bit values kept
