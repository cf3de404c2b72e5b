# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One geometry rule for every DICOM input kind: enhanced multi-frame, classic series, single slices.

Expected geometry is stated from the DICOM definitions, not from the code: ImageOrientationPatient holds the
LPS direction of increasing column index (along a row), then of increasing row index; the axial view is
radiological (patient left on the image's right, anterior at the top), the coronal view has superior at the top
and patient left on the image's right.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from _transforms_fixtures import make_ct_dataset, save_dicom, shipped_file
from pydicom.uid import generate_uid

from monai_llava_med.errors import VolumeError
from monai_llava_med.transforms import (
    CanonicalOrientation,
    CTWindow,
    LoadMedicalImage,
    MedicalImageToPixels,
    RadiologyViews,
)

PRONE = (-1, 0, 0, 0, -1, 0)  # columns run to the patient's right, rows to anterior
SUPINE = (1, 0, 0, 0, 1, 0)  # columns run to the patient's left, rows to posterior


def _ect():
    path = shipped_file("eCT_Supplemental.dcm")
    return path, pydicom.dcmread(path)


def _write_classic_twin(ds, folder):
    """Write each frame of an enhanced CT as a classic CT file, geometry/window/rescale from its functional groups."""
    folder.mkdir()
    shared = ds.SharedFunctionalGroupsSequence[0]
    uid = generate_uid()
    stored = ds.pixel_array
    for f, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        def item(name, group=group):
            seq = group.get(name) or shared.get(name)
            return seq[0]

        measures, voi, rescale = item("PixelMeasuresSequence"), item("FrameVOILUTSequence"), item(
            "PixelValueTransformationSequence")
        slice_ds = make_ct_dataset(
            stored[f].astype(np.int16),
            position=[float(v) for v in item("PlanePositionSequence").ImagePositionPatient],
            instance=f + 1, series_uid=uid,
            orientation=[float(v) for v in item("PlaneOrientationSequence").ImageOrientationPatient],
            spacing=[float(v) for v in measures.PixelSpacing],
            intercept=float(rescale.RescaleIntercept), slope=float(rescale.RescaleSlope),
            SliceThickness=float(measures.SliceThickness),
            WindowCenter=float(voi.WindowCenter), WindowWidth=float(voi.WindowWidth),
        )
        save_dicom(slice_ds, folder / f"frame_{f}.dcm")


def _assert_same_views(a, b):
    assert [v.meta["view"] for v in a] == [v.meta["view"] for v in b]
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert torch.equal(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor))


def test_enhanced_ct_matches_its_classic_series_twin(tmp_path):
    path, ds = _ect()
    _write_classic_twin(ds, tmp_path / "twin")
    pre = MedicalImageToPixels(image_size=64, max_views=4)
    _assert_same_views(pre.views(path), pre.views(tmp_path / "twin"))
    enhanced, classic = pre(path), pre(tmp_path / "twin")
    assert torch.equal(enhanced["pixel_values"], classic["pixel_values"])
    assert enhanced["views"] == classic["views"] == [{"kind": "slice", "plane": "axial", "index": i} for i in (0, 1)]
    assert enhanced["window"] == classic["window"] == "dicom"  # the file's own window (label holds no values)
    # ... and that window is the FrameVOILUTSequence one, L49 W102
    explicit = MedicalImageToPixels(image_size=64, max_views=4, window=(49.0, 102.0))(path)
    assert torch.equal(enhanced["pixel_values"], explicit["pixel_values"])
    load, orient = LoadMedicalImage(), CanonicalOrientation()
    img = load(path)
    assert (img.meta["window_center"], img.meta["window_width"]) == (49.0, 102.0)
    torch.testing.assert_close(orient(img).affine, orient(load(tmp_path / "twin")).affine)


def test_enhanced_ct_axial_view_is_radiological():
    path, ds = _ect()
    # IOP (-1,0,0,0,1,0): columns run to the patient's right (left on the image means patient left: mirror the
    # stored columns), rows run to posterior (anterior already at the top). Axial index 0 is the most inferior
    # frame: frame 1 (z -159 mm) is below frame 2 (z -149 mm).
    z = [float(g.PlanePositionSequence[0].ImagePositionPatient[2]) for g in ds.PerFrameFunctionalGroupsSequence]
    assert z == [-159.0, -149.0]
    views = RadiologyViews(max_views=4)(path)
    stored = torch.from_numpy(ds.pixel_array.astype(np.float32)) - 1024.0
    for index, frame in ((0, 0), (1, 1)):
        expected = CTWindow((49.0, 102.0))(stored[frame][None]).flip(-1)
        assert torch.equal(views[index].as_subclass(torch.Tensor), torch.as_tensor(expected))


def _slices_with_marker(n=3, rows=12, cols=10, orientation=PRONE):
    """Stored slices (int16) with a bright block in the patient's left-anterior corner of each slice."""
    rng = np.random.default_rng(1)
    out = []
    for k in range(n):
        img = rng.integers(900, 1100, (rows, cols)).astype(np.int16)  # HU -124..76 after the -1024 intercept
        left_col = slice(0, 3) if orientation[0] < 0 else slice(cols - 3, cols)  # column index towards the left
        anterior_row = slice(rows - 3, rows) if orientation[4] < 0 else slice(0, 3)  # row index towards anterior
        img[anterior_row, left_col] = 1024 + 300 + 10 * k
        out.append(img)
    return out


