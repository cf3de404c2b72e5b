# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Intensity (windows, percentiles, MONOCHROME1) and volume -> views (orientation, indices, budget)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from _transforms_fixtures import shipped_file, write_ct_series
from monai.data import MetaTensor

from monai_llava_med.errors import VolumeError
from monai_llava_med.transforms import (
    WINDOW_PRESETS,
    CanonicalOrientation,
    CTWindow,
    CTWindowd,
    InvertMonochrome1,
    LoadMedicalImage,
    ModalityIntensity,
    MultiWindow,
    RadiologyViews,
    VolumeToViews,
    resolve_window,
    views_for_budget,
)

ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


def _hu(values, **meta):
    t = MetaTensor(torch.tensor(values, dtype=torch.float32).view(1, 1, -1))
    t.meta.update({"modality": "CT", "photometric": "MONOCHROME2", **meta})
    return t


def test_presets_present_and_window_numbers():
    for name in ("lung", "mediastinum", "soft_tissue", "bone", "brain", "abdomen"):
        assert name in WINDOW_PRESETS
    out = CTWindow("lung")(_hu([-1350, -600, 150, -1000, 500]))  # lung: L -600 W 1500 -> [-1350, 150]
    np.testing.assert_allclose(out.view(-1).numpy(), [0, 127.5, 255, 255 * 350 / 1500, 255], atol=1e-3)
    assert out.meta["window"] == "lung"
    out = CTWindow("brain")(_hu([0, 40, 80, -1000, 3000]))  # brain: [0, 80]
    np.testing.assert_allclose(out.view(-1).numpy(), [0, 127.5, 255, 0, 255], atol=1e-3)
    out = CTWindow((100, 50))(_hu([75, 125]))
    np.testing.assert_allclose(out.view(-1).numpy(), [0, 255], atol=1e-3)


def test_dicom_window_and_errors():
    out = CTWindow("dicom")(_hu([-160, 40, 240], window_center=40.0, window_width=400.0))
    np.testing.assert_allclose(out.view(-1).numpy(), [0, 127.5, 255], atol=1e-3)
    assert out.meta["window"] == "dicom"  # the header's values are not echoed into outputs
    with pytest.raises(ValueError, match="no usable WindowCenter"):
        resolve_window("dicom", {})
    with pytest.raises(ValueError, match="unknown window preset"):
        resolve_window("nope")
    with pytest.raises(ValueError, match="positive"):
        resolve_window((0, 0))


def test_dicom_window_missing_is_typed_and_names_the_file():
    with pytest.raises(VolumeError, match="no usable WindowCenter") as info:
        resolve_window("dicom", {"source": "x.dcm", "window_center": None})
    assert info.value.path == "x.dcm"
    with pytest.raises(VolumeError) as info:
        RadiologyViews(window="dicom")(shipped_file("CT_small.dcm"))  # CT_small has no WindowCenter/Width
    assert info.value.path == "CT_small.dcm"


def test_composite_inverts_monochrome1():
    values = [-1000, -600, 0, 50, 400, 1300]
    mono2 = MultiWindow(("lung", "mediastinum", "bone"))(_hu(values))
    for window in ("composite", ("lung", "mediastinum", "bone")):
        out = ModalityIntensity(window)(_hu(values, photometric="MONOCHROME1"))
        assert out.shape[0] == 3 and out.meta["photometric"] == "MONOCHROME2"
        np.testing.assert_allclose(out.numpy(), 255.0 - mono2.numpy(), atol=1e-4)
        same = ModalityIntensity(window)(_hu(values))  # MONOCHROME2 stays as it is
        np.testing.assert_allclose(same.numpy(), mono2.numpy(), atol=1e-4)


