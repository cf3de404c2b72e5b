# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The interface the bundle, inference engine and MONAI Label app call: MedicalImageToPixels(d)."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from _transforms_fixtures import PATIENT_ID, PATIENT_NAME, make_ct_dataset, save_dicom, shipped_file, write_ct_series

from monai_llava_med.transforms import CLIP_MEAN, CLIP_STD, CTWindow, ImageToClipPixels, MedicalImageToPixels
from monai_llava_med.transforms import MedicalImageToPixelsd

ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


@pytest.fixture(scope="module")
def pre():
    return MedicalImageToPixels(image_size=64, image_mean=CLIP_MEAN, image_std=CLIP_STD, max_views=4)


def _check(out, views):
    assert set(out) == {"pixel_values", "views", "modality", "source", "window"}
    pv = out["pixel_values"]
    assert pv.dtype == torch.float32 and pv.shape[0] == len(out["views"]) == views and pv.shape[1:] == (3, 64, 64)
    assert type(pv) is torch.Tensor and bool(torch.isfinite(pv).all())
    json.dumps({k: v for k, v in out.items() if k != "pixel_values"})


def test_ct_file(pre):
    out = pre(shipped_file("CT_small.dcm"))
    _check(out, 1)
    # a slice with patient geometry is a one-slice volume, shown in its plane like the same slice in a series
    assert out["views"] == [{"kind": "slice", "plane": "axial", "index": 0}]
    assert out["modality"] == "CT" and out["window"] == "soft_tissue"
    assert out["source"] == "CT_small.dcm"


def test_nifti_volume_default_axial(pre):
    out = pre(ANATOMICAL)
    _check(out, 4)
    assert [v["index"] for v in out["views"]] == [5, 10, 15, 20] and out["modality"] == "MR"
    assert all(v["plane"] == "axial" for v in out["views"])


def test_series_pixels_equal_window_then_clip_pixels(tmp_path):
    vol = np.random.default_rng(0).integers(-1000, 1000, (16, 16, 9)).astype(np.float32)
    write_ct_series(tmp_path / "ser", vol, spacing=(0.6, 0.6))
    out = MedicalImageToPixels(image_size=32, max_views=2, window="mediastinum")(tmp_path / "ser")
    assert [v["index"] for v in out["views"]] == [3, 6] and out["window"] == "mediastinum"
    k = out["views"][0]["index"]
    expected = ImageToClipPixels(32)(CTWindow("mediastinum")(torch.tensor(vol[:, :, k])[None]))
    torch.testing.assert_close(out["pixel_values"][0], expected, atol=1e-5, rtol=0)


def test_token_budget_and_modes(tmp_path):
    out = MedicalImageToPixels(image_size=32, max_views=4, token_budget=1800)(ANATOMICAL)
    assert len(out["views"]) == 3
    out = MedicalImageToPixels(image_size=32, view_mode="triplanar")(ANATOMICAL)
    assert [v.get("plane") for v in out["views"]] == ["axial", "coronal", "sagittal", "axial"]
    out = MedicalImageToPixels(image_size=32, view_mode="montage", window="composite")(shipped_file("emri_small.dcm"))
    assert out["views"] == [{"kind": "montage", "plane": "frame", "indices": [1, 2, 3, 4, 5, 6, 7, 8, 9], "grid": [3, 3]}]
    out = MedicalImageToPixels(image_size=32, window="composite")(shipped_file("CT_small.dcm"))
    assert out["window"] == "composite:lung+mediastinum+bone"


def test_png_photo(tmp_path):
    from PIL import Image

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255
    Image.fromarray(arr).save(tmp_path / "p.png")
    out = MedicalImageToPixels(image_size=40)(tmp_path / "p.png")
    assert out["views"] == [{"kind": "image"}] and out["modality"] == "OT" and out["window"] is None
    torch.testing.assert_close(out["pixel_values"][0], ImageToClipPixels(40)(torch.from_numpy(arr).permute(2, 0, 1)))


def test_no_patient_identifiers_anywhere(tmp_path):
    ds = make_ct_dataset(np.full((8, 8), 1100, np.int16), InstitutionName="General Hospital")
    path = save_dicom(ds, tmp_path / "phi.dcm")
    write_ct_series(tmp_path / "series", np.zeros((8, 8, 3), np.float32))
    for target in (path, tmp_path / "series"):
        out = MedicalImageToPixels(image_size=16)(target)
        text = json.dumps({k: v for k, v in out.items() if k != "pixel_values"})
        for secret in (PATIENT_NAME, "Doe", PATIENT_ID, "19700101", "ACC123456", "General Hospital", str(tmp_path)):
            assert secret not in text


def test_dict_wrapper_prefix_and_aliases(tmp_path):
    from monai_llava_med.transforms import MedicalImageToPixelsD, MedicalImageToPixelsDict

    assert MedicalImageToPixelsD is MedicalImageToPixelsd is MedicalImageToPixelsDict
    d = MedicalImageToPixelsd(keys="image", image_size=16)({"image": shipped_file("MR_small.dcm"), "q": "hi"})
    assert d["pixel_values"].shape == (1, 3, 16, 16) and d["modality"] == "MR" and d["q"] == "hi"
    d = MedicalImageToPixelsd(keys=["a", "b"], image_size=16)(
        {"a": shipped_file("MR_small.dcm"), "b": shipped_file("CT_small.dcm")})
    assert d["a_modality"] == "MR" and d["b_modality"] == "CT"
    assert d["b_views"] == [{"kind": "slice", "plane": "axial", "index": 0}]
    d = MedicalImageToPixelsd(keys="image", output_prefix="img_", image_size=16)({"image": ANATOMICAL})
    assert d["img_pixel_values"].shape == (4, 3, 16, 16) and d["img_source"] == "anatomical.nii"


def test_lazy_axial_series_with_a_nan_rescale_is_a_typed_error(tmp_path):
    """Found by the fuzz harness: the lazy path skipped the NaN/inf check, so pixels.py raised a bare ValueError.

    The series scan now refuses the non-finite RescaleIntercept of the slice before any pixel is decoded."""
    import pydicom

    from monai_llava_med.errors import DicomDecodeError

    files = write_ct_series(tmp_path / "s", np.zeros((8, 8, 5), np.float32))
    ds = pydicom.dcmread(files[2])
    ds.RescaleIntercept = "NaN"
    save_dicom(ds, files[2])
    with pytest.raises(DicomDecodeError, match="RescaleIntercept: not a finite number") as info:
        MedicalImageToPixels(max_views=5)(tmp_path / "s")
    assert os.path.basename(files[2]) in str(info.value)
