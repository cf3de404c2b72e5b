# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The bundle's evaluate path with the demo model on a small probe-set datalist: the trust section, per probe set
rates, the two PNGs, and paired probes through ``--paired_probes true``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

from monai_llava_med.data.phantom import OUT_OF_DOMAIN_SETS, PROBE_SETS, write_probe_datalist
from monai_llava_med.trust import REASON_CONTRADICTION, REASONS

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "llava_med"
CONFIGS = BUNDLE / "configs"
DEMO = BUNDLE / "models"


def test_probe_datalist_marks_every_item_with_its_set(tmp_path):
    items = json.loads(write_probe_datalist(tmp_path, 2, seed=3).read_text())
    counts = Counter(it["probe_set"] for it in items)
    assert set(counts) == set(PROBE_SETS)
    assert counts["ct_small"] == counts["mr_small"] == 1 and counts["photo"] == counts["noise"] == 2
    lesion_free = [it for it in items if it["probe_set"] == "lesion_free"]
    assert lesion_free and {it["answer"] for it in lesion_free} == {"no"}  # only questions about the absent lesion
    assert all(it.get("answer") is None for it in items if it["probe_set"] in ("ct_small", "mr_small", "photo"))
    assert all((tmp_path / it["image"]).is_file() for it in items)
    assert len({it["id"] for it in items}) == len(items)
    noise = np.asarray(Image.open(tmp_path / "noise" / "noise000.png"))
    assert noise.shape == (64, 64, 3) and noise.std() > 50
    with pytest.raises(ValueError, match="unknown probe sets"):
        write_probe_datalist(tmp_path, 1, seed=0, sets=["nope"])


def _png_is_a_plot(path: Path) -> None:
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] >= 300 and image.shape[1] >= 300
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # lines, text and bars, not a blank canvas
    assert (image.min(-1) < 128).mean() > 0.005  # some dark ink (axes and labels)


def test_bundle_evaluate_writes_the_trust_section_and_plots(tmp_path):
    datalist = write_probe_datalist(tmp_path / "probes", 1, seed=11)
    out = tmp_path / "eval"
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")],
        meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer",
        bundle_root=str(BUNDLE), model_dir=str(DEMO), datalist=str(datalist), output_dir=str(out), max_new_tokens=4,
        batch_size=8, paired_probes=True, bootstrap_resamples=100,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    try:
        workflow.run()
    finally:
        workflow.finalize()
    items = json.loads(datalist.read_text())
    report = json.loads((out / "vqa_metrics.json").read_text())
    trust = report["trust"]
    scored = [it for it in items if it.get("answer") is not None]
    assert report["overall"]["count"] == len(scored)
    assert trust["bins"] == 15 and trust["bootstrap"]["resamples"] == 100
    for name in ("all", "closed", "open"):
        group = trust["answers"][name]
        assert group["count"] > 0 and 0 <= group["ece"] <= 1 and 0 <= group["brier"] <= 1
        lo, hi = group["ece_95ci"]
        assert 0 <= lo <= hi <= 1
        assert set(group["accuracy_at_coverage"]) == {"0.8", "0.9"}
        assert 0 <= group["abstention_rate"] <= 1
    assert trust["answers"]["closed"]["count"] + trust["answers"]["open"]["count"] == len(scored)
    assert set(trust["probe_sets"]) == set(PROBE_SETS)
    for name, summary in trust["probe_sets"].items():
        assert summary["count"] == sum(it["probe_set"] == name for it in items)
        assert set(summary["reason_rates"]) <= set(REASONS)
    # the demo model ships its input gate: it refuses the out-of-domain probe sets, not the in-domain phantoms
    # (pydicom's MR_small, a dark small head slice, passes this phantom-fitted gate: a known gap, docs/trust.md)
    refused = {name: summary["gate_refusal_rate"] for name, summary in trust["probe_sets"].items()}
    assert all(refused[name] >= 0.5 for name in OUT_OF_DOMAIN_SETS if name != "mr_small"), refused
    assert refused["in_domain"] <= 0.5, refused
    lesion_free = trust["probe_sets"]["lesion_free"]["false_yes"]
    assert lesion_free["questions"] == sum(it["probe_set"] == "lesion_free" for it in items)
    answers = {a["id"]: a for a in json.loads((out / "answers.json").read_text())}
    said_yes = sum(answers[it["id"]]["answer"].lower().startswith("yes") for it in items
                   if it["probe_set"] == "lesion_free")
    assert lesion_free["yes"] == said_yes  # counted from the answers themselves
    for name in OUT_OF_DOMAIN_SETS:
        assert trust["probe_sets"][name]["abstention_rate"] is not None
    for key in ("reliability_diagram", "risk_coverage"):
        _png_is_a_plot(out / trust["plots"][key])
    # paired probes through the bundle: every answer carries them; a contradiction abstains with its reason
    assert all("paired_answer" in a and "probe_set" in a for a in answers.values())
    assert any(a["paired_question"] for a in answers.values())
    assert all(a["paired_question"] is None for a in answers.values() if a["answer_type"] == "OPEN")
    for a in answers.values():
        if a["reason"] == REASON_CONTRADICTION:
            assert a["abstained"] and a["answer"].split()[0].lower() == a["paired_answer"].split()[0].lower()
    header = (out / "answers.csv").read_text().splitlines()[0]
    assert header.endswith("paired_question,paired_answer,probe_set")