def test_8bit_grey_photo_passes_unchanged(tmp_path):
    from PIL import Image

    arr = np.clip(np.random.default_rng(0).normal(120, 30, (24, 32)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "g.png")
    Image.fromarray(arr).convert("RGB").save(tmp_path / "c.png")
    grey = ModalityIntensity()(LoadMedicalImage()(tmp_path / "g.png"))
    colour = ModalityIntensity()(LoadMedicalImage()(tmp_path / "c.png"))
    assert grey.meta["window"] is None and colour.meta["window"] is None
    np.testing.assert_array_equal(grey[0].numpy(), arr.astype(np.float32))  # no percentile stretch
    np.testing.assert_array_equal(colour[1].numpy(), grey[0].numpy())
    wide = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 50
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert ModalityIntensity()(LoadMedicalImage()(tmp_path / "w.png")).meta["window"].startswith("percentile")


def test_composite_channels_are_the_three_windows():
    img = _hu([-1000, -600, 0, 50, 400, 1300])
    out = MultiWindow(("lung", "mediastinum", "bone"))(img)
    assert out.shape[0] == 3 and out.meta["window"] == "composite:lung+mediastinum+bone"
    for ch, name in enumerate(("lung", "mediastinum", "bone")):
        np.testing.assert_allclose(out[ch].numpy(), CTWindow(name)(img)[0].numpy())


def test_ct_small_soft_tissue_pixels():
    img = LoadMedicalImage()(shipped_file("CT_small.dcm"))
    out = ModalityIntensity("auto")(img)  # CT_small has no window: soft tissue (L50 W400 -> [-150, 250])
    assert out.meta["window"] == "soft_tissue"
    hu = float(img[0, 64, 64])
    assert float(out[0, 64, 64]) == pytest.approx(np.clip((hu + 150) / 400 * 255, 0, 255), abs=1e-3)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 255.0


def test_mr_percentile_range():
    img = LoadMedicalImage()(shipped_file("MR_small.dcm"))
    img.meta["window_center"] = None  # percentiles regardless of the file window
    out = ModalityIntensity("auto")(img)
    assert out.meta["window"] == "percentile 0.5-99.5"
    assert float(out.min()) == 0.0 and float(out.max()) == 255.0
    lo, hi = np.percentile(img.numpy(), [0.5, 99.5])
    v = float(img[0, 30, 30])
    assert float(out[0, 30, 30]) == pytest.approx(np.clip((v - lo) / (hi - lo) * 255, 0, 255), abs=1e-2)


def test_monochrome1_inverted_so_air_is_dark():
    t = MetaTensor(torch.tensor([[[0.0, 100.0, 255.0]]]))
    t.meta["photometric"] = "MONOCHROME1"
    out = InvertMonochrome1()(t)
    np.testing.assert_allclose(out.view(-1).numpy(), [255, 155, 0])
    assert out.meta["photometric"] == "MONOCHROME2"
    t.meta["photometric"] = "MONOCHROME2"
    assert InvertMonochrome1()(t) is t


def test_radiograph_monochrome1_direction():
    try:
        path = shipped_file("RG1_UNCI.dcm")
    except AssertionError:
        pytest.skip("pydicom-data not installed")
    img = LoadMedicalImage()(path)
    out = ModalityIntensity("auto")(img)
    stored = img[0]
    # in MONOCHROME1 the highest stored values are darkest; after display scaling they must be dark
    bright_stored = stored > torch.quantile(stored.flatten()[::97].float(), 0.95)
    dark_stored = stored < torch.quantile(stored.flatten()[::97].float(), 0.05)
    assert float(out[0][bright_stored].mean()) < float(out[0][dark_stored].mean())
    c, w = img.meta["window_center"], img.meta["window_width"]
    for r, q in [(100, 100), (900, 900), (1500, 300)]:
        shown = np.clip((float(stored[r, q]) - (c - w / 2)) / w * 255, 0, 255)
        assert float(out[0, r, q]) == pytest.approx(255 - shown, abs=1e-2)


def test_dict_wrapper_and_aliases():
    from monai_llava_med.transforms import CTWindowD, CTWindowDict

    assert CTWindowD is CTWindowd and CTWindowDict is CTWindowd
    d = CTWindowd(keys="img", window="brain")({"img": _hu([40.0]), "other": 1})
    assert float(d["img"].view(-1)[0]) == pytest.approx(127.5) and d["other"] == 1


def test_token_budget():
    assert views_for_budget(4) == 4
    assert views_for_budget(4, token_budget=2048 - 300) == 3
    with pytest.raises(ValueError):
        views_for_budget(4, token_budget=100)


def test_views_orientation_axial_coronal_sagittal():
    # a RAS volume whose value encodes position: v = 100*i + 10*j + k
    i, j, k = np.meshgrid(np.arange(4), np.arange(5), np.arange(6), indexing="ij")
    vol = MetaTensor(torch.tensor((100 * i + 10 * j + k)[None], dtype=torch.float32), affine=torch.eye(4))
    vol.meta["layout"] = "volume"
    views = VolumeToViews(max_views=3, mode="triplanar")(vol)
    kinds = [v.meta["view"] for v in views]
    assert kinds == [{"kind": "slice", "plane": "axial", "index": 3}, {"kind": "slice", "plane": "coronal", "index": 2},
                     {"kind": "slice", "plane": "sagittal", "index": 2}]
    ax, co, sa = (v[0] for v in views)
    # axial: top-left = most anterior (j max) and patient's right (i max)
    assert ax.shape == (5, 4) and float(ax[0, 0]) == 100 * 3 + 10 * 4 + 3 and float(ax[-1, -1]) == 3
    # coronal: top = superior (k max), left = patient's right
    assert co.shape == (6, 4) and float(co[0, 0]) == 300 + 20 + 5 and float(co[-1, -1]) == 20
    # sagittal: top = superior, left = anterior
    assert sa.shape == (6, 5) and float(sa[0, 0]) == 200 + 40 + 5 and float(sa[-1, -1]) == 200


def test_axial_indices_evenly_spaced_and_central():
    vol = MetaTensor(torch.zeros(1, 4, 4, 100), affine=torch.eye(4))
    vol.meta["layout"] = "volume"
    idx = [v.meta["view"]["index"] for v in VolumeToViews(max_views=4)(vol)]
    assert idx == [20, 40, 60, 80]
    idx = [v.meta["view"]["index"] for v in VolumeToViews(max_views=4, mode="central")(vol)]
    assert idx == [35, 45, 55, 65]
    mont = VolumeToViews(mode="montage", montage_grid=2)(vol)
    assert len(mont) == 1 and mont[0].meta["view"]["indices"] == [20, 40, 60, 80] and mont[0].shape == (1, 8, 8)
    small = VolumeToViews(max_views=4)(vol[..., :3])
    assert [v.meta["view"]["index"] for v in small] == [0, 1, 2]


def test_anisotropic_views_get_square_pixels():
    vol = MetaTensor(torch.zeros(1, 40, 40, 10), affine=torch.diag(torch.tensor([0.5, 0.5, 4.0, 1.0])))
    vol.meta["layout"] = "volume"
    co = VolumeToViews(max_views=2, mode="triplanar")(vol)[1]
    assert co.meta["view"]["plane"] == "coronal"
    assert tuple(co.shape[1:]) == (40, 20)  # 10 slices x 4 mm = 40 mm tall, 40 x 0.5 mm = 20 mm wide


def test_nifti_orientation_canonical():
    img = LoadMedicalImage()(ANATOMICAL)
    ras = CanonicalOrientation()(img)
    import nibabel.orientations as no

    assert "".join(no.aff2axcodes(ras.affine.numpy())) == "RAS"
    ref = nib.as_closest_canonical(nib.load(ANATOMICAL)).get_fdata()
    np.testing.assert_allclose(ras[0].numpy(), ref)


def test_series_lazy_axial_equals_full_volume(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.integers(-1000, 1500, (12, 10, 7)).astype(np.float32)
    write_ct_series(tmp_path / "s", vol, instance_order="descending", spacing=(0.5, 0.8))
    lazy = RadiologyViews(max_views=3, window="lung")(tmp_path / "s")
    full = RadiologyViews(max_views=3, window="lung", lazy_series=False)(tmp_path / "s")
    assert [v.meta["view"] for v in lazy] == [v.meta["view"] for v in full]
    assert [v.meta["view"]["index"] for v in lazy] == [1, 3, 5]
    for a, b in zip(lazy, full):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-3)
    # axial index k is slice k in z order, shown as stored (rows, cols), resampled to square pixels
    k = lazy[0].meta["view"]["index"]
    ref = CTWindow("lung")(MetaTensor(torch.tensor(vol[:, :, k])[None]))
    from monai.transforms import Resize

    ref = Resize((9, 12), mode="bilinear")(ref)  # 6 mm x 8 mm; the longer side keeps the 12-pixel count
    np.testing.assert_allclose(lazy[0].numpy(), ref.numpy(), atol=1e-3)


def test_ct5n_full_axial_view_matches_stored_slice():
    folder = os.path.join(os.path.dirname(shipped_file("CT_small.dcm")), "dicomdirtests", "98892001", "CT5N")
    views = RadiologyViews(max_views=5, window="bone", lazy_series=False)(folder)
    assert [v.meta["view"]["index"] for v in views] == [0, 1, 2, 3, 4]
    files = sorted(os.listdir(folder), key=lambda f: float(pydicom.dcmread(os.path.join(folder, f)).ImagePositionPatient[2]))
    for view, name in zip(views, files):
        ds = pydicom.dcmread(os.path.join(folder, name))
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expected = np.clip((hu - (400 - 900)) / 1800 * 255, 0, 255)
        np.testing.assert_allclose(view[0].numpy(), expected, atol=1e-3)
