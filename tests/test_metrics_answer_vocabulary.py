# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One answer vocabulary: every path that reads an answer type or a question id agrees with the others.

Paths: the data record rule, the VQA-RAD / SLAKE / PathVQA loaders (no answer type in the file), the metrics'
record parser, the MONAI ``VQAMetric`` and its output transform, the prediction-file evaluation, and the
inference engine's item ids. The expectations are written literally, not computed by the code under test.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from monai_llava_med import data as data_pkg
from monai_llava_med import metrics as metrics_pkg
from monai_llava_med.data import load_pathvqa, load_slake, load_vqa_rad
from monai_llava_med.data.records import ANSWER_TYPES, ID_KEYS, closed_answer_type, question_id_of
from monai_llava_med.metrics import VQAMetric, evaluate_prediction_files, infer_answer_type, parse_record
from monai_llava_med.metrics.vqa_metric import vqa_output_transform

# answer -> its type when a data set gives none (CLOSED only for a bare yes / no)
CASES = {
    "Yes!": "CLOSED",
    "No,": "CLOSED",
    "yes.": "CLOSED",
    "  NO  ": "CLOSED",
    "Yes, there is": "OPEN",
    "No, there is not": "OPEN",
    "normal": "OPEN",
    "no effusion": "OPEN",
    "2": "OPEN",
}


def test_one_definition_of_each():
    assert ANSWER_TYPES == ("OPEN", "CLOSED")
    assert ID_KEYS == ("question_id", "qid", "id")
    assert metrics_pkg.ANSWER_TYPES is data_pkg.ANSWER_TYPES
    assert metrics_pkg.YES_NO is data_pkg.YES_NO
    assert metrics_pkg.answer_to_text is data_pkg.answer_to_text
    assert infer_answer_type is closed_answer_type
    assert not hasattr(data_pkg, "answer_to_str")


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def _loaded_types(tmp_path):
    """Answer types assigned by each benchmark loader to the CASES answers (none gives an answer type)."""
    answers = list(CASES)
    rad = tmp_path / "rad"
    _png(rad / "VQA_RAD Image Folder" / "a.jpg")
    items = [{"qid": i, "image_name": "a.jpg", "question": "Q?", "answer": a, "phrase_type": "test_freeform"}
             for i, a in enumerate(answers)]  # fmt: skip
    (rad / "VQA_RAD Dataset Public.json").write_text(json.dumps(items))
    slake = tmp_path / "slake"
    _png(slake / "imgs" / "x" / "source.jpg")
    items = [{"qid": i, "img_name": "x/source.jpg", "question": "Q?", "answer": a, "q_lang": "en"}
             for i, a in enumerate(answers)]  # fmt: skip
    (slake / "test.json").write_text(json.dumps(items))
    path = tmp_path / "pathvqa"
    _png(path / "images" / "test" / "test_0001.jpg")
    (path / "qas" / "test").mkdir(parents=True)
    with open(path / "qas" / "test" / "test_qa.pkl", "wb") as f:
        pickle.dump([{"image": "test_0001", "question": "Q?", "answer": a} for a in answers], f)
    return {
        "vqa_rad": [r.answer_type for r in load_vqa_rad(rad, "test")],
        "slake": [r.answer_type for r in load_slake(slake, "test")],
        "pathvqa": [r.answer_type for r in load_pathvqa(path, "test")],
    }


def test_every_path_classifies_answers_the_same_way(tmp_path):
    expected = list(CASES.values())
    assert [closed_answer_type(a) for a in CASES] == expected
    for name, types in _loaded_types(tmp_path).items():
        assert types == expected, name
    parsed = [parse_record({"question_id": i, "ground_truth": a, "prediction": "yes"}).answer_type
              for i, a in enumerate(CASES)]  # fmt: skip
    assert parsed == expected
    metric = VQAMetric()
    scores = metric(["yes"] * len(CASES), list(CASES))
    assert [s["answer_type"] for s in scores] == expected
    gt = [{"question_id": f"q{i}", "answer": a} for i, a in enumerate(CASES)]
    preds = [{"question_id": f"q{i}", "prediction": "yes"} for i in range(len(CASES))]
    per_q = evaluate_prediction_files(preds, gt)["per_question"]
    assert [s["answer_type"] for s in per_q] == expected


def test_every_path_reads_ids_in_one_order():
    assert question_id_of({"id": "c", "qid": "b", "question_id": "a"}) == "a"
    assert question_id_of({"id": "c", "qid": "b"}) == "b"
    assert question_id_of({"id": "c", "qid": None}) == "c"
    assert question_id_of({"image": "x"}) is None
    # the metric's output transform used to skip qid
    entry = {"id": "c", "qid": "b", "answer": "yes", "ground_truth": "yes", "answer_type": "CLOSED"}
    _, labels = vqa_output_transform({"pred": [entry]}, "pred")
    assert labels[0]["question_id"] == "b"
    assert parse_record({"id": "c", "qid": "b", "ground_truth": "yes", "prediction": "yes"}).question_id == "b"
    gt = [{"qid": "b", "id": "c", "answer": "yes"}]
    per_q = evaluate_prediction_files([{"qid": "b", "id": "zzz", "prediction": "yes"}], gt)["per_question"]
    assert [s["question_id"] for s in per_q] == ["b"]


def test_engine_item_ids_follow_the_same_order():
    pytest.importorskip("monai")
    from monai_llava_med.engines.answers import item_id

    assert item_id({"id": "c", "qid": "b"}, 4) == "b"
    assert item_id({"id": "c"}, 4) == "c"
    assert item_id({}, 4) == "4"
