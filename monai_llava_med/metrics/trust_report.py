# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The ``trust`` section of an evaluation: how far the answers' confidences and abstentions can be believed.

Input: one record per answer that carries trust fields (``docs/trust.md``), a mapping with

- ``confidence`` (float in [0, 1], or ``None`` for an answer without one), ``abstained`` (bool), ``reason``;
- ``correct`` (bool, or ``None`` when the question has no ground truth: a refusal-only probe), ``answer_type``;
- ``closed_pred`` ("yes" / "no" / ``None``) and ``truth`` (the normalised ground truth's yes/no, or ``None``);
- ``probe_set`` (optional): the probe set the item belongs to (e.g. ``lesion_free``, ``noise``).

Output (:func:`trust_section`): ``answers`` (all, closed, open answers with ground truth and confidence: ECE with a
bootstrap interval, Brier score, AUROC, accuracy at 80 % / 90 % coverage, abstention rate, accuracy of the answers
not abstained) and ``probe_sets`` (per set: the same, plus abstention and gate refusal rates, the share of each
reason, and the **false-yes rate**: "yes" among yes/no questions whose truth is "no", with a Wilson 95 % interval;
on an absent-finding probe set, lesion-free images asked about lesions, that is the hallucination rate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai_llava_med.constants import REASON_OUT_OF_DOMAIN

from .calibration_metrics import (
    DEFAULT_BINS,
    accuracy_at_coverage,
    auroc,
    bootstrap_interval,
    brier_score,
    expected_calibration_error,
)
from .intervals import wilson_interval

__all__ = ["COVERAGES", "calibration_summary", "probe_set_summary", "trust_section"]

#: the coverages at which selective accuracy is reported.
COVERAGES = (0.8, 0.9)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def calibration_summary(
    records: Sequence[Mapping[str, Any]], bins: int = DEFAULT_BINS, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Calibration and selective-prediction numbers of the records that have a confidence and a ground truth.

    Args:
        records: see the module docstring.
        bins: equal-width bins of the ECE.
        resamples: bootstrap resamples of the ECE interval.
        seed: the bootstrap's seed.
    """
    scored = [r for r in records if r.get("confidence") is not None and r.get("correct") is not None]
    conf = [float(r["confidence"]) for r in scored]
    right = [bool(r["correct"]) for r in scored]
    answered = [r for r in scored if not r.get("abstained")]
    interval = bootstrap_interval(lambda c, y: expected_calibration_error(c, y, bins), conf, right, resamples, seed)
    return {
        "count": len(scored),
        "accuracy": _rate(sum(right), len(scored)),
        "ece": expected_calibration_error(conf, right, bins),
        "ece_95ci": None if interval is None else list(interval),
        "brier": brier_score(conf, right),
        "auroc": auroc(conf, right),
        "accuracy_at_coverage": {str(c): accuracy_at_coverage(conf, right, c) if scored else None for c in COVERAGES},
        "abstention_rate": _rate(len(scored) - len(answered), len(scored)),
        "answered_count": len(answered),
        "answered_accuracy": _rate(sum(bool(r["correct"]) for r in answered), len(answered)),
    }


def probe_set_summary(records: Sequence[Mapping[str, Any]], **calibration: Any) -> dict[str, Any]:
    """Refusal, reason and false-yes rates of one probe set, with its :func:`calibration_summary`.

    Args:
        records: the probe set's records.
        calibration: ``bins``, ``resamples``, ``seed`` of :func:`calibration_summary`.
    """
    n = len(records)
    reasons: dict[str, int] = {}
    for r in records:
        if r.get("abstained") and r.get("reason"):
            reasons[str(r["reason"])] = reasons.get(str(r["reason"]), 0) + 1
    absent = [r for r in records if r.get("truth") == "no"]
    said_yes = sum(r.get("closed_pred") == "yes" for r in absent)
    return {
        "count": n,
        "abstention_rate": _rate(sum(bool(r.get("abstained")) for r in records), n),
        "gate_refusal_rate": _rate(reasons.get(REASON_OUT_OF_DOMAIN, 0), n),
        "reason_rates": {reason: count / n for reason, count in sorted(reasons.items())},
        "false_yes": {
            "questions": len(absent),
            "yes": said_yes,
            "rate": _rate(said_yes, len(absent)),
            "rate_95ci": list(wilson_interval(said_yes, len(absent))) if absent else None,
        },
        "answers": calibration_summary(records, **calibration),
    }


def trust_section(
    records: Sequence[Mapping[str, Any]], bins: int = DEFAULT_BINS, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The ``trust`` section of an evaluation report (see the module docstring).

    Args:
        records: one per answer with trust fields.
        bins: equal-width bins of the ECE and the reliability diagram.
        resamples: bootstrap resamples of the ECE interval.
        seed: the bootstrap's seed.
    """
    options = {"bins": bins, "resamples": resamples, "seed": seed}
    groups = {"all": list(records)}
    for kind in ("CLOSED", "OPEN"):
        group = [r for r in records if r.get("answer_type") == kind]
        if group:
            groups[kind.lower()] = group
    sets = sorted({str(r["probe_set"]) for r in records if r.get("probe_set")})
    return {
        "bins": bins,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95},
        "coverages": list(COVERAGES),
        "answers": {name: calibration_summary(group, **options) for name, group in groups.items()},
        "probe_sets": {s: probe_set_summary([r for r in records if r.get("probe_set") == s], **options) for s in sets},
    }
