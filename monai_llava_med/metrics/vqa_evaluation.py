# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""VQA evaluation of scored records: per data set, per answer type and overall.

A record is a mapping with

- ``question_id`` (or ``qid`` / ``id``): str or int;
- ``ground_truth`` (or ``gt_answer`` / ``gt``): the reference, a string or a number;
- ``prediction``: the model's answer; a record may instead carry ``error`` (the inference failed for
  that item) or ``status`` "missing" (no prediction was produced), and is then scored as a wrong answer;
- ``answer_type`` (optional): "OPEN" or "CLOSED" in any case; when absent, CLOSED if the normalised
  ground truth is "yes"/"no", else OPEN;
- ``dataset`` (optional): data set name, default ``default_dataset``.

Every question stays in its denominator: a failed, missing or unparsable prediction counts as wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from monai_llava_med.data.records import ANSWER_TYPES, ID_KEYS, answer_to_text, closed_answer_type, first_key
from monai_llava_med.errors import RecordError

from .scoring import QuestionScore, score_question

__all__ = ["SUMMARY_KEYS", "evaluate_vqa", "parse_record", "summarize", "summarize_scores", "first_key"]

#: keys of each summary (overall and per data set); rates are fractions in [0, 1], None when undefined.
SUMMARY_KEYS = (
    "count",
    "closed_count",
    "closed_correct",
    "closed_acc",
    "closed_no_answer",
    "open_count",
    "open_recall",
    "open_precision",
    "open_f1",
    "open_exact_match",
    "exact_match",
    "failed",
    "missing",
)

_GT_KEYS = ("ground_truth", "gt_answer", "gt")
_STATUSES = ("ok", "failed", "missing")


def _record_id(record: Any, index: int) -> str:
    if isinstance(record, Mapping):
        key = first_key(record, ID_KEYS)
        if key is not None:
            return str(record[key])
    return f"record #{index}"


def parse_record(record: Any, index: int = 0, default_dataset: str = "vqa") -> QuestionScore:
    """Validate one record and score it.

    Args:
        record: a mapping as described in the module docstring.
        index: its position, named in errors when it has no id.
        default_dataset: data set name for records without ``dataset``.

    Raises:
        RecordError: not a mapping, no id, no ground truth, an unusable answer or answer type, or a record
            with neither a prediction nor an error/missing status; the error names the record.
    """
    rid = _record_id(record, index)
    if not isinstance(record, Mapping):
        raise RecordError(f"expected an object, got {type(record).__name__}", rid)
    id_key = first_key(record, ID_KEYS)
    if id_key is None or isinstance(record[id_key], (bool, float)) or not str(record[id_key]).strip():
        raise RecordError("missing question_id (or an id that is not a string or an integer)", rid)
    gt_key = first_key(record, _GT_KEYS)
    if gt_key is None:
        raise RecordError(f"missing ground truth (one of {', '.join(_GT_KEYS)})", rid)
    try:
        gt = answer_to_text(record[gt_key], rid)
    except RecordError as e:
        raise RecordError(f"unusable ground truth: {e.reason}", rid) from e
    status = str(record.get("status", "ok"))
    if status not in _STATUSES:
        raise RecordError(f"status must be one of {', '.join(_STATUSES)}, got {status!r}", rid)
    if record.get("error") is not None:
        status = "failed"
    pred_value = record.get("prediction")
    if status == "ok":
        if pred_value is None:
            raise RecordError("missing prediction (and no error or missing status)", rid)
        if not isinstance(pred_value, (str, int, float)):
            raise RecordError(f"prediction must be a string, got {type(pred_value).__name__}", rid)
    try:
        pred = answer_to_text(pred_value, rid) if status == "ok" else ""
    except RecordError as e:
        raise RecordError(f"unusable prediction: {e.reason}", rid) from e
    raw_type = record.get("answer_type")
    answer_type = closed_answer_type(gt) if raw_type is None else str(raw_type).strip().upper()
    if answer_type not in ANSWER_TYPES:
        raise RecordError(f"answer_type must be OPEN or CLOSED, got {raw_type!r}", rid)
    dataset = str(record.get("dataset") or default_dataset)
    try:
        return score_question(rid, dataset, answer_type, gt, pred, status)
    except ValueError as e:
        raise RecordError(str(e), rid) from e


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_scores(scores: Sequence[QuestionScore]) -> dict[str, Any]:
    """The summary of a group of questions (keys :data:`SUMMARY_KEYS`).

    Args:
        scores: scored questions of one group.
    """
    closed = [s for s in scores if s.answer_type == "CLOSED"]
    opened = [s for s in scores if s.answer_type == "OPEN"]
    n_correct = sum(s.correct for s in closed)
    return {
        "count": len(scores),
        "closed_count": len(closed),
        "closed_correct": n_correct,
        "closed_acc": n_correct / len(closed) if closed else None,
        "closed_no_answer": sum(s.no_answer for s in closed),
        "open_count": len(opened),
        "open_recall": _mean([s.recall for s in opened]),
        "open_precision": _mean([s.precision for s in opened]),
        "open_f1": _mean([s.f1 for s in opened]),
        "open_exact_match": _mean([float(s.exact_match) for s in opened]),
        "exact_match": _mean([float(s.exact_match) for s in scores]),
        "failed": sum(s.status == "failed" for s in scores),
        "missing": sum(s.status == "missing" for s in scores),
    }


def summarize(scores: Sequence[QuestionScore]) -> dict[str, Any]:
    """Results of scored questions: ``{"overall", "per_dataset", "per_question"}``.

    Args:
        scores: scored questions; ``(dataset, question_id)`` must be unique.

    Raises:
        RecordError: a question scored twice.
    """
    seen: set[tuple[str, str]] = set()
    for s in scores:
        key = (s.dataset, s.question_id)
        if key in seen:
            raise RecordError(f"question appears twice in data set {s.dataset!r}", s.question_id)
        seen.add(key)
    datasets = sorted({s.dataset for s in scores})
    return {
        "overall": summarize_scores(scores),
        "per_dataset": {d: summarize_scores([s for s in scores if s.dataset == d]) for d in datasets},
        "per_question": [s.to_dict() for s in scores],
    }


def evaluate_vqa(records: Iterable[Any], default_dataset: str = "vqa") -> dict[str, Any]:
    """Score VQA records and summarise them per data set, per answer type and overall.

    Args:
        records: mappings with question_id, ground_truth, prediction (or error), optional answer_type and
            dataset (see the module docstring).
        default_dataset: data set name for records without one.

    Returns:
        ``{"overall": summary, "per_dataset": {name: summary}, "per_question": [score dicts]}``; a summary
        has the keys :data:`SUMMARY_KEYS` (``closed_acc`` = correct / every closed question, ``open_recall``
        / ``open_f1`` / ``open_exact_match`` averaged over open questions, ``exact_match`` over all).

    Raises:
        RecordError: a malformed or duplicated record, named by its id.
    """
    return summarize([parse_record(r, i, default_dataset) for i, r in enumerate(records)])
