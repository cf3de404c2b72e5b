# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MedicalVolumeToPixels: DICOM series and NIfTI agree on sides, slice-by-slice equals whole-volume, memory bound."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_llava_med.data.phantom import generate_phantom
from monai_llava_med.data.phantom.writers import write_dicom, write_nifti, write_png
from monai_llava_med.errors import VolumeError
from monai_llava_med.networks import LlavaMedConfig
from monai_llava_med.transforms import MedicalImageToPixels, MedicalVolumeToPixels, pixels_from_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _bright_lesion_case(side: str, modality: str = "CT"):
    for seed in range(200):
        case = generate_phantom(np.random.default_rng(seed), size=64, ndim=3, depth=40, modality=modality,
                                num_lesions=1)
        if case.lesions and case.lesions[0].kind == "bright" and case.lesions[0].side == side:
            return case
    raise AssertionError("no phantom with one bright lesion on that side")


def _lesion_voxel(pixels: torch.Tensor) -> tuple[int, int, int]:
    smooth = F.avg_pool3d(pixels[0], 3, stride=1, padding=1)[0]
    return tuple(int(i) for i in np.unravel_index(int(smooth.argmax()), smooth.shape))


@pytest.mark.parametrize("side", ["left", "right"])
def test_dicom_series_and_nifti_put_the_lesion_on_the_patients_side(tmp_path, side):
    case = _bright_lesion_case(side)
    series = tmp_path / "series"
    write_dicom(case, series)
    nifti = write_nifti(case, tmp_path / "case.nii.gz")
    pipeline = MedicalVolumeToPixels((32, 64, 64))
    from_dicom, from_nifti = pipeline(series), pipeline(nifti)
    for out in (from_dicom, from_nifti):
        assert out["pixel_values"].shape == (1, 1, 32, 64, 64) and out["pixel_values"].dtype == torch.float32
        assert 0.0 <= float(out["pixel_values"].min()) and float(out["pixel_values"].max()) <= 1.0
        assert out["modality"] == "CT" and out["views"] == [{"kind": "volume", "axes": "SAR", "size": [32, 64, 64]}]
    d1, h1, w1 = _lesion_voxel(from_dicom["pixel_values"])
    d2, h2, w2 = _lesion_voxel(from_nifti["pixel_values"])
    assert abs(d1 - d2) <= 1 and abs(h1 - h2) <= 1 and abs(w1 - w2) <= 1
    # w grows toward the patient's right: a left lesion sits at small w (the phantom's left is its larger x index)
    assert (w1 < 32) == (side == "left"), (side, w1)
    # d grows toward the head: DICOM slice k lies k slice gaps above the first one
    z = case.lesions[0].center[0]
    assert abs(d1 - ((z + 0.5) * 32 / 40 - 0.5)) <= 1.5
    # the NIfTI is the same volume (its window differs: no window in the file -> soft tissue L50/W400)
    assert float((from_dicom["pixel_values"] - from_nifti["pixel_values"]).abs().mean()) < 0.03


def test_slice_by_slice_series_equals_whole_volume(tmp_path):
    case = _bright_lesion_case("left")
    write_dicom(case, tmp_path / "series")
    lazy = MedicalVolumeToPixels((8, 16, 16))(tmp_path / "series")  # blocks of 4 x 4 in plane, 2 along z
    whole = MedicalVolumeToPixels((8, 16, 16), lazy_series=False)(tmp_path / "series")
    torch.testing.assert_close(lazy["pixel_values"], whole["pixel_values"], atol=1e-5, rtol=0)
    assert lazy["window"] == whole["window"] == "dicom"
    assert set(lazy) == {"pixel_values", "views", "modality", "source", "window"}


def test_metadata_keys_match_the_2d_pipeline(tmp_path):
    case = _bright_lesion_case("right", "MR")
    nifti = write_nifti(case, tmp_path / "mr.nii.gz")
    out = MedicalVolumeToPixels((16, 32, 32))(nifti)
    assert set(out) == set(MedicalImageToPixels(image_size=32, max_views=1)(nifti))
    assert out["pixel_values"].shape == (1, 1, 16, 32, 32) and out["window"].startswith("percentile")


def test_pixels_from_config_follows_the_tower():
    volume = pixels_from_config(LlavaMedConfig.tiny_3d(), max_views=1)
    assert isinstance(volume, MedicalVolumeToPixels) and volume.volume_size == (32, 64, 64)
    assert isinstance(pixels_from_config(LlavaMedConfig.tiny()), MedicalImageToPixels)
    with pytest.raises(TypeError, match="volume_size"):
        pixels_from_config(LlavaMedConfig.tiny_3d(), volume_size=(8, 8, 8))


def test_a_photo_is_no_volume(tmp_path):
    flat = generate_phantom(np.random.default_rng(0), size=64, ndim=2, modality="CT")
    png = write_png(flat, tmp_path / "flat.png")
    with pytest.raises(VolumeError, match="needs a volume with patient geometry"):
        MedicalVolumeToPixels((8, 16, 16))(png)


@pytest.mark.slow
def test_peak_memory_of_a_ct_series_is_under_twice_its_int16_size(tmp_path):
    from bench_volume_pixels import measure_peak

    result = measure_peak(256, 100, tmp_path)
    assert result["ratio"] <= 2.0, result
