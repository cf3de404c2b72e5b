# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Issue #13's goals measured: calibration, selective accuracy, hallucination, the input gate, image reliance and
paired probes of a model, each figure next to its goal and its baseline (the same answers without abstention).

1. **Fit** (the only data any choice is made on): the model of ``--model_dir`` is loaded *without* its shipped
   calibration (``calibration=None``) and :func:`~monai_llava_med.engines.fit_calibration` fits the Platt scaling,
   the conformal thresholds (``--target-error``) and the input gate on a **val** split of fresh phantoms
   (``write_vqa_datalist`` + ``write_volume_vqa_datalist``, ``split='val'``, ``--val-seed``), saved to a folder.
2. **Test**, once, through the bundle's evaluate path (``ConfigWorkflow`` on ``inference.json`` + ``evaluate.json``,
   ``calibration_dir`` = the fitted folder, as ``bench_demo_model.py`` runs it) on a **test** split (``split='test'``,
   ``--test-seed``): ECE (15 bins, bootstrap 95 % interval), Brier, AUROC, accuracy at 80 % / 90 % coverage of the
   closed answers from ``vqa_metrics.json``'s ``trust`` section, next to the accuracy of all closed answers; the ECE
   of the count answers (``calibration_summary`` of the same records); the gate's refusals of test phantoms.
3. **Probe sets** (``write_probe_datalist``, ``--probe-seed``, lesion-free phantoms and out-of-domain images): gate
   refusal per set; the hallucination rate, "yes" given (not abstained) to "Is there a lesion in this image?" about
   a lesion-free phantom, with its Wilson interval, next to the raw "yes" rate (the model without abstention).
4. **Blanked images**: the test questions with every image replaced by the bundle's blanked baseline
   (``--blank-fill neutral``: a PNG of the pad colour, the CLIP mean colour as 8-bit values, which is exactly the
   neutral image that image reliance compares with; ``black``: an all-black PNG, a different blank): the share
   flagged, ``image_reliance`` below the calibration's ``min_image_reliance`` or withheld as "answer does not depend
   on the image" (the gate's refusals of these images are printed beside it, not counted).
5. **Paired probes** (``paired_probes=True``) on the consistency questions (presence, left, right, count) of the test
   phantoms: the share of phantoms whose four answers contradict each other (``vqa_scoring.consistent_answers``),
   among those with no answer withheld, next to the share among all phantoms (baseline).

Run: ``python benchmarks/bench_trust_eval.py [--model_dir DIR] [--smoke]``. Last line ``RESULT ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from monai.bundle import ConfigWorkflow
from PIL import Image
from vqa_scoring import check_disjoint, consistent_answers, fmt, wilson  # benchmarks/ (script dir)

from monai_llava_med.constants import CLIP_MEAN, REASON_IMAGE_INDEPENDENT, REASON_OUT_OF_DOMAIN
from monai_llava_med.data.phantom import (
    OUT_OF_DOMAIN_SETS,
    case_rng,
    generate_phantom,
    write_probe_datalist,
    write_volume_vqa_datalist,
    write_vqa_datalist,
)
from monai_llava_med.engines import LlavaMedPredictor, fit_calibration
from monai_llava_med.metrics import calibration_summary, closed_answer, normalize_answer

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "llava_med"
#: question text -> its role in the consistency rule (2-D phantoms and volumes).
CONSISTENCY = {
    "Is there a lesion in this image?": "presence", "Is there a lesion on the left side?": "left",
    "Is there a lesion on the right side?": "right", "How many lesions are there?": "count",
    "Is there a lesion anywhere in this scan?": "presence", "Is there a lesion on the left side of this scan?": "left",
    "Is there a lesion on the right side of this scan?": "right", "How many lesions are in this scan?": "count",
}
PRESENCE = "Is there a lesion in this image?"
COUNT_FAMILIES = ("count", "volume_count")


def write_split(folder: Path, cases: int, volumes: int, seed: int, split: str) -> Path:
    """2-D phantoms and volumes of one split in one ``datalist.json`` (volumes under ``volumes/``)."""
    items = json.loads(write_vqa_datalist(folder, cases, seed=seed, split=split).read_text())
    if volumes:
        vol = json.loads(write_volume_vqa_datalist(folder / "volumes", volumes, seed=seed, split=split).read_text())
        items += [{**it, "image": f"volumes/{it['image']}"} for it in vol]
    path = folder / "datalist.json"
    path.write_text(json.dumps(items))
    return path


