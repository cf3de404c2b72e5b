# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A cumulative MONAI metric for generated VQA answers.

:class:`VQAMetric` follows the ``monai.metrics.CumulativeIterationMetric`` protocol (``__call__(y_pred, y)``
per iteration, ``aggregate()``, ``reset()``, ``get_buffer()``, ``len()``), for text instead of tensors, so
it can be driven by a plain loop or wrapped in ``monai.handlers.IgniteMetricHandler`` inside a
``SupervisedEvaluator`` / ``evaluate.json``. In distributed runs the per-question scores are gathered
across ranks with ``monai.utils.string_list_all_gather`` before aggregation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from monai.metrics import Metric
from monai.utils import string_list_all_gather

from monai_llava_med.data.records import question_id_of
from monai_llava_med.errors import RecordError

from .calibration_metrics import DEFAULT_BINS
from .report import write_report
from .scoring import QuestionScore, yes_no_of
from .trust_plots import write_trust_plots
from .trust_report import trust_section
from .vqa_evaluation import SUMMARY_KEYS, parse_record, summarize

__all__ = ["TRUST_KEYS", "VQAMetric", "vqa_output_transform"]

_ANSWER_KEYS = ("prediction", "answer", "text")
#: answer-entry fields passed on to the metric's trust section (docs/trust.md), when an entry has them.
TRUST_KEYS = ("confidence", "abstained", "reason", "probe_set")


def vqa_output_transform(output: Any, pred_key: str = "pred") -> tuple[list[str | None], list[dict[str, Any]]]:
    """``(y_pred, y)`` for :class:`VQAMetric` from an evaluator's ``engine.state.output``.

    The output holds, under ``pred_key``, one answer entry per item as ``LlavaMedInferer`` produces them:
    ``{"id", "answer" | "error", "ground_truth", "answer_type", ["dataset"]}``; a decollated output (a list
    of such dicts) works too. Use it as the ``output_transform`` of ``monai.handlers.IgniteMetricHandler``.
    The entries' trust fields (:data:`TRUST_KEYS`) are passed on in the labels when present; an entry of a probe
    set (``probe_set``) may lack a ground truth: it then counts only in that probe set's refusal rates.

    Args:
        output: ``engine.state.output``.
        pred_key: the key holding the answer entries.

    Raises:
        RecordError: an entry without ground truth that belongs to no probe set (evaluation needs a datalist with
            answers).
    """
    if isinstance(output, Mapping):
        entries = output[pred_key]
    else:
        entries = [e for o in output for e in (o[pred_key] if isinstance(o[pred_key], list) else [o[pred_key]])]
    preds: list[str | None] = []
    labels: list[dict[str, Any]] = []
    for n, entry in enumerate(entries):
        qid = question_id_of(entry)
        rid = f"item #{n}" if qid is None else str(qid)
        if entry.get("ground_truth") is None and not entry.get("probe_set"):
            raise RecordError("answer entry without 'ground_truth': evaluate a datalist that has answers", rid)
        key = next((k for k in _ANSWER_KEYS if entry.get(k) is not None), None)
        preds.append(None if entry.get("error") is not None or key is None else entry[key])
        labels.append(
            {
                "question_id": rid,
                "ground_truth": entry.get("ground_truth"),
                "answer_type": entry.get("answer_type"),
                "dataset": entry.get("dataset"),
                **{k: entry[k] for k in TRUST_KEYS if k in entry},
            }
        )
    return preds, labels


def _column(value: Any, n: int, name: str) -> list[Any]:
    if value is None:
        return [None] * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        value = [value] * n
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} items for a batch of {n} predictions")
    return list(value)


