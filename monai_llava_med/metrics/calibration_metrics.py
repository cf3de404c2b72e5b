# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""How well answer confidences predict correctness: ECE, Brier score, AUROC, selective accuracy, bootstrap intervals.

Every function takes per-answer ``confidence`` in [0, 1] and ``correct`` (bool or 0/1) as sequences of equal length
and uses numpy only.

* **ECE** (expected calibration error, equal-width bins): ``sum_b (n_b / n) |acc_b - conf_b|`` over ``bins`` bins
  ``[0, 1/B), [1/B, 2/B), ..., [(B-1)/B, 1]`` (the last one closed), ``acc_b`` the share of correct answers and
  ``conf_b`` the mean confidence in bin ``b``;
* **Brier score**: ``mean((confidence - correct)^2)``;
* **AUROC** of confidence for correctness: the probability that a correct answer has a higher confidence than a
  wrong one, ties counted one half (the Mann-Whitney U statistic over ``n_correct * n_wrong``); ``None`` when all
  answers are right or all wrong;
* **accuracy at coverage c**: the accuracy of the ``ceil(c * n)`` most confident answers (ties broken by order);
* **risk-coverage curve**: for ``k = 1..n`` most confident answers, coverage ``k / n`` and risk (error rate);
* **bootstrap interval**: the percentile interval of a statistic over ``resamples`` resamples of the answers drawn
  with replacement by a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "DEFAULT_BINS",
    "accuracy_at_coverage",
    "auroc",
    "bootstrap_interval",
    "brier_score",
    "expected_calibration_error",
    "reliability_bins",
    "risk_coverage_curve",
]

#: equal-width bins of the ECE and the reliability diagram.
DEFAULT_BINS = 15


def _arrays(confidence: Sequence[float], correct: Sequence[bool | int]) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    right = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != right.shape:
        raise ValueError(f"confidence has {conf.size} values but correct has {right.size}")
    if conf.size and (not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must lie in [0, 1]")
    return conf, right


def reliability_bins(
    confidence: Sequence[float], correct: Sequence[bool | int], bins: int = DEFAULT_BINS
) -> dict[str, list[float | int | None]]:
    """Per equal-width bin: the number of answers, their mean confidence and their accuracy (``None`` when empty).

    Args:
        confidence: per-answer confidence in [0, 1].
        correct: per-answer correctness.
        bins: number of bins (>= 1).

    Returns:
        ``{"lower", "upper", "count", "confidence", "accuracy"}``, lists of ``bins`` values each.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf, right = _arrays(confidence, correct)
    index = np.minimum((conf * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=conf, minlength=bins)
    right_sum = np.bincount(index, weights=right, minlength=bins)
    return {
        "lower": [b / bins for b in range(bins)],
        "upper": [(b + 1) / bins for b in range(bins)],
        "count": [int(c) for c in count],
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count)],
        "accuracy": [float(s / c) if c else None for s, c in zip(right_sum, count)],
    }


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool | int], bins: int = DEFAULT_BINS
) -> float | None:
    """ECE over ``bins`` equal-width bins (see the module docstring); ``None`` for no answers."""
    table = reliability_bins(confidence, correct, bins)
    n = sum(table["count"])
    if not n:
        return None
    return float(sum(c / n * abs(a - p) for c, a, p in zip(table["count"], table["accuracy"], table["confidence"])
                     if c))


def brier_score(confidence: Sequence[float], correct: Sequence[bool | int]) -> float | None:
    """``mean((confidence - correct)^2)``; ``None`` for no answers."""
    conf, right = _arrays(confidence, correct)
    return float(np.mean((conf - right) ** 2)) if conf.size else None


def auroc(confidence: Sequence[float], correct: Sequence[bool | int]) -> float | None:
    """AUROC of ``confidence`` as a score for ``correct`` (ties one half); ``None`` without both classes."""
    conf, right = _arrays(confidence, correct)
    positive = right > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(conf, kind="mergesort")
    ranks = np.empty(conf.size, dtype=np.float64)
    sorted_conf = conf[order]
    # average ranks over ties (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_conf)) + 1]
    ends = np.r_[starts[1:], conf.size]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _most_confident_first(conf: np.ndarray) -> np.ndarray:
    return np.argsort(-conf, kind="mergesort")


def accuracy_at_coverage(confidence: Sequence[float], correct: Sequence[bool | int], coverage: float) -> float | None:
    """Accuracy of the ``ceil(coverage * n)`` most confident answers; ``None`` for no answers.

    Args:
        confidence: per-answer confidence.
        correct: per-answer correctness.
        coverage: the share of answers kept, in (0, 1].
    """
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    conf, right = _arrays(confidence, correct)
    if not conf.size:
        return None
    keep = max(1, math.ceil(coverage * conf.size - 1e-9))
    return float(right[_most_confident_first(conf)[:keep]].mean())


def risk_coverage_curve(
    confidence: Sequence[float], correct: Sequence[bool | int]
) -> tuple[list[float], list[float]]:
    """``(coverage, risk)``: keeping the ``k`` most confident answers, ``k = 1..n``, the share kept and their error
    rate."""
    conf, right = _arrays(confidence, correct)
    if not conf.size:
        return [], []
    ordered = right[_most_confident_first(conf)]
    k = np.arange(1, conf.size + 1)
    return (k / conf.size).tolist(), (1.0 - np.cumsum(ordered) / k).tolist()


def bootstrap_interval(
    statistic: Callable[[np.ndarray, np.ndarray], float | None],
    confidence: Sequence[float],
    correct: Sequence[bool | int],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic(confidence, correct)`` over resampled answers.

    Args:
        statistic: e.g. :func:`expected_calibration_error`; resamples where it is ``None`` are left out.
        confidence: per-answer confidence.
        correct: per-answer correctness.
        resamples: number of resamples (with replacement, of the same size).
        seed: seed of the generator (``numpy.random.default_rng``), so the interval is reproducible.
        level: coverage of the interval.

    Returns:
        ``(low, high)``, or ``None`` for no answers.
    """
    conf, right = _arrays(confidence, correct)
    if not conf.size:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, conf.size, conf.size)
        value = statistic(conf[pick], right[pick])
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(values), [tail, 1 - tail])
    return float(low), float(high)
