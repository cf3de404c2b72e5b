# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Synthetic phantoms: determinism, answers checked against the pixels, DICOM/NIfTI files, CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from skimage.measure import label as connected_components

from monai_llava_med.conversation import build_bpe_tokenizer
from monai_llava_med.data import load_llava_med_json
from monai_llava_med.data.phantom import (
    PhantomVQADataset,
    case_rng,
    generate_phantom,
    make_questions,
    phantom_to_pixels,
    write_dicom,
    write_nifti,
)
from monai_llava_med.data.phantom.__main__ import main as phantom_main
from monai_llava_med.networks import CLIP_MEAN, CLIP_STD

WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3}


def _case(i, ndim=2, **kw):
    size = 48 if ndim == 3 else 64
    return generate_phantom(case_rng(5, "train", i), size=size, ndim=ndim, depth=12, case_id=f"c{i}", **kw)


def test_determinism_and_independent_streams():
    a, b = _case(3), _case(3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.lesions == b.lesions
    assert make_questions(a) == make_questions(b)
    c = generate_phantom(case_rng(5, "test", 3), size=64)
    assert not np.array_equal(a.image, c.image)
    ds1, ds2 = PhantomVQADataset(4, seed=1), PhantomVQADataset(4, seed=1)
    assert all(torch.equal(ds1[i]["pixel_values"], ds2[i]["pixel_values"]) and ds1[i]["question"] == ds2[i]["question"]
               for i in range(4))
    assert not torch.equal(ds1[0]["pixel_values"], PhantomVQADataset(4, seed=2)[0]["pixel_values"])


def _answers(case):
    return {q.question: q.answer for q in make_questions(case)}


@pytest.mark.parametrize("ndim", [2, 3])
def test_answers_match_the_pixels(ndim):
    seen_counts = set()
    for i in range(24 if ndim == 2 else 6):
        case = _case(i, ndim=ndim, num_lesions=i % 4)
        # independent measurement: connected components of the lesion mask
        comps, n = connected_components(case.label >= 2, return_num=True, connectivity=1)
        assert n == len(case.lesions)
        seen_counts.add(n)
        ans = _answers(case)
        what = "scan" if ndim == 3 else "image"
        assert WORDS[ans["How many lesions are there?"]] == n
        assert ans[f"Is there a lesion in this {what}?"] == ("yes" if n else "no")
        mid = (case.image.shape[-1] - 1) / 2
        organ = case.image[case.label == 1]
        sides, kinds = set(), set()
        for k in range(1, n + 1):
            m = comps == k
            assert not (case.label[m] == 0).any()
            cx = np.argwhere(m)[:, -1].mean()
            assert abs(cx - mid) > 1  # never straddles the midline
            sides.add("left" if cx > mid else "right")  # patient left = image right
            kinds.add("bright" if case.image[m].mean() > organ.mean() else "dark")
        assert {les.side for les in case.lesions} == sides
        for side in ("left", "right"):
            assert ans[f"Is there a lesion on the {side} side?"] == ("yes" if side in sides else "no")
        for kind in ("bright", "dark"):
            assert ans[f"Is there a {kind} lesion?"] == ("yes" if kind in kinds else "no")
        loc = ans["On which side are the lesions?"]
        assert loc == ("none" if n == 0 else "both sides" if len(sides) == 2 else sides.pop())
        modality = "MRI" if case.modality == "MR" else "CT"
        assert ans[f"What imaging modality is this {what}?"] == modality
        # lesions are in the organ and intensities are CT-like / MR-like
        if case.modality == "CT":
            assert case.image[case.label == 0].mean() < -900 and -100 < np.median(organ) < 200
        else:
            assert case.image[case.label == 0].mean() < 60 and 300 < np.median(organ) < 800
    assert seen_counts == {0, 1, 2, 3}


def test_dicom_files_are_real_and_exact(tmp_path):
    case2d = _case(1, num_lesions=2, modality="CT")
    f = write_dicom(case2d, tmp_path / "a.dcm", seed=9)[0]
    ds = pydicom.dcmread(f)
    assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    hu = pydicom.pixels.apply_rescale(ds.pixel_array, ds)
    assert np.array_equal(hu, case2d.image)
    assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.8]
    assert str(ds.PatientName) == "PHANTOM^SYNTHETIC" and ds.PatientBirthDate == ""  # Type 2, empty
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert pydicom.uid.UID(uid).is_valid
    assert f.read_bytes() == write_dicom(case2d, tmp_path / "b.dcm", seed=9)[0].read_bytes()  # deterministic
    vol = _case(2, ndim=3, modality="MR")
    files = write_dicom(vol, tmp_path / "series", seed=9)
    slices = [pydicom.dcmread(p) for p in files]
    assert len(slices) == vol.image.shape[0] and len({s.SOPInstanceUID for s in slices}) == len(slices)
    assert len({s.SeriesInstanceUID for s in slices}) == 1
    z = [float(s.ImagePositionPatient[2]) for s in slices]
    assert np.allclose(np.diff(z), vol.spacing[0])
    stack = np.stack([pydicom.pixels.apply_rescale(s.pixel_array, s) for s in slices])
    assert np.array_equal(stack, vol.image)