def _write(folder, slices, orientation, spacing=(0.7, 0.7), dz=2.0, name="s"):
    folder.mkdir(parents=True, exist_ok=True)
    uid, normal = generate_uid(), np.cross(orientation[:3], orientation[3:])
    files = []
    for k, px in enumerate(slices):
        ds = make_ct_dataset(px, position=list(normal * k * dz), instance=k + 1, series_uid=uid,
                             orientation=orientation, spacing=spacing)
        files.append(save_dicom(ds, folder / f"{name}{k}.dcm"))
    return files


def _marker_top_right(view):
    """The marker (255 after windowing, background at most 176) is in the top-right corner and no other one."""
    h, w = view.shape[1:]
    corners = [float(view[0, r, c]) for r, c in ((0, w - 1), (0, 0), (h - 1, 0), (h - 1, w - 1))]
    return corners[0] > 250 and max(corners[1:]) < 200


@pytest.mark.parametrize("orientation", [PRONE, SUPINE], ids=["prone", "supine"])
def test_single_files_and_series_give_the_same_views(tmp_path, orientation):
    slices = _slices_with_marker(orientation=orientation)
    files = _write(tmp_path / "series", slices, orientation)
    radiology = RadiologyViews(max_views=4, window=(0.0, 400.0))  # supine: the lazy axial path
    series = radiology(tmp_path / "series")
    full = RadiologyViews(max_views=4, window=(0.0, 400.0), lazy_series=False)(tmp_path / "series")
    _assert_same_views(series, full)
    assert [v.meta["view"]["index"] for v in series] == [0, 1, 2]
    for k, f in enumerate(files):
        single = radiology(f)
        assert single[0].meta["view"] == {"kind": "slice", "plane": "axial", "index": 0}
        assert torch.equal(single[0].as_subclass(torch.Tensor), series[k].as_subclass(torch.Tensor))
        assert _marker_top_right(single[0])  # patient left-anterior -> image right-top


def test_anisotropic_single_file_is_resampled_like_its_series(tmp_path):
    rows, cols, spacing = 40, 30, (0.5, 1.0)  # 20 mm tall, 30 mm wide
    slices = _slices_with_marker(n=2, rows=rows, cols=cols, orientation=SUPINE)
    files = _write(tmp_path / "two", slices, SUPINE, spacing=spacing)
    _write(tmp_path / "one", slices[:1], SUPINE, spacing=spacing)
    radiology = RadiologyViews(max_views=4, window=(0.0, 400.0))
    single = radiology(files[0])[0]
    assert tuple(single.shape) == (1, 27, 40)  # square pixels: the longer side (30 mm) keeps the 40 pixels
    assert _marker_top_right(single)
    _assert_same_views([single], radiology(tmp_path / "one"))
    for folder_views in (radiology(tmp_path / "two"), RadiologyViews(window=(0.0, 400.0), lazy_series=False)(
            tmp_path / "two")):
        assert torch.equal(folder_views[0].as_subclass(torch.Tensor), single.as_subclass(torch.Tensor))


def test_single_coronal_file_is_shown_as_coronal(tmp_path):
    # IOP (-1,0,0,0,0,1): columns run to the patient's right, rows to superior; a marker at the patient's
    # left-superior corner (column 0, last row) must be at the top right of the coronal view
    stored = np.full((12, 10), 1024, np.int16)
    stored[-3:, :3] = 1024 + 300
    path = save_dicom(make_ct_dataset(stored, orientation=(-1, 0, 0, 0, 0, 1), spacing=(0.5, 0.5)),
                      tmp_path / "cor.dcm")
    views = RadiologyViews(window=(0.0, 400.0))(path)
    assert len(views) == 1 and views[0].meta["view"] == {"kind": "slice", "plane": "coronal", "index": 0}
    assert _marker_top_right(views[0])
    expected = torch.flip(CTWindow((0.0, 400.0))(torch.from_numpy(stored.astype(np.float32) - 1024)[None]), (1, 2))
    assert torch.equal(views[0].as_subclass(torch.Tensor), torch.as_tensor(expected))


def test_file_without_orientation_is_shown_as_stored(tmp_path):
    stored = np.arange(12 * 10, dtype=np.int16).reshape(12, 10) + 1000
    ds = make_ct_dataset(stored, spacing=(0.5, 1.0))
    del ds.ImageOrientationPatient, ds.ImagePositionPatient
    views = MedicalImageToPixels(image_size=16, window=(0.0, 400.0)).views(save_dicom(ds, tmp_path / "plain.dcm"))
    assert views[0].meta["view"] == {"kind": "image"}
    expected = CTWindow((0.0, 400.0))(torch.from_numpy(stored.astype(np.float32) - 1024)[None])
    assert torch.equal(views[0].as_subclass(torch.Tensor), torch.as_tensor(expected))


def test_enhanced_frames_at_one_position_stay_frames(tmp_path):
    path, ds = _ect()
    first = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient = list(first)  # a cine
    img = LoadMedicalImage()(save_dicom(ds, tmp_path / "cine.dcm"))
    assert img.meta["layout"] == "frames"
    np.testing.assert_array_equal(img[0, :, :, 1].numpy().T, ds.pixel_array[1].astype(np.float32) - 1024)


def test_malformed_frame_geometry_is_a_typed_error(tmp_path):
    path, ds = _ect()
    ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient = [1.5, 2.5]
    with pytest.raises(VolumeError) as info:
        LoadMedicalImage()(save_dicom(ds, tmp_path / "bad.dcm"))
    text = str(info.value)
    assert "bad.dcm" in text and "frame 2" in text and "ImagePositionPatient" in text and "2.5" not in text
