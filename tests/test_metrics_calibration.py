# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""ECE, Brier score, AUROC, selective accuracy and the bootstrap on hand-made cases with known values, AUROC against
an independent implementation (scipy's Mann-Whitney U), and the trust section of VQAMetric."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from monai_llava_med.constants import REASON_IMAGE_INDEPENDENT, REASON_OUT_OF_DOMAIN
from monai_llava_med.metrics import (
    VQAMetric,
    accuracy_at_coverage,
    auroc,
    bootstrap_interval,
    brier_score,
    expected_calibration_error,
    reliability_bins,
    risk_coverage_curve,
    vqa_output_transform,
)


def test_auroc_of_separated_reversed_and_tied_scores():
    assert auroc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.3, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5] * 6, [1, 0, 1, 0, 1, 1]) == 0.5
    # one wrong answer above one of two right ones: 1 of the 2 (right, wrong) pairs is misordered
    assert auroc([0.9, 0.5, 0.7], [1, 1, 0]) == 0.5
    assert auroc([0.9, 0.8], [1, 1]) is None and auroc([], []) is None


def test_auroc_equals_the_pairwise_count_and_scipy_mann_whitney():
    rng = np.random.default_rng(3)
    conf = np.round(rng.uniform(size=300), 2)  # many ties
    right = rng.uniform(size=300) < conf
    pairs = [(a, b) for a, b in itertools.product(conf[right], conf[~right])]
    by_hand = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    u = mannwhitneyu(conf[right], conf[~right], alternative="two-sided").statistic
    assert auroc(conf, right) == pytest.approx(by_hand, abs=1e-12)
    assert auroc(conf, right) == pytest.approx(u / (right.sum() * (~right).sum()), abs=1e-12)


def test_brier_score_by_hand():
    assert brier_score([1.0, 0.0], [1, 0]) == 0.0
    assert brier_score([0.8, 0.6, 0.3], [1, 0, 0]) == pytest.approx((0.04 + 0.36 + 0.09) / 3)
    assert brier_score([0.5] * 4, [1, 0, 1, 1]) == 0.25


def test_ece_by_hand_and_on_calibrated_and_overconfident_sets():
    # bin [0.8, 0.8667): two answers at 0.85, one right -> |0.5 - 0.85| = 0.35; bin of 0.2 (one right): 0.8
    assert expected_calibration_error([0.85, 0.85, 0.2], [1, 0, 1], bins=15) == pytest.approx(
        2 / 3 * 0.35 + 1 / 3 * 0.8)
    assert expected_calibration_error([1.0, 1.0, 0.0], [1, 1, 0]) == 0.0  # 1.0 falls in the last, closed bin
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=20000)
    calibrated = rng.uniform(size=conf.size) < conf
    assert expected_calibration_error(conf, calibrated) < 0.02
    overconfident = rng.uniform(size=conf.size) < conf - 0.2
    assert expected_calibration_error(conf, overconfident) == pytest.approx(0.2, abs=0.03)
    table = reliability_bins(conf, calibrated, 15)
    assert sum(table["count"]) == conf.size and len(table["accuracy"]) == 15
    assert table["lower"][0] == 0.0 and table["upper"][-1] == 1.0


def test_bootstrap_interval_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(1)
    conf = rng.uniform(size=500)
    right = rng.uniform(size=500) < conf
    a = bootstrap_interval(expected_calibration_error, conf, right, resamples=200, seed=7)
    b = bootstrap_interval(expected_calibration_error, conf, right, resamples=200, seed=7)
    c = bootstrap_interval(expected_calibration_error, conf, right, resamples=200, seed=8)
    assert a == b and a != c
    mean = bootstrap_interval(lambda x, y: float(np.mean(y)), conf, right, resamples=2000, seed=0)
    p, half = right.mean(), 1.96 * math.sqrt(right.mean() * (1 - right.mean()) / 500)
    assert mean[0] == pytest.approx(p - half, abs=0.01) and mean[1] == pytest.approx(p + half, abs=0.01)


