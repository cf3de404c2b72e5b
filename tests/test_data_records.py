# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""LLaVA-Med JSON, VQA-RAD / SLAKE / PathVQA layouts, the plain image loader and the lazy data set."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from monai_llava_med.conversation import IGNORE_INDEX, build_bpe_tokenizer, image_token_id_of
from monai_llava_med.data import (
    LlavaMedDataset,
    PILImageToPixels,
    load_llava_med_json,
    load_pathvqa,
    load_slake,
    load_vqa_rad,
    safe_load_pickle,
)
from monai_llava_med.errors import ImageReadError, RecordError
from monai_llava_med.networks import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer(["What is shown? A chest X-ray with no acute findings. yes no"] * 10, vocab_size=350)


def _png(path, w=40, h=20, value=200):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


GOOD = {
    "id": "32432162_F1",
    "image": "32432162_F1.jpg",
    "conversations": [
        {"from": "human", "value": "What is shown?\n<image>"},
        {"from": "gpt", "value": "A chest X-ray."},
    ],
}


def test_llava_json_loads_and_resolves(tmp_path):
    text_only = {"id": 7, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    f = _write(tmp_path / "instruct.json", [GOOD, text_only])
    recs = load_llava_med_json(f, tmp_path / "imgs")
    assert [r.id for r in recs] == ["32432162_F1", "7"]
    assert recs[0].images == (str((tmp_path / "imgs" / "32432162_F1.jpg").resolve()),)
    assert recs[1].images == ()
    assert [t.role for t in recs[0].turns] == ["user", "assistant"]


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({**GOOD, "conversations": []}, "non-empty list"),
        ({**GOOD, "conversations": [{"from": "gpt", "value": "x"}]}, "expected a user turn"),
        ({**GOOD, "conversations": [{"from": "human", "value": "<image>\nQ"}]}, "last turn must be an answer"),
        ({**GOOD, "conversations": [{"from": "human", "value": "Q"}, {"from": "bot", "value": "A"}]}, "unknown role"),
        ({**GOOD, "image": "../../etc/passwd"}, "outside the image root"),
        ({**GOOD, "image": "/etc/passwd"}, "relative"),
        ({**GOOD, "image": 5}, "non-empty string"),
        ({k: v for k, v in GOOD.items() if k != "image"}, "no 'image' field"),
    ],
)
def test_malformed_records_name_the_id(tmp_path, bad, msg):
    f = _write(tmp_path / "bad.json", [bad])
    with pytest.raises(RecordError, match=msg) as e:
        load_llava_med_json(f, tmp_path)
    assert e.value.path == "32432162_F1"


def test_malformed_file_and_missing_id(tmp_path):
    (tmp_path / "x.json").write_text("[{")
    with pytest.raises(RecordError, match="not valid JSON"):
        load_llava_med_json(tmp_path / "x.json")
    f = _write(tmp_path / "y.json", [GOOD, {"conversations": GOOD["conversations"]}])
    with pytest.raises(RecordError, match="record #1: missing or invalid 'id'"):
        load_llava_med_json(f)
    with pytest.raises(RecordError, match="image file not found"):
        load_llava_med_json(_write(tmp_path / "z.json", [GOOD]), check_images=True)


def test_vqa_rad_layout(tmp_path):
    root = tmp_path / "vqarad"
    items = [
        {"qid": 1, "image_name": "synpic1.jpg", "question": "Is there a mass?", "answer": "Yes",
         "answer_type": "CLOSED",
         "phrase_type": "freeform", "question_type": "PRES", "image_organ": "CHEST"},
        {"qid": 2, "image_name": "synpic1.jpg", "question": "How many nodules?", "answer": 2, "answer_type": "OPEN ",
         "phrase_type": "test_freeform", "question_type": "COUNT", "image_organ": "CHEST"},
        {"qid": 3, "image_name": "synpic2.jpg", "question": "Is it normal?", "answer": "no", "answer_type": "",
         "phrase_type": "test_para", "question_type": "ABN", "image_organ": "HEAD"},
    ]
    _write(root / "VQA_RAD Dataset Public.json", items)
    test = load_vqa_rad(root, "test")
    got = [(r.qid, r.answer, r.answer_type, r.split) for r in test]
    assert got == [("2", "2", "OPEN", "test"), ("3", "no", "CLOSED", "test")]
    assert test[0].image.endswith(os.path.join("VQA_RAD Image Folder", "synpic1.jpg"))
    assert test[0].meta["question_type"] == "COUNT"
    assert [r.qid for r in load_vqa_rad(root, "train")] == ["1"]
    broken = {"qid": 9, "image_name": "a.jpg", "question": "Q", "answer": None}
    _write(root / "VQA_RAD Dataset Public.json", items + [broken])
    with pytest.raises(RecordError, match="9: missing or invalid answer"):
        load_vqa_rad(root, "all")


