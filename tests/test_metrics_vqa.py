# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""evaluate_vqa summaries checked by hand, reports, prediction files and their error paths, VQAMetric."""

from __future__ import annotations

import json

import pytest
from conftest import spawn_ranks

from monai_llava_med.errors import RecordError
from monai_llava_med.metrics import (
    SUMMARY_KEYS,
    VQAMetric,
    evaluate_prediction_files,
    evaluate_vqa,
    format_markdown,
    vqa_output_transform,
    write_report,
)

# Hand-scored set. vqa_rad: 3 closed (2 right; "normal" is not "no"), 3 open (one failed inference).
# slake: 3 closed (one with an inferred type), 1 open.
RECORDS = [
    {"question_id": "r1", "dataset": "vqa_rad", "answer_type": "CLOSED", "ground_truth": "yes",
     "prediction": "Yes, there is a lesion."},
    {"question_id": "r2", "dataset": "vqa_rad", "answer_type": "CLOSED", "ground_truth": "no",
     "prediction": "The lungs are normal."},
    {"question_id": "r3", "dataset": "vqa_rad", "answer_type": "closed", "ground_truth": "No",
     "prediction": "No."},
    {"question_id": "r4", "dataset": "vqa_rad", "answer_type": "OPEN", "ground_truth": 2, "prediction": "two"},
    {"question_id": "r5", "dataset": "vqa_rad", "answer_type": "OPEN", "ground_truth": "left lung",
     "prediction": "The lesion is in the left lung"},
    {"question_id": "r6", "dataset": "vqa_rad", "answer_type": "OPEN", "ground_truth": "CT",
     "error": "cannot decode image"},
    {"question_id": "s1", "dataset": "slake", "answer_type": "CLOSED", "ground_truth": "Left",
     "prediction": "The left lung"},
    {"question_id": "s2", "dataset": "slake", "answer_type": "CLOSED", "ground_truth": "right",
     "prediction": "left, not right"},
    {"question_id": "s3", "dataset": "slake", "answer_type": "OPEN", "ground_truth": "3.5 cm", "prediction": "3.5cm"},
    {"question_id": "s4", "dataset": "slake", "ground_truth": "yes", "prediction": "nodule"},
]  # fmt: skip

F1_R5 = 2 * 1.0 * 0.4 / 1.4  # recall 2/2, precision 2/5


def test_hand_checked_summaries():
    res = evaluate_vqa(RECORDS)
    rad, slake, overall = res["per_dataset"]["vqa_rad"], res["per_dataset"]["slake"], res["overall"]
    assert list(res["per_dataset"]) == ["slake", "vqa_rad"]
    assert set(overall) == set(SUMMARY_KEYS)
    assert rad["count"] == 6 and rad["closed_count"] == 3 and rad["open_count"] == 3
    assert rad["closed_correct"] == 2 and rad["closed_acc"] == pytest.approx(2 / 3)
    assert rad["closed_no_answer"] == 1
    assert rad["open_recall"] == pytest.approx(2 / 3)
    assert rad["open_precision"] == pytest.approx(1.4 / 3)
    assert rad["open_f1"] == pytest.approx((1 + F1_R5) / 3)
    assert rad["open_exact_match"] == pytest.approx(1 / 3)
    assert rad["exact_match"] == pytest.approx(2 / 6)  # r3 and r4
    assert rad["failed"] == 1 and rad["missing"] == 0

    assert slake["closed_count"] == 3 and slake["closed_correct"] == 1  # s1 only; s4 inferred CLOSED
    assert slake["closed_acc"] == pytest.approx(1 / 3) and slake["closed_no_answer"] == 1
    assert (slake["open_count"], slake["open_recall"], slake["open_f1"], slake["open_exact_match"]) == (1, 1, 1, 1)
    assert slake["exact_match"] == pytest.approx(1 / 4)

    assert overall["count"] == 10 and overall["closed_count"] == 6 and overall["closed_correct"] == 3
    assert overall["closed_acc"] == 0.5 and overall["closed_no_answer"] == 2
    assert overall["open_recall"] == pytest.approx(0.75)
    assert overall["open_precision"] == pytest.approx(0.6)
    assert overall["open_f1"] == pytest.approx((2 + F1_R5) / 4)
    assert overall["open_exact_match"] == 0.5 and overall["exact_match"] == pytest.approx(0.3)
    assert overall["failed"] == 1

    by_id = {q["question_id"]: q for q in res["per_question"]}
    assert len(by_id) == 10
    assert by_id["r2"]["closed_pred"] is None and by_id["r2"]["correct"] is False
    assert by_id["r6"]["status"] == "failed" and by_id["r6"]["prediction"] == ""
    assert by_id["s4"]["answer_type"] == "CLOSED"
    assert by_id["r4"]["ground_truth"] == "2" and by_id["r4"]["pred_normalized"] == "2"