def run_bundle(datalist: Path, out: Path, args: argparse.Namespace, calibration: Path,
               **overrides: object) -> tuple[dict, list[dict]]:
    """The bundle's evaluate path on ``datalist``: ``(vqa_metrics.json, answers.json)``."""
    configs = BUNDLE / "configs"
    workflow = ConfigWorkflow(
        config_file=[str(configs / "inference.json"), str(configs / "evaluate.json")],
        meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"), workflow_type="infer",
        bundle_root=str(BUNDLE), model_dir=str(args.model_dir), datalist=str(datalist), output_dir=str(out),
        calibration_dir=str(calibration), batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        bootstrap_resamples=args.resamples, **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return json.loads((out / "vqa_metrics.json").read_text()), json.loads((out / "answers.json").read_text())


def records(report: dict, answers: list[dict], items: list[dict]) -> list[dict]:
    """One record per answer: its datalist item, its trust fields and its VQA score (``correct``, ``closed_pred``)."""
    by_id = {it["id"]: it for it in items}
    scores = {q["question_id"]: q for q in report.get("per_question", [])}
    out = []
    for entry in answers:
        score = scores.get(str(entry["id"]), {})
        out.append({**by_id[entry["id"]], **entry, "correct": score.get("correct"),
                    "closed_pred": score.get("closed_pred")})
    return out


def refused(recs: list[dict]) -> list[int]:
    """One 0/1 per distinct image: refused by the input gate."""
    per_image: dict[str, int] = {}
    for r in recs:
        key = str(r["image"])
        per_image[key] = max(per_image.get(key, 0), int(r.get("reason") == REASON_OUT_OF_DOMAIN))
    return list(per_image.values())


def contradictions(recs: list[dict]) -> tuple[list[int], list[int]]:
    """Per phantom with all four consistency answers: 0/1 contradictory, for all of them and for the answered ones."""
    phantoms: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in recs:
        if r["question"] in CONSISTENCY:
            phantoms[str(r["image"])][CONSISTENCY[r["question"]]] = r
    every, answered = [], []
    for four in phantoms.values():
        if len(four) < 4:
            continue
        bad = int(not consistent_answers(*(closed_answer(four[k].get("answer")) for k in ("presence", "left", "right")),
                                         normalize_answer(four["count"].get("answer") or "")))
        every.append(bad)
        if not any(r.get("abstained") for r in four.values()):
            answered.append(bad)
    return every, answered


def num(value: float | None) -> str:
    """A figure with four decimals (``nan`` for none)."""
    return "nan" if value is None else f"{value:.4f}"


def line(name: str, value: float | None, goal: str | None, **extra: object) -> str:
    """``RESULT name=value [goal_name=goal] key=value ...`` (an interval ``[lo, hi]`` as ``lo-hi``)."""
    fields = [f"{k}={num(v[0])}-{num(v[1])}" if isinstance(v, (list, tuple)) else f"{k}={v}" for k, v in extra.items()]
    return " ".join([f"RESULT {name}={num(value)}", *([f"goal_{name}={goal}"] if goal else []), *fields])


def disjoint_phantoms(args: argparse.Namespace) -> None:
    """Refuse to run when the val, test and lesion-free 2-D phantoms share an image (``vqa_scoring.check_disjoint``)."""
    def cases(seed: int, split: str, n: int, offset: int = 0, lesions: int | None = None) -> list:
        return [generate_phantom(case_rng(seed, split, offset + i), size=64, ndim=2, num_lesions=lesions)
                for i in range(n)]

    check_disjoint({"val": cases(args.val_seed, "val", args.val_cases),
                    "test": cases(args.test_seed, "test", args.test_cases),
                    "lesion_free": cases(args.probe_seed, "test", args.probe_cases, args.probe_cases, 0)})


def sizes(args: argparse.Namespace) -> None:
    """Tiny sizes for ``--smoke``."""
    if args.smoke:
        args.val_cases, args.val_volumes, args.test_cases, args.test_volumes = 16, 2, 12, 2
        args.probe_cases, args.resamples = 6, 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", default=str(BUNDLE / "models"))
    parser.add_argument("--val-cases", type=int, default=300, help="2-D val phantoms (the calibration's fit)")
    parser.add_argument("--val-volumes", type=int, default=60)
    parser.add_argument("--test-cases", type=int, default=300, help="2-D test phantoms (~7 closed questions each)")
    parser.add_argument("--test-volumes", type=int, default=60)
    parser.add_argument("--probe-cases", type=int, default=300, help="images per probe set (lesion-free: phantoms)")
    parser.add_argument("--val-seed", type=int, default=2031)
    parser.add_argument("--test-seed", type=int, default=2032)
    parser.add_argument("--probe-seed", type=int, default=2033)
    parser.add_argument("--target-error", type=float, default=0.02, help="alpha of the conformal thresholds")
    parser.add_argument("--blank-fill", nargs="+", choices=("neutral", "black"), default=["neutral", "black"],
                        help="the blanked runs, in order; the first is summarised on the last line")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the ECE interval")
    parser.add_argument("--work-dir", default=None, help="keep the data and answers here (default: temporary)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the run, measures nothing")
    args = parser.parse_args()
    sizes(args)
    start = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_trust_eval_"))
    print(f"model {args.model_dir}; seeds val={args.val_seed} test={args.test_seed} probes={args.probe_seed}; "
          f"val {args.val_cases}+{args.val_volumes} vol, test {args.test_cases}+{args.test_volumes} vol, "
          f"probes {args.probe_cases}/set; target_error={args.target_error}; work {work}", flush=True)
    disjoint_phantoms(args)

    # 1. the calibration, fitted on the val split only
    val = write_split(work / "val", args.val_cases, args.val_volumes, args.val_seed, "val")
    predictor = LlavaMedPredictor.from_pretrained(args.model_dir, calibration=None)
    fitted = work / "calibration"
    calibration = fit_calibration(predictor, val, args.target_error, batch_size=args.batch_size, output_dir=fitted,
                                  max_new_tokens=args.max_new_tokens)
    del predictor
    gate = calibration.gate
    print(f"calibration (val, {len(json.loads(val.read_text()))} questions): thresholds "
          f"{ {k: round(v, 4) for k, v in calibration.thresholds.items()} } target_error={calibration.target_error} "
          f"min_image_reliance={calibration.min_image_reliance} "
          f"gate_threshold={None if gate is None else round(float(gate.threshold), 3)} "
          f"fit_summary={json.dumps(calibration.fit_summary)}", flush=True)
    min_reliance = calibration.min_image_reliance

    # 2. the test split, once
    test = write_split(work / "test", args.test_cases, args.test_volumes, args.test_seed, "test")
    items = json.loads(test.read_text())
    report, answers = run_bundle(test, work / "eval_test", args, fitted)
    recs = records(report, answers, items)
    closed = report["trust"]["answers"]["closed"]
    count = calibration_summary([r for r in recs if r["family"] in COUNT_FAMILIES and r["answer_type"] == "OPEN"],
                                resamples=args.resamples)
    ci, count_ci = closed["ece_95ci"] or [None, None], count["ece_95ci"] or [None, None]
    print(f"test: {work / 'eval_test' / 'vqa_metrics.json'} (reliability and risk-coverage PNGs beside it)")
    print(line("ece_closed", closed["ece"], "<=0.02", ece_closed_ci95=ci, n=closed["count"],
               bins=report["trust"]["bins"]))
    print(line("ece_count", count["ece"], "<=0.05", ece_count_ci95=count_ci, n=count["count"]))
    print(line("brier_closed", closed["brier"], None, auroc_closed=num(closed["auroc"]), n=closed["count"]))
    for cov in ("0.8", "0.9"):
        print(line(f"acc_at_{int(float(cov) * 100)}_closed", closed["accuracy_at_coverage"][cov],
                   ">=0.99" if cov == "0.8" else None, baseline_acc_all_closed=num(closed["accuracy"]),
                   n=closed["count"]))
    print(line("abstention_closed", closed["abstention_rate"], None, answered=closed["answered_count"],
               answered_acc_closed=num(closed["answered_accuracy"]), baseline_acc_all_closed=num(closed["accuracy"])))
    in_domain, volume = refused(recs), [r for r in recs if r["family"].startswith("volume")]
    print(f"RESULT {fmt('gate_refusal_in_domain', in_domain)} goal_gate_refusal_in_domain=<=0.05 "
          f"images={len(in_domain)} {fmt('gate_refusal_volumes', refused(volume))}")

    # 3. probe sets: hallucination and gate refusal out of domain
    probes = write_probe_datalist(work / "probes", args.probe_cases, seed=args.probe_seed,
                                  sets=("lesion_free", *OUT_OF_DOMAIN_SETS))
    preport, panswers = run_bundle(probes, work / "eval_probes", args, fitted)
    precs = records(preport, panswers, json.loads(probes.read_text()))
    absent = [r for r in precs if r["probe_set"] == "lesion_free" and r["question"] == PRESENCE]
    given_yes = [int(r["closed_pred"] == "yes" and not r.get("abstained")) for r in absent]
    raw_yes = [int(r["closed_pred"] == "yes") for r in absent]
    print(f"RESULT {fmt('hallucination', given_yes)} goal_hallucination=<=0.01_upper<=0.02 "
          f"{fmt('baseline_raw_yes', raw_yes)} n={len(absent)}")
    for name, summary in preport["trust"]["probe_sets"].items():
        print(f"RESULT probe_set={name} n={summary['count']} gate_refusal={num(summary['gate_refusal_rate'])} "
              f"abstention={num(summary['abstention_rate'])} false_yes={num(summary['false_yes']['rate'])} "
              f"reasons={json.dumps(summary['reason_rates'])}")
    ood = refused([r for r in precs if r["probe_set"] in OUT_OF_DOMAIN_SETS])
    print(f"RESULT {fmt('gate_refusal_ood', ood)} goal_gate_refusal_ood=>=0.95 images={len(ood)}")

    # 4. blanked images: answers that cannot come from the image (each fill in turn; the first one is summarised)
    blanked_flagged = {}
    for fill_name in args.blank_fill:
        fill = tuple(int(m * 255) for m in CLIP_MEAN) if fill_name == "neutral" else (0, 0, 0)
        Image.new("RGB", (64, 64), fill).save(work / "test" / f"blank_{fill_name}.png")
        blanked = work / "test" / f"blanked_{fill_name}.json"
        blanked.write_text(json.dumps([{**it, "image": f"blank_{fill_name}.png"} for it in items]))
        breport, banswers = run_bundle(blanked, work / f"eval_blanked_{fill_name}", args, fitted)
        brecs = records(breport, banswers, items)
        flagged = [int((r.get("image_reliance") is not None and r["image_reliance"] < min_reliance)
                       or r.get("reason") == REASON_IMAGE_INDEPENDENT) for r in brecs]
        blanked_flagged[fill_name] = flagged
        withheld = sum(bool(r.get("abstained")) for r in brecs) / len(brecs)
        gate_refused = sum(r.get("reason") == REASON_OUT_OF_DOMAIN for r in brecs) / len(brecs)
        print(f"RESULT {fmt('blanked_flagged', flagged)} goal_blanked_flagged=>=0.95 fill={fill_name} "
              f"min_image_reliance={min_reliance} abstained={withheld:.4f} gate_refused={gate_refused:.4f} "
              f"n={len(brecs)}")
    flagged = blanked_flagged[args.blank_fill[0]]

    # 5. paired probes on the consistency questions
    pitems = [it for it in items if it["question"] in CONSISTENCY]
    paired = work / "test" / "consistency.json"
    paired.write_text(json.dumps(pitems))
    creport, canswers = run_bundle(paired, work / "eval_paired", args, fitted, paired_probes=True)
    every, answered = contradictions(records(creport, canswers, pitems))
    print(f"RESULT {fmt('contradictions_answered', answered)} goal_contradictions_answered=<=0.01 "
          f"answered_phantoms={len(answered)} {fmt('baseline_contradictions_all', every)} phantoms={len(every)}")

    minutes = (time.perf_counter() - start) / 60
    print(f"RESULT ece_closed={num(closed['ece'])} ece_count={num(count['ece'])} "
          f"acc_at_80_closed={num(closed['accuracy_at_coverage']['0.8'])} hallucination={wilson(given_yes)[0]:.4f} "
          f"gate_refusal_ood={wilson(ood)[0]:.4f} gate_refusal_in_domain={wilson(in_domain)[0]:.4f} "
          f"blanked_flagged={wilson(flagged)[0]:.4f} blank_fill={args.blank_fill[0]} contradictions_answered={wilson(answered)[0]:.4f} "
          f"minutes={minutes:.2f}")

if __name__ == "__main__":
    main()