class VQAMetric(Metric):
    """Accumulate (prediction, ground truth, answer type) per question and compute the VQA summary.

    ``y`` items may be plain answers (str or number; the answer type is inferred, yes/no = CLOSED) or
    mappings with ``answer`` (or ``ground_truth``), ``answer_type``, ``question_id`` and ``dataset``, such
    as the decollated label dicts of a VQA data loader. ``answer_type`` / ``question_id`` / ``dataset`` may
    also be passed as keyword sequences. A ``None`` prediction counts as a failed (wrong) answer.

    Example::

        metric = VQAMetric(report_dir="eval")
        for batch in loader:
            metric(y_pred=generate(batch), y=batch["answer"], answer_type=batch["answer_type"])
        summary = metric.aggregate()   # {"closed_acc": ..., "open_recall": ..., ...}; report written

    Args:
        default_dataset: data set name for questions without one.
        summary_key: when given (one of :data:`SUMMARY_KEYS`, e.g. "closed_acc"), ``aggregate`` returns that
            overall scalar (usable as an evaluator's key metric); otherwise the overall summary dict.
        report_dir: when given, ``aggregate`` writes the JSON + Markdown report there (rank 0 only).
        report_name: the report file stem.
        drop_duplicates: keep the first score of a (dataset, question_id) seen twice, as a
            ``DistributedSampler`` padding the last batch produces; when False a duplicate raises.
        trust_bins: equal-width bins of the trust section's ECE and reliability diagram.
        bootstrap_resamples: resamples of the ECE's bootstrap interval.
        bootstrap_seed: the bootstrap's seed.

    When the labels carry a ``confidence`` (answers with trust fields, see :data:`TRUST_KEYS`) or a ``probe_set``,
    the results gain a ``trust`` section (:func:`~.trust_report.trust_section`: ECE with its interval, Brier score,
    AUROC, accuracy at 80 % / 90 % coverage, abstention, and per probe set refusal and false-yes rates), and the
    report folder a reliability diagram and a risk-coverage curve (``{report_name}_reliability.png``,
    ``{report_name}_risk_coverage.png``; needs matplotlib). A probe-set label without ground truth counts only there.
    """

    def __init__(
        self,
        default_dataset: str = "vqa",
        summary_key: str | None = None,
        report_dir: str | os.PathLike | None = None,
        report_name: str = "vqa_metrics",
        drop_duplicates: bool = True,
        trust_bins: int = DEFAULT_BINS,
        bootstrap_resamples: int = 1000,
        bootstrap_seed: int = 0,
    ) -> None:
        if summary_key is not None and summary_key not in SUMMARY_KEYS:
            raise ValueError(f"summary_key must be one of {SUMMARY_KEYS}, got {summary_key!r}")
        self.default_dataset = default_dataset
        self.summary_key = summary_key
        self.report_dir = None if report_dir is None else Path(report_dir)
        self.report_name = report_name
        self.drop_duplicates = drop_duplicates
        self.trust_bins = trust_bins
        self.bootstrap_resamples = bootstrap_resamples
        self.bootstrap_seed = bootstrap_seed
        self.results: dict[str, Any] | None = None
        self._scores: list[QuestionScore] = []
        self._trust: list[dict[str, Any]] = []
        self._count = 0

    def reset(self) -> None:
        """Forget the accumulated questions and the last results."""
        self._scores = []
        self._trust = []
        self._count = 0
        self.results = None

    def __call__(  # type: ignore[override]
        self,
        y_pred: Sequence[str | None] | str,
        y: Sequence[Any] | Any,
        answer_type: Sequence[str | None] | None = None,
        question_id: Sequence[Any] | None = None,
        dataset: Sequence[str | None] | str | None = None,
    ) -> list[dict[str, Any]]:
        """Score one batch and add it to the buffer.

        Args:
            y_pred: generated answers (a single string is a batch of one).
            y: ground-truth answers or mappings (see the class docstring).
            answer_type: per-item "OPEN"/"CLOSED" (None items are inferred).
            question_id: per-item ids (default: a running number on this rank).
            dataset: per-item data set names, or one name for the batch.

        Returns:
            The per-question score dicts of this batch.

        Raises:
            ValueError: ``y_pred`` and ``y`` (or a keyword sequence) differ in length.
            RecordError: an unusable ground truth or answer type, named by question id.
        """
        preds = [y_pred] if isinstance(y_pred, str) else list(y_pred)
        labels = [y] if isinstance(y, (str, Mapping)) or not isinstance(y, Sequence) else list(y)
        if len(preds) != len(labels):
            raise ValueError(f"y_pred has {len(preds)} items but y has {len(labels)}")
        n = len(preds)
        types = _column(answer_type, n, "answer_type")
        ids = _column(question_id, n, "question_id")
        names = _column(dataset, n, "dataset")
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        batch = []
        for pred, label, at, qid, ds in zip(preds, labels, types, ids, names):
            rec = dict(label) if isinstance(label, Mapping) else {"ground_truth": label}
            if "ground_truth" not in rec and "answer" in rec:
                rec["ground_truth"] = rec.pop("answer")
            for key, value in (("answer_type", at), ("question_id", qid), ("dataset", ds)):
                if value is not None:
                    rec[key] = value
            rec.setdefault("question_id", f"rank{rank}-{self._count}")
            trust = {k: rec.pop(k) for k in TRUST_KEYS if k in rec}
            self._count += 1
            if rec.get("ground_truth") is None and trust.get("probe_set"):  # a refusal-only probe
                self._trust.append({**trust, "question_id": str(rec["question_id"]), "correct": None,
                                    "dataset": str(rec.get("dataset") or self.default_dataset),
                                    "answer_type": rec.get("answer_type"), "closed_pred": None, "truth": None})
                continue
            if pred is None:
                rec["status"] = "failed"
            else:
                rec["prediction"] = pred
            score = parse_record(rec, self._count - 1, self.default_dataset)
            batch.append(score)
            if trust:
                self._trust.append({**trust, "question_id": score.question_id, "dataset": score.dataset,
                                    "answer_type": score.answer_type, "correct": score.correct,
                                    "closed_pred": score.closed_pred,
                                    "truth": yes_no_of(score.gt_normalized) if score.answer_type == "CLOSED" else None})
        self._scores.extend(batch)
        return [s.to_dict() for s in batch]

    def get_buffer(self) -> list[dict[str, Any]]:
        """The per-question score dicts of every rank (duplicates removed when ``drop_duplicates``)."""
        return self._gathered([s.to_dict() for s in self._scores])

    def get_trust_buffer(self) -> list[dict[str, Any]]:
        """The per-answer trust records of every rank (see :mod:`.trust_report`), duplicates removed likewise."""
        return self._gathered(self._trust)

    def _gathered(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        local = [json.dumps(r, ensure_ascii=False) for r in records]
        gathered = [json.loads(s) for s in string_list_all_gather(local) if s]
        if not self.drop_duplicates:
            return gathered
        seen: set[tuple[str, str]] = set()
        unique = []
        for s in gathered:
            key = (s["dataset"], s["question_id"])
            if key not in seen:
                seen.add(key)
                unique.append(s)
        return unique

    def __len__(self) -> int:
        """The number of distinct questions accumulated on all ranks."""
        return len(self.get_buffer())

    def aggregate(self) -> dict[str, Any] | float | int | None:
        """Summarise every accumulated question (all ranks); write the report when ``report_dir`` is set.

        Returns:
            The overall summary dict, or its ``summary_key`` value. The full results (per data set and per
            question) are kept in :attr:`results`.

        Raises:
            RecordError: nothing was accumulated, or a duplicate with ``drop_duplicates=False``.
        """
        scores = [QuestionScore(**s) for s in self.get_buffer()]
        trust = self.get_trust_buffer()
        if not scores and not trust:
            raise RecordError("no question was accumulated before aggregate()", "VQAMetric")
        self.results = summarize(scores)
        if trust:
            self.results["trust"] = trust_section(trust, self.trust_bins, self.bootstrap_resamples, self.bootstrap_seed)
        is_main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        if self.report_dir is not None and is_main:
            if trust:
                plots = write_trust_plots(trust, self.report_dir, self.report_name, self.trust_bins)
                self.results["trust"]["plots"] = {k: p.name for k, p in plots.items()}
            write_report(self.results, self.report_dir, self.report_name)
        overall = self.results["overall"]
        return overall if self.summary_key is None else overall[self.summary_key]