def test_nifti_matches_dicom_geometry(tmp_path):
    from monai.transforms import LoadImage

    vol = _case(4, ndim=3, modality="CT", num_lesions=1)
    write_dicom(vol, tmp_path / "series")
    write_nifti(vol, tmp_path / "v.nii.gz", tmp_path / "v_seg.nii.gz")
    nii = nib.load(tmp_path / "v.nii.gz")
    assert np.array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), vol.image)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "v_seg.nii.gz").dataobj).transpose(2, 1, 0), vol.label)
    a = LoadImage(reader="PydicomReader", image_only=True)(str(tmp_path / "series"))
    b = LoadImage(reader="NibabelReader", image_only=True)(str(tmp_path / "v.nii.gz"))
    assert a.shape == b.shape
    assert np.allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-4)  # both RAS: same spacing, directions, origin
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_in_memory_pixels_and_tokens():
    tok = build_bpe_tokenizer(["Is there a lesion? yes no"], vocab_size=300, min_frequency=1)
    ds = PhantomVQADataset(6, seed=0, split="val", tokenizer=tok, num_image_tokens=4,
                           families=("presence", "side", "brightness", "count"))
    item = ds[0]
    case, qa = ds.sample(0)
    assert item["family"] in ("presence", "side", "brightness", "count") and item["answer"] == qa.answer
    assert item["pixel_values"].shape == (1, 3, 64, 64)
    # background of a CT phantom is below the window: 0 after windowing, (0 - mean) / std after CLIP
    ct = next(ds.sample(i)[0] for i in range(6) if ds.sample(i)[0].modality == "CT")
    px = phantom_to_pixels(ct)
    expect = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    assert torch.allclose(px[0, :, 0, 0], expect, atol=1e-5)
    assert phantom_to_pixels(ct, 32).shape == (1, 3, 32, 32)
    sup = item["labels"] != -100
    assert tok.decode(item["input_ids"][sup]) == f" {qa.answer} </s>"


def test_cli_writes_llava_and_vqa_files(tmp_path):
    argv = ["--out", str(tmp_path), "--n", "6", "--seed", "1", "--size", "32", "--fraction-3d", "0.5"]
    assert phantom_main(argv) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {s: v["cases"] for s, v in manifest["splits"].items()} == {"train": 4, "val": 1, "test": 1}
    recs = load_llava_med_json(tmp_path / "llava_med_train.json", tmp_path, check_images=True)
    assert len(recs) == 4 and all(len(r.turns) == 2 * 10 for r in recs)  # 10 questions per case
    questions = [json.loads(x) for x in (tmp_path / "vqa_test_questions.jsonl").read_text().splitlines()]
    answers = json.loads((tmp_path / "vqa_test_answers.json").read_text())
    assert [q["question_id"] for q in questions] == [a["id"] for a in answers]
    assert {a["answer_type"] for a in answers} == {"OPEN", "CLOSED"}
    # the 2-D cases on disk are the in-memory cases of the same seed/split
    for r in recs:
        i = int(r.id.rsplit("_", 1)[1])
        nii = tmp_path / "images" / "train" / f"{r.id}.nii.gz"
        data = np.asarray(nib.load(nii).dataobj).transpose(2, 1, 0)
        if data.shape[0] == 1:
            case, _ = PhantomVQADataset(5, seed=1, size=32).sample(i)
            assert np.array_equal(data[0], case.image)