def test_closed_denominator_keeps_every_miss():
    recs = [{"question_id": i, "ground_truth": "no", "prediction": p}
            for i, p in enumerate(["No", "normal", "I don't know", "", "nothing"])]  # fmt: skip
    overall = evaluate_vqa(recs)["overall"]
    assert overall["closed_count"] == 5 and overall["closed_correct"] == 1
    assert overall["closed_acc"] == 0.2 and overall["closed_no_answer"] == 4
    assert overall["open_count"] == 0 and overall["open_recall"] is None


@pytest.mark.parametrize(
    "record, match",
    [
        ({"ground_truth": "yes", "prediction": "yes"}, "missing question_id"),
        ({"question_id": "q", "prediction": "yes"}, "missing ground truth"),
        ({"question_id": "q", "ground_truth": "yes"}, "missing prediction"),
        ({"question_id": "q", "ground_truth": "yes", "prediction": ["yes"]}, "must be a string"),
        ({"question_id": "q", "ground_truth": "yes", "prediction": "y", "answer_type": "YN"}, "OPEN or CLOSED"),
        ({"question_id": "q", "ground_truth": {"a": 1}, "prediction": "y"}, "unusable ground truth"),
        ({"question_id": "q", "ground_truth": "?", "prediction": "y"}, "empty after normalisation"),
        ({"question_id": "q", "ground_truth": "yes", "prediction": "y", "status": "skipped"}, "status"),
    ],
)
def test_malformed_records_name_the_record(record, match):
    with pytest.raises(RecordError, match=match) as err:
        evaluate_vqa([record])
    assert err.value.path == ("record #0" if "question_id" not in record else "q")


def test_not_a_mapping_and_duplicates():
    with pytest.raises(RecordError, match="expected an object"):
        evaluate_vqa([["q", "yes"]])
    with pytest.raises(RecordError, match="twice") as err:
        evaluate_vqa([RECORDS[0], RECORDS[0]])
    assert err.value.path == "r1"
    # the same id in two data sets is two questions
    other = dict(RECORDS[0], dataset="slake")
    assert evaluate_vqa([RECORDS[0], other])["overall"]["count"] == 2


def test_report_files(tmp_path):
    res = evaluate_vqa(RECORDS)
    paths = write_report(res, tmp_path / "out", name="eval")
    assert paths == {"json": tmp_path / "out" / "eval.json", "markdown": tmp_path / "out" / "eval.md"}
    assert json.loads(paths["json"].read_text()) == res
    md = paths["markdown"].read_text()
    assert md == format_markdown(res)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| data set"))
    assert "closed acc" in header and "open recall" in header and "open F1" in header
    rad = next(line for line in lines if line.startswith("| vqa_rad |")).split("|")[2:-1]
    assert [c.strip() for c in rad] == ["6", "3", "66.67", "1", "3", "66.67", f"{100 * (1 + F1_R5) / 3:.2f}",
                                        "33.33", "33.33", "1", "0"]  # fmt: skip
    overall = next(line for line in lines if line.startswith("| **overall** |"))
    assert "| 50.00 |" in overall and "| 75.00 |" in overall
    only_closed = format_markdown(evaluate_vqa([{"question_id": 1, "ground_truth": "yes", "prediction": "yes"}]))
    assert "| 100.00 | 0 | 0 | \u2013 | \u2013 | \u2013 |" in only_closed


# -- prediction files ---------------------------------------------------------------------------------------


