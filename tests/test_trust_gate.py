# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The input gate: shrinkage covariance, the conformal refusal distance, and, with the demo model fitted on 100
phantoms, blank, noise and real scans refused while held-out phantoms pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from test_trust_fields import DEMO

from monai_llava_med.constants import CLIP_MEAN
from monai_llava_med.data.phantom import write_vqa_datalist
from monai_llava_med.engines import LlavaMedPredictor, fit_calibration
from monai_llava_med.trust import REASON_OUT_OF_DOMAIN, fit_feature_gate, ledoit_wolf_covariance

QUESTION = "Is there a lesion in this image?"


def test_ledoit_wolf_shrinks_towards_the_truth():
    gen = torch.Generator().manual_seed(0)
    isotropic = torch.randn(400, 20, generator=gen)
    _, shrink_iso = ledoit_wolf_covariance(isotropic)
    skewed = torch.randn(4000, 20, generator=gen) * torch.logspace(-1, 1, 20)
    cov, shrink_skew = ledoit_wolf_covariance(skewed)
    assert shrink_iso > 0.8 and shrink_skew < 0.05  # identity-like truth: shrink; far from it: trust the sample
    assert torch.allclose(cov.diagonal()[-5:], torch.logspace(-1, 1, 20, dtype=torch.float64)[-5:] ** 2, rtol=0.1)
    # Ledoit & Wolf (2004), Lemma 3.2-3.4, written out sample by sample on a small case
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 4, 5], dtype=torch.float64)
    xc = x - x.mean(0)
    sample = sum(torch.outer(r, r) for r in xc) / 30
    mu = float(torch.trace(sample)) / 5
    d2 = float(torch.linalg.matrix_norm(sample - mu * torch.eye(5, dtype=torch.float64)) ** 2)
    b2 = min(d2, sum(float(torch.linalg.matrix_norm(torch.outer(r, r) - sample) ** 2) for r in xc) / 30**2)
    cov, shrinkage = ledoit_wolf_covariance(x)
    assert shrinkage == pytest.approx(b2 / d2)
    assert torch.allclose(cov, b2 / d2 * mu * torch.eye(5, dtype=torch.float64) + (1 - b2 / d2) * sample)
    few, _ = ledoit_wolf_covariance(torch.randn(5, 30, generator=gen))  # fewer images than dimensions
    assert float(torch.linalg.eigvalsh(few).min()) > 0


def test_refusal_distance_is_the_conformal_quantile():
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(6000, 8, generator=gen) * 2 + 3
    gate = fit_feature_gate(data[:1000], data[1000:2000], refusal_rate=0.05)
    refused = float((gate.distance(data[2000:]) > gate.threshold).float().mean())
    assert 0.02 <= refused <= 0.07
    # chi distribution with 8 degrees of freedom: P(distance > 3.94) = 0.05
    assert gate.threshold == pytest.approx(3.94, rel=0.06)
    small = fit_feature_gate(data[:50], data[50:60], refusal_rate=0.01)  # k > m: the largest held-out distance
    assert small.threshold == pytest.approx(float(small.distance(data[50:60]).max()))
    with pytest.raises(ValueError, match="fitted on 8-wide"):
        gate.distance(torch.zeros(2, 5))


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate")
    datalist = write_vqa_datalist(folder / "fit", 100, seed=5, split="val", families=("presence",))
    predictor = LlavaMedPredictor.from_pretrained(DEMO, device="cpu", max_new_tokens=4, calibration=None)
    fit_calibration(predictor, datalist, target_error=0.1, batch_size=50, max_new_tokens=2)
    return predictor, folder


def _images(folder):
    Image.new("RGB", (64, 64), tuple(round(m * 255) for m in CLIP_MEAN)).save(folder / "neutral.png")
    Image.new("RGB", (64, 64), (0, 0, 0)).save(folder / "black.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "noise.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / "noise_grey.png")
    return [str(folder / n) for n in ("neutral.png", "black.png", "noise.png", "noise_grey.png")] + [
        get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]


def test_gate_refuses_blank_noise_and_real_scans_and_passes_phantoms(gated):
    predictor, folder = gated
    gate = predictor.calibration.gate
    assert (gate.n_fit, gate.n_calibration) == (50, 50) and gate.width == 2 * predictor.model.projector[0].in_features
    held_out = write_vqa_datalist(folder / "test", 10, seed=77, split="test", families=("presence",))
    phantoms = [{**it, "image": str(folder / "test" / it["image"])} for it in json.loads(held_out.read_text())]
    outside = [{"image": path, "question": QUESTION} for path in _images(folder)]
    results = predictor.ask_batch(phantoms + outside)
    inside = results[: len(phantoms)]
    assert sum(r["reason"] == REASON_OUT_OF_DOMAIN for r in inside) <= 1
    for item, result in zip(outside, results[len(phantoms):]):
        assert result["abstained"] and result["reason"] == REASON_OUT_OF_DOMAIN, item["image"]
        assert result["gate_distance"] > gate.threshold and result["answer"]  # refused, the answer still shown
    assert max(r["gate_distance"] for r in inside) < min(r["gate_distance"] for r in results[len(phantoms):])
