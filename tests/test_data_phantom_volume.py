# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Volume phantoms: questions only the whole scan answers (truth from hand-placed lesions), patient geometry,
peripheral lesions, balanced question sets, and answers that survive every way of writing and loading a volume."""

from __future__ import annotations

import hashlib
from collections import Counter

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from skimage.measure import label as connected_components

from monai_llava_med.data.phantom import (
    PhantomCase,
    PhantomQA,
    balanced_question_set,
    case_rng,
    central_slices,
    generate_phantom,
    index_to_lps,
    lps_affine,
    make_questions,
    make_volume_questions,
    volume_findings,
    write_dicom,
    write_nifti,
)
from monai_llava_med.transforms.pipelines import MedicalImageToPixels

SPACING = (2.5, 0.8, 0.8)


def _hand_case(boxes, shape=(16, 32, 32), modality="CT"):
    """A noiseless case: organ everywhere but a 1-voxel border, lesions as boxes ``(z0, z1, y0, y1, x0, x1)``."""
    label = np.zeros(shape, np.uint8)
    label[1:-1, 1:-1, 1:-1] = 1
    organ, background = (40.0, -1000.0) if modality == "CT" else (500.0, 0.0)
    image = np.full(shape, background, np.float32)
    image[label == 1] = organ
    for k, (z0, z1, y0, y1, x0, x1) in enumerate(boxes):
        label[z0:z1, y0:y1, x0:x1] = 2 + k
        image[z0:z1, y0:y1, x0:x1] = organ + 160.0
    return PhantomCase("hand", image, label, modality, SPACING, (), organ)


def _answers(case):
    return {(q.question, q.answer_type): q.answer for q in make_volume_questions(case)}


YES, NO = "yes", "no"
# array z index k lies at LPS S = (k - 7.5) * 2.5 mm (writers' geometry): k >= 8 is the upper (superior) half;
# column x > 15.5 is the patient's left (LPS +x).
CASES = {
    # lesion 2: 3x4x5 = 60 voxels at z 1-3 (lower), x 22-26 (left); lesion 3: 2x2x2 = 8 voxels at z 12-13, x 4-5
    "two": ([(1, 4, 10, 14, 22, 27), (12, 14, 18, 20, 4, 6)],
            dict(presence=YES, count="two", more=YES, upper=YES, lower=YES, left=YES, right=YES,
                 largest=dict(left=YES, right=NO, upper=NO, lower=YES))),
    "one_upper_right": ([(13, 15, 5, 9, 3, 7)],
                        dict(presence=YES, count="one", more=NO, upper=YES, lower=NO, left=NO, right=YES,
                             largest=None)),
    "none": ([], dict(presence=NO, count="zero", more=NO, upper=NO, lower=NO, left=NO, right=NO, largest=None)),
    # equal sizes (27 voxels each): no clearly largest lesion, so no largest questions
    "two_equal": ([(2, 5, 4, 7, 20, 23), (10, 13, 20, 23, 24, 27)],
                  dict(presence=YES, count="two", more=YES, upper=YES, lower=YES, left=YES, right=NO, largest=None)),
    # three lower/upper lesions, the largest (4x6x6 = 144) upper right
    "three": ([(2, 4, 3, 6, 20, 23), (9, 13, 20, 26, 5, 11), (3, 5, 20, 23, 24, 27)],
              dict(presence=YES, count="three", more=YES, upper=YES, lower=YES, left=YES, right=YES,
                   largest=dict(left=NO, right=YES, upper=YES, lower=NO))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_family_on_hand_placed_lesions(name):
    boxes, want = CASES[name]
    ans = _answers(_hand_case(boxes))
    assert ans[("Is there a lesion anywhere in this scan?", "CLOSED")] == want["presence"]
    assert ans[("How many lesions are in this scan?", "OPEN")] == want["count"]
    assert ans[("Is there more than one lesion in this scan?", "CLOSED")] == want["more"]
    for half in ("upper", "lower"):
        assert ans[(f"Is there a lesion in the {half} half of the scan?", "CLOSED")] == want[half]
    for side in ("left", "right"):
        assert ans[(f"Is there a lesion on the {side} side of this scan?", "CLOSED")] == want[side]
    largest = {q: a for (q, _), a in ans.items() if q.startswith("Is the largest")}
    if want["largest"] is None:
        assert largest == {}
    else:
        assert largest == {
            "Is the largest lesion on the left side?": want["largest"]["left"],
            "Is the largest lesion on the right side?": want["largest"]["right"],
            "Is the largest lesion in the upper half of the scan?": want["largest"]["upper"],
            "Is the largest lesion in the lower half of the scan?": want["largest"]["lower"],
        }
    qas = make_volume_questions(_hand_case(boxes))
    assert all((q.answer_type == "OPEN") == (q.question.startswith("How many")) for q in qas)
    assert all(q.answer in (YES, NO) for q in qas if q.answer_type == "CLOSED")


def test_families_filter_and_bad_input():
    case = _hand_case(CASES["two"][0])
    assert {q.family for q in make_volume_questions(case, ["volume_half"])} == {"volume_half"}
    with pytest.raises(ValueError, match="unknown"):
        make_volume_questions(case, ["side"])
    flat = PhantomCase("flat", case.image[0], case.label[0], "CT", (0.8, 0.8), (), 40.0)
    with pytest.raises(ValueError, match="3-D"):
        make_volume_questions(flat)


def test_index_to_lps_is_the_written_dicom_and_nifti_geometry(tmp_path):
    case = _hand_case([])
    affine = lps_affine(case)
    files = write_dicom(case, tmp_path / "series")
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(index_to_lps(affine, (k, 0, 0)), ipp, atol=1e-6)
        # one column step moves PixelSpacing[1] along the row direction (+x, patient left)
        step = index_to_lps(affine, (k, 0, 1)) - index_to_lps(affine, (k, 0, 0))
        np.testing.assert_allclose(step, [float(ds.PixelSpacing[1]), 0, 0], atol=1e-9)
    assert index_to_lps(affine, (15, 0, 0))[2] == pytest.approx(7.5 * 2.5)  # last slice: superior
    nii = nib.load(write_nifti(case, tmp_path / "v.nii.gz"))
    for zyx in [(0, 0, 0), (15, 31, 0), (3, 7, 29)]:
        ras = nii.affine @ np.array([*zyx[::-1], 1.0])  # NIfTI arrays are stored (x, y, z)
        np.testing.assert_allclose(ras[:3] * [-1, -1, 1], index_to_lps(affine, zyx), atol=1e-5)
    many = index_to_lps(affine, np.array([[0, 0, 0], [15, 31, 31]]))
    assert many.shape == (2, 3)
    with pytest.raises(ValueError):
        index_to_lps(np.eye(3), (0, 0, 0))


def test_half_follows_the_patient_axis_not_the_array_axis():
    # slices stored superior -> inferior: S decreases with the array index, so array z = 1 is the upper end
    affine = np.diag([0.8, 0.8, -2.5, 1.0])
    affine[:3, 3] = (-12.4, -12.4, 18.75)
    label = np.zeros((16, 32, 32), np.uint8)
    label[1:3, 10:12, 24:26] = 2  # near array index 0, patient left
    (found,) = volume_findings(label, affine)
    assert (found.half, found.side) == ("upper", "left")
    assert found.lps[2] == pytest.approx(18.75 - 1.5 * 2.5)
    case = _hand_case([(1, 3, 10, 12, 24, 26)])  # same array position, writers' ascending geometry: lower
    assert [(f.half, f.side) for f in volume_findings(case.label, lps_affine(case))] == [("lower", "left")]


# sha256 of image then label bytes, computed before lesion_z existed (commit a30fd7a)
DEFAULT_HASHES = {
    ("test", 7, 3, 2, 64, None): "270ce895ecb8d22c65299e5c7f3ffb040d916c89c7f4664d41e73f8d2cde46dc",
    ("test", 7, 5, 3, 32, 16): "dff5833a0fc6f94f1874d87a5d0f60ff7eb2246b9103c8765f35813b3dfbde6f",
}


@pytest.mark.parametrize("key", sorted(DEFAULT_HASHES, key=str))
def test_default_generation_is_byte_identical(key):
    split, seed, index, ndim, size, depth = key
    case = generate_phantom(case_rng(seed, split, index), size=size, ndim=ndim, depth=depth)
    digest = hashlib.sha256(np.ascontiguousarray(case.image).tobytes() + np.ascontiguousarray(case.label).tobytes())
    assert digest.hexdigest() == DEFAULT_HASHES[key]


def test_peripheral_lesions_avoid_the_central_slices():
    counts = Counter()
    for i in range(16):
        case = generate_phantom(case_rng(3, "val", i), size=32, ndim=3, num_lesions=1 + i % 3, lesion_z="peripheral")
        depth = case.image.shape[0]
        assert depth == 32  # default depth with peripheral lesions
        band = central_slices(depth)
        assert len(band) >= 0.2 * depth and depth // 2 in band and (depth - 1) // 2 in band
        assert not (case.label[band.start:band.stop] >= 2).any()
        comps, n = connected_components(case.label >= 2, return_num=True, connectivity=1)
        assert n == len(case.lesions) >= 1  # apart: one component each
        counts[n] += 1
        mid = (case.image.shape[-1] - 1) / 2
        for k in range(1, n + 1):
            idx = np.argwhere(comps == k)
            assert idx[:, -1].min() > mid or idx[:, -1].max() < mid  # wholly on one side
            assert idx[:, 0].max() < band.start or idx[:, 0].min() >= band.stop  # wholly above or below
            faces = np.concatenate([idx + step for step in np.vstack([np.eye(3, dtype=int), -np.eye(3, dtype=int)])])
            assert not (case.label[tuple(faces.T)] == 0).any()  # inside the organ: no background beside a lesion
        # the middle slice alone shows no lesion, the volume does
        middle = PhantomCase("m", case.image[depth // 2], case.label[depth // 2], case.modality, (0.8, 0.8), (), 0.0)
        assert [q.answer for q in make_questions(middle, ["presence"])] == ["no"]
        assert _answers(case)[("Is there a lesion anywhere in this scan?", "CLOSED")] == "yes"
    assert set(counts) == {1, 2, 3}
    with pytest.raises(ValueError, match="volumes"):
        generate_phantom(case_rng(0, "val", 0), size=32, ndim=2, lesion_z="peripheral")
    with pytest.raises(ValueError, match="depth"):
        generate_phantom(case_rng(0, "val", 0), size=32, ndim=3, depth=8, lesion_z="peripheral")
    with pytest.raises(ValueError, match="lesion_z"):
        generate_phantom(case_rng(0, "val", 0), size=32, ndim=3, lesion_z="middle")


@pytest.mark.parametrize("ndim", [2, 3])
def test_balanced_question_set(ndim):
    if ndim == 2:
        cases = [generate_phantom(case_rng(1, "test", i), size=32) for i in range(24)]
        fn = make_questions
    else:
        cases = [generate_phantom(case_rng(1, "test", i), size=32, ndim=3, lesion_z="peripheral") for i in range(16)]
        fn = make_volume_questions
    chosen = balanced_question_set(cases, fn, limit=40, seed=0)
    closed = [q for _, q in chosen if q.answer_type == "CLOSED"]
    opened = [q for _, q in chosen if q.answer_type == "OPEN"]
    assert 0 < len(closed) <= 40 and 0 < len(opened) <= 20
    per_text = Counter((q.question, q.answer) for q in closed)
    for text in {q.question for q in closed}:
        assert per_text[(text, "yes")] == per_text[(text, "no")] > 0
    for k, q in chosen:
        assert q in fn(cases[k])  # each question belongs to the case it names
    assert chosen == balanced_question_set(cases, fn, limit=40, seed=0)
    assert chosen != balanced_question_set(cases, fn, limit=40, seed=1)
    assert len(balanced_question_set(cases, fn, limit=1000, seed=0, open_limit=0)) > len(closed)
    with pytest.raises(ValueError, match="yes/no"):
        balanced_question_set(cases, lambda c: [PhantomQA("Which?", "maybe", "CLOSED", "x")], 10, 0)


@pytest.mark.parametrize("modality, window", [("CT", (40.0, 400.0)), ("MR", "auto")])
def test_truth_survives_every_way_of_writing_and_loading(tmp_path, modality, window):
    # one bright lesion, slices 11-14 of 16 (superior), columns 22-25 (patient left); MR with "auto" (percentile)
    # windowing takes the whole-volume path (load, RAS orientation), CT with a fixed window the slice-by-slice one
    case = _hand_case([(11, 15, 12, 16, 22, 26)], modality=modality)
    paths = {"dicom_ascending": tmp_path / "asc", "dicom_descending": tmp_path / "desc",
             "nifti": tmp_path / "plain.nii.gz", "nifti_flip_z": tmp_path / "flip.nii.gz"}
    write_dicom(case, paths["dicom_ascending"])
    desc = write_dicom(case, paths["dicom_descending"], instance_order="descending")
    with pytest.raises(ValueError, match="instance_order"):
        write_dicom(case, tmp_path / "bad", instance_order="random")
    first = pydicom.dcmread(paths["dicom_descending"] / "slice_0000.dcm")
    assert int(first.InstanceNumber) == 1 and float(first.ImagePositionPatient[2]) == pytest.approx(7.5 * 2.5)
    assert [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in desc] == pytest.approx(
        [(k - 7.5) * 2.5 for k in range(16)])
    write_nifti(case, paths["nifti"])
    write_nifti(case, paths["nifti_flip_z"], flip_z=True)
    flipped = nib.load(paths["nifti_flip_z"])
    assert flipped.affine[2, 2] == pytest.approx(-2.5)
    assert np.array_equal(np.asarray(flipped.dataobj)[..., 0], case.image[-1].T.astype(np.int16))

    for k in (6, 16):
        to_pixels = MedicalImageToPixels(image_size=32, max_views=k, window=window, modality=modality)
        out = {name: to_pixels(str(p)) for name, p in paths.items()}
        ref = out["dicom_ascending"]
        assert ref["pixel_values"].shape[0] == k
        for name, got in out.items():
            assert torch.equal(got["pixel_values"], ref["pixel_values"]), name
            assert [v["index"] for v in got["views"]] == [v["index"] for v in ref["views"]]
    ans = _answers(case)
    assert ans[("Is there a lesion in the upper half of the scan?", "CLOSED")] == "yes"
    assert ans[("Is there a lesion in the lower half of the scan?", "CLOSED")] == "no"
    assert ans[("Is there a lesion on the left side of this scan?", "CLOSED")] == "yes"
    if modality == "MR":
        return  # percentiles of a noiseless volume clip the small lesion to the organ's grey
    # all 16 axial views, inferior -> superior: the lesion shows in the upper (last) ones, on the image right
    px = ref["pixel_values"].mean(1)  # (V, S, S)
    organ_level = px[8, 16, 16]  # a slice without lesion, organ centre
    shows = [v for v in range(16) if (px[v] > organ_level + 0.5).any()]
    assert shows == [11, 12, 13, 14]
    assert all(v > 7.5 for v in shows)
    cols = torch.nonzero(px[13] > organ_level + 0.5)[:, 1]
    assert cols.min() > 16  # patient left is shown on the image's right


def test_volume_datalist_is_dicom_series_with_whole_volume_questions(tmp_path):
    import json

    from monai_llava_med.data.phantom import VOLUME_FAMILIES, write_volume_vqa_datalist
    from monai_llava_med.transforms.io import detect_input_kind

    path = write_volume_vqa_datalist(tmp_path, 3, seed=5, size=32, depth=32)
    items = json.loads(path.read_text())
    assert len({i["id"] for i in items}) == len(items)
    for image in {i["image"] for i in items}:
        assert detect_input_kind(tmp_path / image) == "dicom_series" and len(list((tmp_path / image).iterdir())) == 32
    assert {i["family"] for i in items} <= set(VOLUME_FAMILIES) and {i["answer_type"] for i in items} == {"CLOSED", "OPEN"}
    assert all(i["answer"] in ("yes", "no") for i in items if i["answer_type"] == "CLOSED")
