# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Evaluate a predictions file against a ground-truth file, question by question.

Predictions (``.json`` list, ``.jsonl``, a JSON object holding the list under ``predictions`` /
``results`` / ``items`` / ``answers``, or an in-memory list): one mapping per question with an id
(``question_id`` / ``qid`` / ``id``) and the answer under ``prediction`` / ``answer`` / ``text``
(the LLaVA-Med answer-file field) / ``output``; an item with ``error`` (a failed inference) is scored as
wrong. An optional ``dataset`` disambiguates ids shared by several data sets.

Ground truth (same containers, or :class:`~monai_llava_med.data.VQARecord` objects): an id, the answer
under ``answer`` / ``gt_answer`` / ``ground_truth`` or as the last ``gpt`` / ``assistant`` turn of
``conversations`` (the LLaVA-Med eval format), optional ``answer_type`` and ``dataset``.

Without a ground-truth source, each prediction item must carry its reference under ``ground_truth`` (as
the bundle's ``answers.json`` does for a datalist with answers).

Every ground-truth question is scored exactly once: an unknown, duplicated or ambiguous prediction id and a
malformed item raise :class:`RecordError` naming the item; a question without a prediction raises too,
unless ``missing="wrong"``, which scores it as wrong (reported under ``missing``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai_llava_med.data.llava_json import read_json_records
from monai_llava_med.data.records import ID_KEYS, first_key
from monai_llava_med.errors import RecordError

from .report import write_report
from .vqa_evaluation import evaluate_vqa

__all__ = [
    "evaluate_prediction_files",
    "load_ground_truth",
    "load_predictions",
    "match_predictions",
    "read_json_list",
]

_PRED_KEYS = ("prediction", "answer", "text", "output")
_GT_KEYS = ("answer", "gt_answer", "ground_truth")
_LIST_KEYS = ("predictions", "results", "items", "answers")
_ASSISTANT_ROLES = ("gpt", "assistant")

Source = str | os.PathLike | Sequence[Any]


def read_json_list(path: str | os.PathLike) -> list[Any]:
    """Read a JSON list, a JSON object holding one under a known key, or JSON lines (``.jsonl``).

    Args:
        path: the file.

    Raises:
        RecordError: unreadable file, invalid JSON (with its line) or no list of items.
    """
    return read_json_records(path, list_keys=_LIST_KEYS)


def _items(source: Source, what: str) -> tuple[list[Any], str]:
    if isinstance(source, (str, os.PathLike)):
        return read_json_list(source), str(source)
    if isinstance(source, Sequence):
        return list(source), what
    raise TypeError(f"{what} must be a path or a list of items, got {type(source).__name__}")


def _item_id(item: Mapping, index: int, where: str) -> str:
    key = first_key(item, ID_KEYS)
    value = None if key is None else item[key]
    if value is None or isinstance(value, (bool, float)) or not str(value).strip():
        raise RecordError(f"item {index} has no usable question_id/qid/id", where)
    return str(value)


def _conversation_answer(turns: Any, rid: str) -> Any:
    if not isinstance(turns, list):
        raise RecordError("conversations must be a list of turns", rid)
    answers = [t.get("value") for t in turns if isinstance(t, Mapping) and t.get("from") in _ASSISTANT_ROLES]
    if not answers:
        raise RecordError("conversations have no gpt/assistant turn holding the answer", rid)
    return answers[-1]


def load_ground_truth(source: Source, default_dataset: str = "vqa") -> list[dict[str, Any]]:
    """Ground-truth questions as ``{"question_id", "ground_truth", "answer_type", "dataset"}`` dicts.

    Args:
        source: a file path or a list of mappings / ``VQARecord`` objects (see the module docstring).
        default_dataset: data set name for items without one.

    Raises:
        RecordError: an unreadable file, or an item without id or answer (named by id or position).
    """
    items, where = _items(source, "ground truth")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) and all(hasattr(item, a) for a in ("qid", "answer", "answer_type")):
            item = {"qid": item.qid, "answer": item.answer, "answer_type": item.answer_type,
                    "dataset": getattr(item, "dataset", None)}  # fmt: skip
        if not isinstance(item, Mapping):
            raise RecordError(f"ground-truth item {i} is a {type(item).__name__}, not an object", where)
        rid = _item_id(item, i, where)
        key = first_key(item, _GT_KEYS)
        answer = item[key] if key is not None else _conversation_answer(item.get("conversations"), rid)
        if answer is None:
            raise RecordError("missing ground-truth answer", rid)
        out.append(
            {
                "question_id": rid,
                "ground_truth": answer,
                "answer_type": item.get("answer_type"),
                "dataset": str(item.get("dataset") or default_dataset),
            }
        )
    return out


def load_predictions(source: Source) -> list[dict[str, Any]]:
    """Predictions as ``{"question_id", "prediction" | "error", "dataset"}`` dicts.

    Args:
        source: a file path or a list of mappings (see the module docstring).

    Raises:
        RecordError: an unreadable file, or an item without id, or with neither an answer nor an error.
    """
    items, where = _items(source, "predictions")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise RecordError(f"prediction item {i} is a {type(item).__name__}, not an object", where)
        rid = _item_id(item, i, where)
        rec: dict[str, Any] = {"question_id": rid, "dataset": item.get("dataset")}
        if item.get("error") is not None:
            rec["error"] = str(item["error"])
        else:
            key = first_key(item, _PRED_KEYS)
            if key is None:
                raise RecordError(f"no answer: expected one of {', '.join(_PRED_KEYS)} (or an error)", rid)
            if not isinstance(item[key], (str, int, float)) or isinstance(item[key], bool):
                raise RecordError(f"the answer under {key!r} is a {type(item[key]).__name__}, not text", rid)
            rec["prediction"] = item[key]
        out.append(rec)
    return out


def match_predictions(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    missing: str = "error",
) -> list[dict[str, Any]]:
    """Pair each ground-truth question with its prediction, in ground-truth order.

    Args:
        predictions: the output of :func:`load_predictions`.
        ground_truth: the output of :func:`load_ground_truth`.
        missing: "error" (raise for a question without prediction) or "wrong" (score it as wrong).

    Raises:
        RecordError: duplicated ground-truth questions, a prediction whose id is unknown, ambiguous (the id
            exists in several data sets and the prediction names none) or duplicated, or (with
            ``missing="error"``) questions without a prediction.
        ValueError: an unknown ``missing`` mode.
    """
    if missing not in ("error", "wrong"):
        raise ValueError(f"missing must be 'error' or 'wrong', got {missing!r}")
    by_id: dict[str, list[int]] = {}
    seen_gt: set[tuple[str, str]] = set()
    for n, gt in enumerate(ground_truth):
        key = (gt["dataset"], gt["question_id"])
        if key in seen_gt:
            raise RecordError(f"ground-truth question appears twice in data set {key[0]!r}", key[1])
        seen_gt.add(key)
        by_id.setdefault(gt["question_id"], []).append(n)
    paired: dict[int, Mapping[str, Any]] = {}
    for pred in predictions:
        qid, ds = pred["question_id"], pred.get("dataset")
        candidates = [n for n in by_id.get(qid, []) if ds is None or ground_truth[n]["dataset"] == ds]
        if not candidates:
            where = f" in data set {ds!r}" if ds is not None else ""
            raise RecordError(f"prediction for a question that is not in the ground truth{where}", qid)
        if len(candidates) > 1:
            names = sorted(ground_truth[n]["dataset"] for n in candidates)
            raise RecordError(f"ambiguous prediction id: it exists in data sets {names}; add 'dataset'", qid)
        if candidates[0] in paired:
            raise RecordError("two predictions for the same question", qid)
        paired[candidates[0]] = pred
    unanswered = [ground_truth[n]["question_id"] for n in range(len(ground_truth)) if n not in paired]
    if unanswered and missing == "error":
        shown = ", ".join(unanswered[:10]) + (" ..." if len(unanswered) > 10 else "")
        raise RecordError(
            f"{len(unanswered)} ground-truth question(s) have no prediction: {shown} "
            "(pass missing='wrong' to score them as wrong)",
            "predictions",
        )
    records = []
    for n, gt in enumerate(ground_truth):
        rec = dict(gt)
        pred = paired.get(n)
        if pred is None:
            rec["status"] = "missing"
        elif "error" in pred:
            rec["error"] = pred["error"]
        else:
            rec["prediction"] = pred["prediction"]
        records.append(rec)
    return records


def _embedded_ground_truth(predictions: Source) -> list[dict[str, Any]]:
    items, where = _items(predictions, "predictions")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise RecordError(f"prediction item {i} is a {type(item).__name__}, not an object", where)
        rid = _item_id(item, i, where)
        if item.get("ground_truth") is None:
            raise RecordError("no ground truth given and the item carries no 'ground_truth'", rid)
        ref = {"id": rid, "answer": item["ground_truth"]}
        out.append(ref | {"answer_type": item.get("answer_type"), "dataset": item.get("dataset")})
    return out


def evaluate_prediction_files(
    predictions: Source,
    ground_truth: Source | None,
    default_dataset: str = "vqa",
    missing: str = "error",
    report_dir: str | os.PathLike | None = None,
    report_name: str = "vqa_metrics",
) -> dict[str, Any]:
    """Evaluate predictions against ground truth (files or lists); optionally write the report.

    Args:
        predictions: predictions file or list (see the module docstring).
        ground_truth: ground-truth file or list; None when every prediction item carries its reference under
            ``ground_truth`` (the bundle's ``answers.json`` for a datalist with answers).
        default_dataset: data set name for ground-truth items without one.
        missing: "error" or "wrong" (see :func:`match_predictions`).
        report_dir: when given, :func:`write_report` writes ``{report_name}.json`` / ``.md`` there.
        report_name: the report file stem.

    Returns:
        The results of :func:`~monai_llava_med.metrics.evaluate_vqa`.

    Raises:
        RecordError: unreadable files, malformed items, unmatched / duplicated ids, unanswered questions.
    """
    if ground_truth is None:
        ground_truth = _embedded_ground_truth(predictions)
    gt = load_ground_truth(ground_truth, default_dataset)
    records = match_predictions(load_predictions(predictions), gt, missing)
    results = evaluate_vqa(records, default_dataset)
    if report_dir is not None:
        write_report(results, report_dir, report_name)
    return results
