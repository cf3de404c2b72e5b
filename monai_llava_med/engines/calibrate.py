# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Fit the trust calibration of a model on held-out labelled questions: :func:`fit_calibration` (Python) and
:func:`run_calibration` (what the bundle's ``configs/calibrate.json`` calls).

The labelled items are answered once with raw trust scores; each answer is scored right or wrong by the VQA rules
of :func:`~monai_llava_med.metrics.score_question`. The items are then split **by image** (all questions about one
image fall on the same side) into a *fit* split and a *calibration* split:

* fit split: the Platt scaling per question type, and the input gate's mean and shrinkage covariance;
* calibration split: the abstention threshold per question type by split-conformal risk control
  (:func:`~monai_llava_med.trust.conformal_risk_threshold`), and the gate's refusal distance (a split-conformal
  quantile of held-out in-domain distances, :func:`~monai_llava_med.trust.fit_feature_gate`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.records import closed_answer_type
from ..errors import BundleError, CalibrationError
from ..metrics.scoring import score_question
from ..trust.abstention import DEFAULT_MIN_IMAGE_RELIANCE
from ..trust.calibration import (
    CALIBRATION_FILE,
    KIND_FALLBACK,
    QUESTION_KINDS,
    Calibration,
    PlattScaling,
    conformal_risk_threshold,
)
from ..trust.gate import fit_feature_gate
from .answers import load_datalist
from .inference import ERROR_KEY
from .predictor import LlavaMedPredictor

__all__ = ["fit_calibration", "run_calibration"]

logger = logging.getLogger(__name__)


def _split_by_image(items: Sequence[dict[str, Any]], fit_fraction: float, seed: int) -> list[bool]:
    """``True`` for the items of the fit split: a seeded share of the images, every question of an image together."""
    groups = sorted({str(it.get("image") or f"text:{i}") for i, it in enumerate(items)})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_fit = min(max(1, math.ceil(fit_fraction * len(groups))), len(groups) - 1)
    fit_groups = {groups[i] for i in order[:n_fit]}
    return [str(it.get("image") or f"text:{i}") in fit_groups for i, it in enumerate(items)]


def _unique_image_features(rows: Sequence[tuple[dict[str, Any], Any]]) -> torch.Tensor:
    """One feature row per distinct image (the first question's)."""
    seen: dict[str, torch.Tensor] = {}
    for item, scores in rows:
        if scores.features is not None and item.get("image"):
            seen.setdefault(str(item["image"]), scores.features)
    return torch.stack(list(seen.values())) if seen else torch.empty(0, 0)


def fit_calibration(
    predictor: LlavaMedPredictor,
    records: str | PathLike | Sequence[dict[str, Any]],
    target_error: float = 0.05,
    *,
    fit_fraction: float = 0.5,
    min_image_reliance: float = DEFAULT_MIN_IMAGE_RELIANCE,
    gate: bool = True,
    refusal_rate: float = 0.01,
    batch_size: int = 8,
    seed: int = 0,
    output_dir: str | PathLike | None = None,
    **generation: Any,
) -> Calibration:
    """Fit scaling, abstention thresholds and the input gate on labelled questions, optionally saving them.

    Args:
        predictor: the model to calibrate (its own calibration, if any, is ignored while fitting).
        records: a datalist file or list of ``{"image", "question", "answer", "answer_type"?, "id"?}`` held out from
            training; ``answer_type`` defaults to CLOSED for yes/no answers, OPEN otherwise.
        target_error: ``alpha`` of the conformal risk control: the rate of questions answered wrongly (not withheld)
            that the thresholds allow.
        fit_fraction: share of the images used to fit the scaling and the gate's statistics (the rest chooses the
            thresholds).
        min_image_reliance: stored threshold on image reliance.
        gate: fit the input gate (needs >= 2 images in the fit split and >= 1 in the calibration split).
        refusal_rate: in-domain refusal rate the gate's distance is chosen for.
        batch_size: prompts per ``generate``.
        seed: seed of the split.
        output_dir: when given, ``calibration.json`` (and ``gate.safetensors``) are written there, atomically.
        generation: generation options (``max_new_tokens``...).

    Returns:
        the calibration, also set on ``predictor``. An answer type (closed / open / number) absent from the data
        keeps the identity scaling and threshold 0 (not controlled; ``fit_summary`` records 0 answers for it), except
        ``number``, which then takes the ``open`` scaling and threshold (``KIND_FALLBACK``).

    Raises:
        CalibrationError: fewer than two labelled images answered, or an item without an answer.
    """
    items = load_datalist(records)
    missing = [it["id"] for it in items if ERROR_KEY not in it and it.get("answer") in (None, "")]
    if missing:
        raise CalibrationError(f"{len(missing)} item(s) have no ground-truth 'answer' (first: {missing[0]!r})",
                               str(records) if isinstance(records, (str, PathLike)) else "datalist")
    scored = predictor.score_batch(items, batch_size=batch_size, raw=True, **generation)
    rows, failed = [], 0
    for item, (entry, scores) in zip(items, scored):
        if scores is None:
            failed += 1
            continue
        answer_type = str(item.get("answer_type") or closed_answer_type(item["answer"])).upper()
        result = score_question(str(item["id"]), str(item.get("dataset") or "calibration"), answer_type,
                                str(item["answer"]), entry["answer"])
        rows.append((item, scores, bool(result.correct)))
    where = str(records) if isinstance(records, (str, PathLike)) else "datalist"
    if len({str(it.get("image") or i) for i, (it, _, _) in enumerate(rows)}) < 2:
        raise CalibrationError(f"calibration needs answered questions about >= 2 images; got {len(rows)} answered, "
                               f"{failed} failed", where)
    in_fit = _split_by_image([r[0] for r in rows], fit_fraction, seed)
    fit = [r for r, f in zip(rows, in_fit) if f]
    held = [r for r, f in zip(rows, in_fit) if not f]
    scaling, thresholds, summary = {}, {}, {"items": len(items), "failed": failed, "seed": seed}
    for kind in QUESTION_KINDS:
        fit_rows, held_rows = [r for r in fit if r[1].kind == kind], [r for r in held if r[1].kind == kind]
        if not fit_rows and kind in KIND_FALLBACK:  # e.g. no numeric answer: Calibration takes its stand-in's
            summary[kind] = {"fit": 0, "calibration": len(held_rows), "as": KIND_FALLBACK[kind]}
            continue
        scaling[kind] = PlattScaling.fit([r[1].raw_confidence for r in fit_rows], [r[2] for r in fit_rows])
        held_conf = scaling[kind](np.array([r[1].raw_confidence for r in held_rows]))
        held_correct = np.array([r[2] for r in held_rows], dtype=bool)
        thresholds[kind] = conformal_risk_threshold(held_conf, held_correct, target_error) if held_rows else 0.0
        given = held_conf >= thresholds[kind]
        summary[kind] = {
            "fit": len(fit_rows), "calibration": len(held_rows),
            "fit_accuracy": float(np.mean([r[2] for r in fit_rows])) if fit_rows else None,
            "calibration_answered": float(given.mean()) if held_rows else None,
            "calibration_wrong_answered": float((given & ~held_correct).mean()) if held_rows else None,
        }
    feature_gate = None
    if gate:
        fit_features = _unique_image_features([(r[0], r[1]) for r in fit])
        held_features = _unique_image_features([(r[0], r[1]) for r in held])
        if fit_features.shape[0] < 2 or held_features.shape[0] < 1:
            raise CalibrationError(f"the input gate needs >= 2 images in the fit split and >= 1 in the calibration "
                                   f"split, got {fit_features.shape[0]} and {held_features.shape[0]} (gate=False "
                                   "skips it)", where)
        feature_gate = fit_feature_gate(fit_features, held_features, refusal_rate)
    calibration = Calibration(scaling=scaling, thresholds=thresholds, target_error=target_error,
                              min_image_reliance=min_image_reliance, gate=feature_gate, model=predictor.model_name,
                              fit_summary=summary)
    if output_dir is not None:
        path = calibration.save(output_dir)
        logger.info("wrote %s (thresholds %s)", path, {k: round(v, 4) for k, v in calibration.thresholds.items()})
    predictor.calibration = calibration
    return calibration


def run_calibration(
    model_dir: str | PathLike,
    datalist: str | PathLike | Sequence[dict[str, Any]],
    output_dir: str | PathLike,
    target_error: float = 0.05,
    device: torch.device | str | None = None,
    write_into_model_dir: bool = False,
    **kwargs: Any,
) -> Path:
    """Load a model, fit its calibration on a labelled datalist and write ``calibration.json`` into ``output_dir``.

    Args:
        model_dir: the model folder.
        datalist: labelled questions (see :func:`fit_calibration`).
        output_dir: where ``calibration.json`` and ``gate.safetensors`` go; load them with
            ``LlavaMedPredictor.from_pretrained(model_dir, calibration=output_dir)`` or copy them beside the weights.
        target_error: the conformal risk control's ``alpha``.
        device: where the model runs.
        write_into_model_dir: allow ``output_dir`` to be ``model_dir`` (which a shipped model folder should not be
            changed by accident).
        kwargs: further :func:`fit_calibration` options.

    Returns:
        the path of the written ``calibration.json``.

    Raises:
        BundleError: ``output_dir`` is the model folder and ``write_into_model_dir`` is false.
    """
    if Path(output_dir).resolve() == Path(model_dir).resolve() and not write_into_model_dir:
        raise BundleError("output_dir is the model folder; pass --write_into_model_dir true to write "
                          f"{CALIBRATION_FILE} beside the weights", Path(output_dir))
    predictor = LlavaMedPredictor.from_pretrained(model_dir, device=device, calibration=None)
    fit_calibration(predictor, datalist, target_error, output_dir=output_dir, **kwargs)
    return Path(output_dir) / CALIBRATION_FILE