def _write_files(tmp_path):
    # ground truth in the LLaVA-Med eval form (answer as the gpt turn), one VQA-RAD-style numeric answer
    gt = [
        {"id": "p1", "answer_type": "CLOSED",
         "conversations": [{"from": "human", "value": "<image>\nIs there a lesion?"}, {"from": "gpt", "value": "No"}]},
        {"id": "p2", "answer_type": "OPEN",
         "conversations": [{"from": "human", "value": "How many?"}, {"from": "gpt", "value": "two"}]},
        {"qid": 7, "answer": 2, "answer_type": "OPEN"},
        {"qid": 8, "answer": "yes"},
    ]  # fmt: skip
    preds = [
        {"question_id": "p1", "prompt": "Is there a lesion?", "text": "normal", "model_id": "demo"},
        {"question_id": "p2", "text": "2"},
        {"question_id": 7, "answer": "Two."},
        {"question_id": "8", "error": "slide unreadable"},
    ]
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.jsonl"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return gt_path, pred_path


def test_evaluate_prediction_files(tmp_path):
    gt_path, pred_path = _write_files(tmp_path)
    res = evaluate_prediction_files(pred_path, gt_path, default_dataset="phantom", report_dir=tmp_path / "rep")
    o = res["overall"]
    assert (o["count"], o["closed_count"], o["closed_correct"], o["closed_no_answer"]) == (4, 2, 0, 1)
    assert (o["open_count"], o["open_recall"], o["open_exact_match"], o["failed"]) == (2, 1.0, 1.0, 1)
    assert list(res["per_dataset"]) == ["phantom"]
    assert [q["question_id"] for q in res["per_question"]] == ["p1", "p2", "7", "8"]
    assert json.loads((tmp_path / "rep" / "vqa_metrics.json").read_text()) == res
    assert (tmp_path / "rep" / "vqa_metrics.md").exists()
    # the same through in-memory lists and a wrapped JSON object
    wrapped = tmp_path / "pred.json"
    items = [json.loads(line) for line in pred_path.read_text().splitlines()]
    wrapped.write_text(json.dumps({"model": "demo", "results": items}))
    assert evaluate_prediction_files(wrapped, json.loads(gt_path.read_text()), "phantom") == res


def test_missing_predictions_error_or_count_as_wrong(tmp_path):
    gt_path, _ = _write_files(tmp_path)
    preds = [{"question_id": "p1", "text": "No"}, {"question_id": "p2", "text": "2"}]
    with pytest.raises(RecordError, match="2 ground-truth question\\(s\\) have no prediction: 7, 8"):
        evaluate_prediction_files(preds, gt_path)
    res = evaluate_prediction_files(preds, gt_path, missing="wrong")
    o = res["overall"]
    assert o["count"] == 4 and o["missing"] == 2
    assert o["closed_acc"] == 0.5 and o["open_recall"] == 0.5  # p1 right, 8 missing; p2 right, 7 missing


@pytest.mark.parametrize(
    "preds, match, path",
    [
        ([{"question_id": "zz", "text": "no"}], "not in the ground truth", "zz"),
        ([{"question_id": "p1", "text": "no"}, {"question_id": "p1", "text": "yes"}], "two predictions", "p1"),
        ([{"question_id": "p1"}], "no answer", "p1"),
        ([{"question_id": "p1", "text": {"a": 1}}], "not text", "p1"),
        ([{"text": "no"}], "item 0 has no usable", "predictions"),
        (["no"], "not an object", "predictions"),
        ([{"question_id": "p1", "text": "no", "dataset": "slake"}], "not in the ground truth in data set", "p1"),
    ],
)
def test_prediction_errors_name_the_item(tmp_path, preds, match, path):
    gt_path, _ = _write_files(tmp_path)
    with pytest.raises(RecordError, match=match) as err:
        evaluate_prediction_files(preds, gt_path, missing="wrong")
    assert err.value.path == path


