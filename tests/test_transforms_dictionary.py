# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The dictionary (``d``) transforms on real loaded images, and the dictionary pipeline of docs/transforms.md."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _transforms_fixtures import make_ct_dataset, save_dicom, shipped_file, write_ct_series, write_slide
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_llava_med.transforms import (
    CanonicalOrientationd,
    CTWindowd,
    InvertMonochrome1d,
    LoadMedicalImaged,
    MedicalImageToPixels,
    ModalityIntensityd,
    MultiWindowd,
    SlideTilesd,
    VolumeToViewsd,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "transforms.md"


@pytest.fixture()
def series(tmp_path):
    """9 slices of 12x10; slice k holds HU 100*k - 400 with one bright voxel at row 2, column 3."""
    vol = np.stack([np.full((12, 10), 100.0 * k - 400) for k in range(9)], -1)
    vol[2, 3, :] = 1000
    write_ct_series(tmp_path / "series", vol, dz=2.0)
    return str(tmp_path / "series")


def test_load_medical_imaged_loads_each_key_and_keeps_the_rest(series):
    loaded = LoadMedicalImaged(keys=["image", "prior"])({"image": series, "prior": shipped_file("CT_small.dcm"),
                                                         "question": "Is there a lesion?"})
    assert loaded["question"] == "Is there a lesion?"
    volume, slice_ = loaded["image"], loaded["prior"]
    assert isinstance(volume, MetaTensor) and tuple(volume.shape) == (1, 10, 12, 9)  # (C, X, Y, Z)
    assert volume.meta["modality"] == "CT" and volume.meta["layout"] == "volume"
    assert float(volume[0, 3, 2, 4]) == 1000 and float(volume[0, 0, 0, 4]) == 0  # HU, rescale applied
    assert slice_.meta["layout"] == "image" and slice_.meta["modality"] == "CT" and slice_.ndim == 3
    with pytest.raises(KeyError):
        LoadMedicalImaged(keys="image")({"question": "q"})
    assert LoadMedicalImaged(keys="image", allow_missing_keys=True)({"question": "q"}) == {"question": "q"}
    assert LoadMedicalImaged(keys="image", modality="mr")({"image": series})["image"].meta["modality"] == "MR"


def test_canonical_orientationd_reorients_volumes_to_ras(series):
    loaded = LoadMedicalImaged(keys=["image", "prior"])({"image": series, "prior": shipped_file("CT_small.dcm")})
    before = loaded["image"]
    out = CanonicalOrientationd(keys=["image", "prior"])(loaded)
    ras = out["image"]
    # DICOM is LPS: the volume's x and y axes run towards the patient's left and back; RAS flips both
    assert np.all(np.diag(ras.affine.numpy())[:3] > 0) and np.diag(before.affine.numpy())[0] < 0
    assert float(ras[0, ras.shape[1] - 1 - 3, ras.shape[2] - 1 - 2, 4]) == 1000
    # a single slice with patient geometry follows the same rule: a one-slice RAS volume (docs/transforms.md)
    prior = out["prior"]
    assert tuple(prior.shape) == (1, 128, 128, 1) and prior.meta["layout"] == "volume"
    assert np.all(np.diag(prior.affine.numpy())[:3] > 0)


def test_modality_intensityd_applies_the_ct_window(series):
    data = LoadMedicalImaged(keys="image")({"image": series})
    out = ModalityIntensityd(keys="image")(data)["image"]
    # no window in the files: soft tissue (50, 400) -> [-150, 250] HU mapped onto [0, 255]
    assert out.meta["window"] == "soft_tissue" and float(out.min()) == 0 and float(out.max()) == 255
    assert float(out[0, 0, 0, 3]) == pytest.approx((-100 + 150) / 400 * 255)  # slice 3 holds -100 HU
    explicit = ModalityIntensityd(keys="image", window=(0, 800))(data)["image"]
    assert float(explicit[0, 0, 0, 3]) == pytest.approx(300 / 800 * 255)


def test_multi_windowd_packs_three_windows_into_rgb(series):
    data = LoadMedicalImaged(keys="image")({"image": series})
    out = MultiWindowd(keys="image", windows=("lung", (0, 800), "bone"))(data)["image"]
    assert out.shape[0] == 3 and out.meta["window"].startswith("composite:lung+")
    hu_minus_100 = out[:, 0, 0, 3]  # lung (-600, 1500), (0, 800), bone (400, 1800)
    expected = [(-100 + 1350) / 1500 * 255, 300 / 800 * 255, (-100 + 500) / 1800 * 255]
    assert hu_minus_100.tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="three windows"):
        MultiWindowd(keys="image", windows=("lung", "bone"))