def test_accuracy_at_coverage_keeps_the_most_confident_answers():
    conf = [0.99, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    right = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert accuracy_at_coverage(conf, right, 0.8) == 1.0
    assert accuracy_at_coverage(conf, right, 0.9) == pytest.approx(8 / 9)
    assert accuracy_at_coverage(conf, right, 1.0) == 0.8
    coverage, risk = risk_coverage_curve(conf, right)
    assert coverage[-1] == 1.0 and risk[7] == 0.0 and risk[-1] == pytest.approx(0.2)
    with pytest.raises(ValueError):
        accuracy_at_coverage(conf, right, 0.0)
    with pytest.raises(ValueError):
        brier_score([1.2], [1])


def _entry(i, truth, answer, confidence, abstained=False, reason=None, probe_set=None):
    entry = {"id": str(i), "answer": answer, "answer_type": "CLOSED", "confidence": confidence,
             "abstained": abstained, "reason": reason}
    if truth is not None:
        entry["ground_truth"] = truth
    if probe_set is not None:
        entry["probe_set"] = probe_set
    return entry


def test_vqa_metric_trust_section_and_probe_sets(tmp_path):
    entries = [
        _entry(0, "yes", "yes", 0.95, probe_set="in_domain"),
        _entry(1, "no", "yes", 0.60, probe_set="in_domain"),
        _entry(2, "no", "no", 0.90, probe_set="lesion_free"),
        _entry(3, "no", "yes", 0.55, True, REASON_IMAGE_INDEPENDENT, probe_set="lesion_free"),
        _entry(4, "no", "yes", 0.99, True, REASON_OUT_OF_DOMAIN, probe_set="noise"),
        _entry(5, None, "yes", 0.99, True, REASON_OUT_OF_DOMAIN, probe_set="ct_small"),
        _entry(6, None, "no", 0.70, probe_set="ct_small"),
    ]
    metric = VQAMetric(report_dir=tmp_path, bootstrap_resamples=50)
    metric(*vqa_output_transform({"pred": entries}))
    metric.aggregate()
    trust = metric.results["trust"]
    assert metric.results["overall"]["count"] == 5  # the two refusal-only probes are not scored
    closed = trust["answers"]["closed"]
    assert closed["count"] == 5 and closed["accuracy"] == pytest.approx(2 / 5)
    assert closed["brier"] == pytest.approx(np.mean([0.05**2, 0.6**2, 0.1**2, 0.55**2, 0.99**2]))
    assert closed["auroc"] == pytest.approx(auroc([0.95, 0.6, 0.9, 0.55, 0.99], [1, 0, 1, 0, 0]))
    assert closed["abstention_rate"] == pytest.approx(2 / 5) and closed["answered_accuracy"] == pytest.approx(2 / 3)
    lo, hi = closed["ece_95ci"]
    assert 0 <= lo <= hi <= 1
    lesion_free = trust["probe_sets"]["lesion_free"]
    assert lesion_free["false_yes"]["questions"] == 2 and lesion_free["false_yes"]["rate"] == 0.5
    assert lesion_free["reason_rates"] == {REASON_IMAGE_INDEPENDENT: 0.5} and lesion_free["gate_refusal_rate"] == 0.0
    ct = trust["probe_sets"]["ct_small"]
    assert ct["count"] == 2 and ct["gate_refusal_rate"] == 0.5 and ct["false_yes"]["questions"] == 0
    assert trust["probe_sets"]["noise"]["gate_refusal_rate"] == 1.0
    assert set(trust["plots"]) == {"reliability_diagram", "risk_coverage"}
    assert "## Trust" in (tmp_path / "vqa_metrics.md").read_text()


def test_no_trust_section_without_confidences():
    metric = VQAMetric()
    metric(["yes", "no"], [{"ground_truth": "yes", "question_id": "a"}, {"ground_truth": "yes", "question_id": "b"}])
    metric.aggregate()
    assert "trust" not in metric.results
    with pytest.raises(Exception, match="ground_truth"):
        vqa_output_transform({"pred": [{"id": "x", "answer": "yes"}]})  # no truth and no probe set