def test_ground_truth_and_file_errors(tmp_path):
    preds = [{"question_id": "a", "text": "yes"}]
    with pytest.raises(RecordError, match="no gpt/assistant turn") as err:
        evaluate_prediction_files(preds, [{"id": "a", "conversations": [{"from": "human", "value": "q"}]}])
    assert err.value.path == "a"
    with pytest.raises(RecordError, match="twice"):
        evaluate_prediction_files(preds, [{"id": "a", "answer": "yes"}, {"id": "a", "answer": "no"}])
    two_sets = [{"id": "a", "answer": "yes", "dataset": "x"}, {"id": "a", "answer": "no", "dataset": "y"}]
    with pytest.raises(RecordError, match="ambiguous"):
        evaluate_prediction_files(preds, two_sets, missing="wrong")
    res = evaluate_prediction_files([{"question_id": "a", "text": "no", "dataset": "y"}], two_sets, missing="wrong")
    assert res["per_dataset"]["y"]["closed_correct"] == 1 and res["per_dataset"]["x"]["missing"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": "a", "text": "yes"}\n{oops\n')
    with pytest.raises(RecordError, match="line 2 is not valid JSON") as err:
        evaluate_prediction_files(bad, [{"id": "a", "answer": "yes"}])
    assert err.value.path == str(bad)
    with pytest.raises(RecordError, match="cannot read"):
        evaluate_prediction_files(tmp_path / "nope.json", [{"id": "a", "answer": "yes"}])
    obj = tmp_path / "obj.json"
    obj.write_text('{"model": "x"}')
    with pytest.raises(RecordError, match="expected a JSON list"):
        evaluate_prediction_files(obj, [{"id": "a", "answer": "yes"}])
    with pytest.raises(ValueError, match="missing must be"):
        evaluate_prediction_files(preds, [{"id": "a", "answer": "yes"}], missing="skip")


def test_ground_truth_from_vqa_records():
    from monai_llava_med.data.records import VQARecord

    gt = [VQARecord("1", "How many?", "2", "OPEN", "/x.png", "test", "vqa_rad"),
          VQARecord("2", "Is it?", "no", "CLOSED", "/x.png", "test", "vqa_rad")]  # fmt: skip
    res = evaluate_prediction_files([{"question_id": 1, "text": "two"}, {"question_id": 2, "text": "normal"}], gt)
    assert res["per_dataset"]["vqa_rad"]["open_exact_match"] == 1.0
    assert res["per_dataset"]["vqa_rad"]["closed_acc"] == 0.0


# -- VQAMetric ----------------------------------------------------------------------------------------------


def test_vqa_metric_accumulates_like_evaluate_vqa(tmp_path):
    metric = VQAMetric(report_dir=tmp_path)
    labels = [{k: v for k, v in r.items() if k not in ("prediction", "error")} for r in RECORDS]
    preds = [r.get("prediction") for r in RECORDS]  # r6 has none: a failed inference
    first = metric(preds[:4], labels[:4])
    assert [s["question_id"] for s in first] == ["r1", "r2", "r3", "r4"] and first[1]["correct"] is False
    metric(preds[4:], labels[4:])
    assert len(metric) == 10
    overall = metric.aggregate()
    expected = evaluate_vqa(RECORDS)
    assert overall == expected["overall"] and metric.results == expected
    assert json.loads((tmp_path / "vqa_metrics.json").read_text()) == expected
    metric.reset()
    assert len(metric) == 0 and metric.results is None
    with pytest.raises(RecordError, match="no question"):
        metric.aggregate()


def test_vqa_metric_plain_answers_keywords_and_summary_key():
    metric = VQAMetric(summary_key="closed_acc", default_dataset="phantom")
    metric(["Yes.", "normal", "two"], ["yes", "no", 2])  # types inferred: CLOSED, CLOSED, OPEN
    metric("left", "left", answer_type=["CLOSED"], question_id=["q9"], dataset="slake")
    assert metric.aggregate() == pytest.approx(2 / 3)
    res = metric.results
    assert res["per_dataset"]["phantom"]["open_exact_match"] == 1.0
    assert res["per_dataset"]["slake"]["closed_correct"] == 1
    assert [q["question_id"] for q in res["per_question"]] == ["rank0-0", "rank0-1", "rank0-2", "q9"]
    with pytest.raises(ValueError, match="summary_key"):
        VQAMetric(summary_key="accuracy")
    with pytest.raises(ValueError, match="y_pred has 2 items but y has 1"):
        metric(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="answer_type has 1 items"):
        metric(["yes", "no"], ["yes", "no"], answer_type=["CLOSED"])


def test_vqa_metric_duplicates():
    metric = VQAMetric()
    metric(["yes", "no"], ["yes", "yes"], question_id=["a", "a"])  # padded repeat: the first one is kept
    assert len(metric) == 1 and metric.aggregate()["closed_acc"] == 1.0
    strict = VQAMetric(drop_duplicates=False)
    strict(["yes", "no"], ["yes", "yes"], question_id=["a", "a"])
    with pytest.raises(RecordError, match="twice"):
        strict.aggregate()


def _gather_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metric = VQAMetric(report_dir=out_dir)
        # rank 0 holds r1..r5, rank 1 holds r6..s4 plus a padded repeat of r1 (as DistributedSampler pads)
        mine = RECORDS[:5] if rank == 0 else RECORDS[5:] + RECORDS[:1]
        labels = [{k: v for k, v in r.items() if k not in ("prediction", "error")} for r in mine]
        metric([r.get("prediction") for r in mine], labels)
        overall = metric.aggregate()
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"overall": overall, "len": len(metric)}, f)
    finally:
        dist.destroy_process_group()