def test_invert_monochrome1d_inverts_only_monochrome1(tmp_path):
    pixels = np.arange(16 * 16, dtype=np.int16).reshape(16, 16)
    mono1 = save_dicom(make_ct_dataset(pixels, intercept=0.0, Modality="CR", PhotometricInterpretation="MONOCHROME1"),
                       tmp_path / "cr.dcm")
    mono2 = save_dicom(make_ct_dataset(pixels, intercept=0.0, Modality="CR"), tmp_path / "cr2.dcm")
    steps = Compose([LoadMedicalImaged(keys=["a", "b"]), CTWindowd(keys=["a", "b"], window=(127.5, 255)),
                     InvertMonochrome1d(keys=["a", "b"])])
    out = steps({"a": mono1, "b": mono2})
    # stored value v shown as v in [0, 255]; MONOCHROME1 shows low values white: displayed 255 - v
    assert float(out["b"][0, 0, 0]) == 0 and float(out["b"][0, 0, 15]) == 15
    assert float(out["a"][0, 0, 0]) == 255 and float(out["a"][0, 0, 15]) == 240
    assert out["a"].meta["photometric"] == "MONOCHROME2" and out["a"].meta["inverted"] is True
    assert "inverted" not in out["b"].meta
    forced = InvertMonochrome1d(keys="b", force=True)(out)["b"]
    assert float(forced[0, 0, 0]) == 255


def test_volume_to_viewsd_picks_evenly_spaced_slices(series):
    data = ModalityIntensityd(keys="image")(CanonicalOrientationd(keys="image")(LoadMedicalImaged(keys="image")(
        {"image": series})))
    views = VolumeToViewsd(keys="image", max_views=3)(data)["image"]
    assert [v.meta["view"] for v in views] == [
        {"kind": "slice", "plane": "axial", "index": i} for i in (2, 4, 6)
    ]
    for view in views:  # slice k holds 100 k - 400 HU, soft tissue window
        k = view.meta["view"]["index"]
        assert float(view[0, -1, 0]) == pytest.approx(min(max((100 * k - 400 + 150) / 400 * 255, 0), 255))
    triplanar = VolumeToViewsd(keys="image", max_views=3, mode="triplanar")(data)["image"]
    assert [v.meta["view"]["plane"] for v in triplanar] == ["axial", "coronal", "sagittal"]


def test_slide_tilesd_replaces_the_path_by_tiles(tmp_path):
    pytest.importorskip("skimage")
    base = write_slide(tmp_path / "slide.tif", size=1024, levels=3, mpp0=0.25)
    out = SlideTilesd(keys="slide", tile_size=128, target_mpp=0.5, max_tiles=2, min_tissue=0.9)(
        {"slide": str(tmp_path / "slide.tif"), "id": "s1"})
    assert out["id"] == "s1" and len(out["slide"]) == 2
    for tile in out["slide"]:
        v = tile.meta["view"]
        assert v["kind"] == "tile" and v["level"] == 1 and v["tissue"] >= 0.9
        expected = np.moveaxis(base[v["y"] : v["y"] + 256 : 2, v["x"] : v["x"] + 256 : 2], -1, 0)
        np.testing.assert_array_equal(tile.numpy(), expected)


def _docs_block(heading: str) -> str:
    text = DOCS.read_text()
    section = text[text.index(heading):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, heading
    return match.group(1)


def test_the_docs_dictionary_pipeline_equals_the_one_call(series):
    namespace: dict = {"series_folder": series}
    exec(compile(_docs_block("## Composing the steps"), str(DOCS), "exec"), namespace)
    expected = MedicalImageToPixels(image_size=336, max_views=3)(series)
    assert namespace["sample"]["question"] == "Is there a lesion?"
    assert namespace["views"] == expected["views"]
    assert torch.equal(namespace["pixel_values"], expected["pixel_values"])
