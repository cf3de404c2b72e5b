# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Calibration: Platt scaling, the conformal risk control threshold against its analytic value, ``calibration.json``
round trip and auto-load, and the fit through Python and through the bundle's ``calibrate.json``."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from test_bundle import BUNDLE, CONFIGS
from test_trust_fields import DEMO

from monai.bundle import ConfigWorkflow
from monai_llava_med.data.phantom import write_vqa_datalist
from monai_llava_med.engines import LlavaMedPredictor, fit_calibration
from monai_llava_med.errors import BundleError, CalibrationError
from monai_llava_med.networks import load_pretrained, save_pretrained
from monai_llava_med.trust import (
    CALIBRATION_FILE,
    GATE_FILE,
    REASON_LOW_CONFIDENCE,
    Calibration,
    PlattScaling,
    conformal_risk_threshold,
    load_calibration,
)


def _perfectly_calibrated(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Confidences ``c ~ U(0, 1)``, each answer right with probability ``c``."""
    c = rng.uniform(size=n)
    return c, rng.uniform(size=n) < c


def test_conformal_threshold_meets_the_analytic_risk():
    # P(answered and wrong) at threshold t = integral_t^1 (1 - c) dc = (1 - t)^2 / 2  ->  t* = 1 - sqrt(2 alpha)
    rng = np.random.default_rng(0)
    for alpha in (0.05, 0.1):
        exact = 1 - math.sqrt(2 * alpha)
        c, correct = _perfectly_calibrated(40_000, rng)
        assert conformal_risk_threshold(c, correct, alpha) == pytest.approx(exact, abs=0.01)
    # the guarantee: over many calibration draws of n = 200, the mean risk on fresh answers stays <= alpha
    risks = []
    for _ in range(300):
        t = conformal_risk_threshold(*_perfectly_calibrated(200, rng), 0.1)
        risks.append((1 - min(t, 1.0)) ** 2 / 2)
    assert np.mean(risks) <= 0.1 and np.mean(risks) >= 0.08  # valid, and not wastefully strict


def test_conformal_threshold_edge_cases():
    assert conformal_risk_threshold([0.2, 0.9], [True, True], 0.1) > 1.0  # n + 1 < 1 / alpha: withhold all
    assert conformal_risk_threshold([0.3] * 30 + [0.9] * 9, [True] * 39, 0.05) == 0.0  # no error: answer all
    # 39 answers, alpha 0.05: (k + 1) / 40 <= 0.05 allows k = 1 wrong answer; the second-most confident wrong goes
    c = np.array([0.95, 0.8, 0.7] + [0.99] * 36)
    t = conformal_risk_threshold(c, np.array([False, False, False] + [True] * 36), 0.05)
    assert 0.8 < t < 0.8 + 1e-9
    with pytest.raises(ValueError):
        conformal_risk_threshold([0.5], [True], 0.0)


def test_platt_scaling_recovers_a_known_distortion():
    rng = np.random.default_rng(1)
    true = rng.uniform(0.02, 0.98, size=20_000)
    correct = rng.uniform(size=true.size) < true
    logit = np.log(true / (1 - true))
    over = 1 / (1 + np.exp(-(3.0 * logit + 0.5)))  # an over-confident model: raw log-odds = 3 * true + 0.5
    fitted = PlattScaling.fit(over, correct)
    assert fitted.a == pytest.approx(1 / 3, rel=0.05) and fitted.b == pytest.approx(-0.5 / 3, abs=0.05)
    assert np.abs(fitted(over) - true).max() < 0.03
    assert PlattScaling.fit([0.9, 0.8], [True, True]).a < 50  # no error: Platt's smoothed targets keep it finite
    assert PlattScaling()(0.7) == pytest.approx(0.7)


def test_calibration_round_trip_and_auto_load(tiny_model, tiny_tokenizer, tmp_path):
    import torch

    from monai_llava_med.trust import FeatureGate

    folder = save_pretrained(tiny_model, tmp_path / "model", tiny_tokenizer)
    width = 2 * tiny_model.projector[0].in_features  # token mean and spread of the projector's input
    gate = FeatureGate(mean=torch.arange(float(width)), precision=torch.eye(width), threshold=3.5, n_fit=7,
                       n_calibration=4)
    calibration = Calibration(scaling={"closed": PlattScaling(0.5, 0.25, 10), "open": PlattScaling(2.0, -1.0, 5)},
                              thresholds={"closed": 1.5, "open": 1.5}, target_error=0.05, min_image_reliance=0.0,
                              gate=gate, model="tiny")
    path = calibration.save(folder)
    assert path == folder / CALIBRATION_FILE and (folder / GATE_FILE).is_file()
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temporary file
    loaded = Calibration.load(folder)
    assert loaded.to_dict() == calibration.to_dict()
    assert torch.equal(loaded.gate.mean, gate.mean.float()) and torch.equal(loaded.gate.precision, torch.eye(width))
    model, _ = load_pretrained(folder)  # the extra files do not disturb the weights
    assert torch.equal(model.projector[0].weight, tiny_model.projector[0].weight)
    predictor = LlavaMedPredictor.from_pretrained(folder, device="cpu", max_new_tokens=3)
    assert predictor.calibration.to_dict() == calibration.to_dict()
    result = predictor.ask(None, "What modality?")  # thresholds above 1: every answer is withheld, still shown
    assert result["abstained"] and result["reason"] == REASON_LOW_CONFIDENCE and "answer" in result
    raw = LlavaMedPredictor(model, predictor.tokenizer, max_new_tokens=3).ask(None, "What modality?")
    kind = "closed" if result["answer"].split()[:1] in (["yes"], ["no"]) else "open"
    assert result["confidence"] == pytest.approx(calibration.confidence(raw["confidence"], kind), abs=1e-6)
    assert result["confidence"] != pytest.approx(raw["confidence"], abs=1e-3)  # the scaling was applied
    assert LlavaMedPredictor.from_pretrained(folder, device="cpu", calibration=None).calibration is None
    other = Calibration(gate=FeatureGate(mean=torch.zeros(8), precision=torch.eye(8), threshold=1.0))
    with pytest.raises(CalibrationError, match="4-wide"):  # a gate fitted for another vision tower
        LlavaMedPredictor(model, predictor.tokenizer, calibration=other)
    assert load_calibration(tmp_path) is None
    (folder / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(CalibrationError, match=CALIBRATION_FILE):
        LlavaMedPredictor.from_pretrained(folder, device="cpu")
    (folder / CALIBRATION_FILE).write_text(json.dumps({**calibration.to_dict(), "version": 99}))
    with pytest.raises(CalibrationError, match="version"):
        Calibration.load(folder / CALIBRATION_FILE)


def test_numeric_answers_have_their_own_scaling_and_older_files_scale_them_as_open(tmp_path):
    both = {"closed": PlattScaling(0.5, 0.25, 10), "open": PlattScaling(2.0, -1.0, 5)}
    older = Calibration(scaling=both, thresholds={"closed": 0.2, "open": 0.7})  # a file without the number type
    assert older.confidence(0.6, "number") == pytest.approx(older.confidence(0.6, "open"))
    assert older.min_confidence("number") == 0.7
    newer = Calibration(scaling={**both, "number": PlattScaling(1.0, 1.0, 3)}, thresholds={"number": 0.4})
    assert newer.confidence(0.6, "number") != pytest.approx(newer.confidence(0.6, "open"), abs=1e-3)
    assert newer.min_confidence("number") == 0.4 and newer.min_confidence("closed") == 0.0
    data = newer.to_dict()
    data["scaling"].pop("number")
    data["thresholds"].pop("number")
    loaded = Calibration.from_dict(data, tmp_path, "calibration.json")
    assert loaded.to_dict()["scaling"]["number"] == newer.to_dict()["scaling"]["open"]


def test_fit_calibration_on_demo_phantoms(tmp_path):
    datalist = write_vqa_datalist(tmp_path / "data", 8, seed=41, split="val")
    predictor = LlavaMedPredictor.from_pretrained(DEMO, device="cpu")
    calibration = fit_calibration(predictor, datalist, target_error=0.1, output_dir=tmp_path / "cal",
                                  max_new_tokens=8, batch_size=16)
    assert predictor.calibration is calibration
    summary = calibration.fit_summary
    assert summary["items"] == len(json.loads(datalist.read_text())) and summary["failed"] == 0
    for kind in ("closed", "open", "number"):  # the phantoms' counts are numeric answers
        assert summary[kind]["fit"] > 0 and summary[kind]["calibration"] > 0
        assert 0.0 <= calibration.thresholds[kind] <= 1.0 + 1e-9
    assert calibration.gate is not None and calibration.gate.n_fit == 4 and calibration.gate.n_calibration == 4
    reloaded = LlavaMedPredictor.from_pretrained(DEMO, device="cpu", calibration=tmp_path / "cal", max_new_tokens=8)
    result = reloaded.ask(tmp_path / "data" / "case000.dcm", "Is there a lesion in this image?")
    assert isinstance(result["gate_distance"], float) and 0.0 <= result["confidence"] <= 1.0
    with pytest.raises(CalibrationError, match="answer"):
        fit_calibration(predictor, [{"image": str(tmp_path / "data" / "case000.dcm"), "question": "Q?"}] * 1)


def test_calibrate_config_writes_calibration_json_outside_the_model_folder(tmp_path):
    model_dir = tmp_path / "models"
    shutil.copytree(DEMO, model_dir)
    for shipped in (CALIBRATION_FILE, "gate.safetensors"):  # the demo model ships a calibration: start without it
        (model_dir / shipped).unlink()
    datalist = write_vqa_datalist(tmp_path / "data", 3, seed=43, split="val")
    out = tmp_path / "calibration"
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "calibrate.json"), meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=str(CONFIGS / "logging.conf"), workflow_type=None,
                              bundle_root=str(BUNDLE), model_dir=str(model_dir), datalist=str(datalist),
                              output_dir=str(out), max_new_tokens=8, target_error=0.1)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    written = json.loads((out / CALIBRATION_FILE).read_text())
    assert written["target_error"] == 0.1 and written["model"] == "llava-med-phantom-demo" and written["gate"]
    assert not (model_dir / CALIBRATION_FILE).exists()
    parser = workflow.parser
    assert parser.get_parsed_content("output_dir") == str(out)
    with pytest.raises(Exception) as refused:  # MONAI wraps the expression's error; the typed cause is in the chain
        ConfigWorkflow(config_file=str(CONFIGS / "calibrate.json"), workflow_type=None, bundle_root=str(BUNDLE),
                       model_dir=str(model_dir), datalist=str(datalist), output_dir=str(model_dir)).run()
    from monai_llava_med.engines import typed_cause

    assert isinstance(typed_cause(refused.value), BundleError)


def test_bundle_inference_reads_the_calibration_dir(tmp_path):
    import csv

    from test_bundle import _run, _workflow

    datalist = write_vqa_datalist(tmp_path / "data", 3, seed=47, split="val")
    predictor = LlavaMedPredictor.from_pretrained(DEMO, device="cpu")
    fit_calibration(predictor, datalist, target_error=0.1, output_dir=tmp_path / "cal", max_new_tokens=8)
    out, questions = tmp_path / "answers", tmp_path / "data" / "questions.json"
    questions.write_text(json.dumps(json.loads(datalist.read_text())[:4]))
    _run(_workflow(["inference.json"], model_dir=str(DEMO), calibration_dir=str(tmp_path / "cal"),
                   datalist=str(questions), output_dir=str(out), max_new_tokens=8))
    answers = json.loads((out / "answers.json").read_text())
    assert len(answers) == 4 and all(isinstance(a["gate_distance"], float) and 0 <= a["confidence"] <= 1 for a in answers)
    with (out / "answers.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"confidence", "image_reliance", "abstained", "reason", "gate_distance"} <= set(rows[0])
    assert [r["abstained"] for r in rows] == [str(a["abstained"]) for a in answers]
    _run(_workflow(["inference.json"], model_dir=str(DEMO), datalist=str(questions), output_dir=str(out),
                   max_new_tokens=8, trust=False))
    assert "confidence" not in json.loads((out / "answers.json").read_text())[0]