def test_vqa_metric_gathers_across_ranks(tmp_path):
    spawn_ranks(_gather_worker, tmp_path)
    expected = evaluate_vqa(RECORDS)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"overall": expected["overall"], "len": 10}
    report = json.loads((tmp_path / "vqa_metrics.json").read_text())  # written once, by rank 0
    assert report["overall"] == expected["overall"]
    assert sorted(q["question_id"] for q in report["per_question"]) == sorted(r["question_id"] for r in RECORDS)


def test_evaluate_answers_with_embedded_ground_truth(tmp_path):
    # the bundle's answers.json: "id", "answer" | "error", "ground_truth", "answer_type"
    answers = [{"id": r["question_id"], "answer": r.get("prediction"), "error": r.get("error"),
                "ground_truth": r["ground_truth"], "answer_type": r.get("answer_type"), "dataset": r["dataset"]}
               for r in RECORDS]  # fmt: skip
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(answers))
    assert evaluate_prediction_files(path, None) == evaluate_vqa(RECORDS)
    with pytest.raises(RecordError, match="carries no 'ground_truth'") as err:
        evaluate_prediction_files([{"id": "x", "answer": "yes"}], None)
    assert err.value.path == "x"


def test_vqa_metric_in_a_monai_evaluator(tmp_path):
    """VQAMetric inside IgniteMetricHandler on a SupervisedEvaluator: a scalar key metric and the full summary."""
    pytest.importorskip("ignite")
    import torch
    from monai.engines import SupervisedEvaluator
    from monai.handlers import IgniteMetricHandler

    def prepare_batch(batch, device=None, non_blocking=False, **kwargs):
        return batch, None

    def inferer(inputs, network, *args, **kwargs):  # answer entries, like LlavaMedInferer's
        out = []
        for r in inputs:
            entry = {"id": r["question_id"], "ground_truth": r["ground_truth"], "dataset": r["dataset"],
                     "answer_type": r.get("answer_type")}  # fmt: skip
            entry.update({"error": r["error"]} if "error" in r else {"answer": r["prediction"]})
            out.append(entry)
        return out

    loader = torch.utils.data.DataLoader(RECORDS, batch_size=3, collate_fn=list)
    key = IgniteMetricHandler(VQAMetric(summary_key="closed_acc"), output_transform=vqa_output_transform,
                              save_details=False)  # fmt: skip
    full = IgniteMetricHandler(VQAMetric(report_dir=tmp_path), output_transform=vqa_output_transform)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=torch.nn.Identity(),
        inferer=inferer,
        prepare_batch=prepare_batch,
        key_val_metric={"vqa_closed_acc": key},
        additional_metrics={"vqa": full},
        decollate=False,
    )
    evaluator.run()
    expected = evaluate_vqa(RECORDS)
    metrics = evaluator.state.metrics
    assert metrics["vqa_closed_acc"] == 0.5 and evaluator.state.best_metric == 0.5
    assert metrics["vqa"] == expected["overall"] and metrics["open_recall"] == pytest.approx(0.75)
    assert len(evaluator.state.metric_details["vqa"]) == 10
    assert json.loads((tmp_path / "vqa_metrics.json").read_text()) == expected


def test_vqa_output_transform():
    out = {"pred": [{"id": 1, "answer": "No", "ground_truth": "no"}, {"id": 2, "error": "x", "ground_truth": "2"}]}
    preds, labels = vqa_output_transform(out)
    assert preds == ["No", None]
    assert labels[0] == {"question_id": "1", "ground_truth": "no", "answer_type": None, "dataset": None}
    assert vqa_output_transform([{"pred": e} for e in out["pred"]]) == (preds, labels)  # decollated
    with pytest.raises(RecordError, match="without 'ground_truth'") as err:
        vqa_output_transform({"pred": [{"id": "q7", "answer": "yes"}]})
    assert err.value.path == "q7"