def test_slake_layout_english_filter(tmp_path):
    root = tmp_path / "slake"
    base = {"img_id": 1, "img_name": "xmlab0/source.jpg", "location": "Lung", "modality": "CT", "answer_type": "CLOSED",
            "base_type": "vqa", "content_type": "Abnormality", "triple": ["vhead", "_", "_"]}
    _write(root / "validation.json", [
        {**base, "qid": 10, "question": "Is the lung healthy?", "answer": "No", "q_lang": "en"},
        {**base, "qid": 11, "question": "肺是否健康?", "answer": "否", "q_lang": "zh"},
        {**base, "qid": 12, "question": "Which organ?", "answer": "Lung", "q_lang": "en", "answer_type": "OPEN"},
    ])
    recs = load_slake(root, "val")
    assert [(r.qid, r.answer, r.answer_type, r.split, r.dataset) for r in recs] == [
        ("10", "No", "CLOSED", "val", "slake"), ("12", "Lung", "OPEN", "val", "slake")]
    assert recs[0].image.endswith(os.path.join("imgs", "xmlab0", "source.jpg"))
    assert len(load_slake(root, "validation", language=None)) == 3
    with pytest.raises(RecordError, match="cannot read"):
        load_slake(root, "test")


def test_pathvqa_pickles_restricted(tmp_path):
    root = tmp_path / "pvqa"
    (root / "qas" / "test").mkdir(parents=True)
    data = [{"image": "test_0001", "question": "Is this tissue?", "answer": "yes"},
            {"image": "test_0002", "question": "What stain?", "answer": "H&E"}]
    (root / "qas" / "test" / "test_qa.pkl").write_bytes(pickle.dumps(data))
    recs = load_pathvqa(root, "test")
    assert [(r.answer, r.answer_type) for r in recs] == [("yes", "CLOSED"), ("H&E", "OPEN")]
    assert recs[0].image.endswith(os.path.join("images", "test", "test_0001.jpg"))
    # a pickle that would run code is refused, never executed
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(RecordError, match="refusing to load os.system"):
        safe_load_pickle(evil)
    with pytest.raises(RecordError, match="no PathVQA data"):
        load_pathvqa(root, "train")


def test_pil_loader_pads_with_mean_and_normalises(tmp_path):
    _png(tmp_path / "a.png", w=40, h=20, value=255)
    out = PILImageToPixels(image_size=32)(tmp_path / "a.png")
    pv = out["pixel_values"]
    assert pv.shape == (1, 3, 32, 32) and out["views"] == 1
    # top rows are padding: the reference's canvas colour int(mean * 255), i.e. (122, 116, 104), normalised
    pad = (torch.floor(torch.tensor(CLIP_MEAN) * 255) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(pv[0, :, 0, :], pad.view(3, 1).expand(3, 32), atol=1e-5)
    # the centre is white: (1 - mean) / std
    centre = pv[0, :, 16, 16]
    expect = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(centre, expect, atol=1e-4)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="cannot read the image"):
        PILImageToPixels(32)(tmp_path / "bad.png")


def test_dataset_lazy_items_and_generate_mode(tmp_path, tok):
    _png(tmp_path / "32432162_F1.jpg")
    recs = load_llava_med_json(_write(tmp_path / "d.json", [GOOD]), tmp_path)
    calls = []

    def loader(path):  # the MedicalImageToPixels contract: (V, 3, S, S), here 2 views
        calls.append(path)
        return {"pixel_values": torch.zeros(2, 3, 8, 8), "views": 2, "modality": "CT", "source": path}

    ds = LlavaMedDataset(recs, tok, num_image_tokens=4, image_loader=loader)
    assert calls == []  # lazy
    item = ds[0]
    assert item["pixel_values"].shape == (2, 3, 8, 8) and item["num_images"] == 2
    assert int((item["input_ids"] == image_token_id_of(tok)).sum()) == 8
    assert tok.decode(item["input_ids"][item["labels"] != IGNORE_INDEX]) == " A chest X-ray. </s>"
    gen = LlavaMedDataset(recs, tok, num_image_tokens=4, image_loader=loader, mode="generate")[0]
    assert "labels" not in gen
    assert tok.decode(gen["input_ids"], skip_special_tokens=True).endswith("\nWhat is shown? [/INST]")
    # lengths are estimated without loading images, assuming one view per file (here 2 views: 4 tokens more)
    assert ds.lengths == [len(item["input_ids"]) - 4]
    # default PIL loader with a missing file: the error names the record and the file
    (tmp_path / "32432162_F1.jpg").unlink()
    with pytest.raises(ImageReadError, match="record 32432162_F1"):
        LlavaMedDataset(recs, tok, num_image_tokens=4, image_size=16)[0]
