# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The bundle's demo model on held-out phantoms, each figure next to its own baselines, all on the same set.

Held-out 2-D phantoms (``write_vqa_datalist``, a seed the model was not trained on) are answered through the
bundle's evaluate path (``ConfigWorkflow`` on ``inference.json`` + ``evaluate.json``, as ``tests/test_bundle.py``
runs it), and scored by its VQA metric. On the same questions:

* the per-question majority baseline: every question answered with the answer most frequent for that question
  text in this set (the best a model ignoring the image can do on it, an optimistic baseline since it is fitted
  to the set itself);
* the blanked-image baseline: the same questions through the same path with every image replaced by the
  neutral image (a PNG of the CLIP mean colour, which normalises to zero pixels: what bench_train's control saw).

Held-out volumes (``write_volume_vqa_datalist``: DICOM series, lesions only away from the middle slices) are
answered through the same path with the model's own views (``max_views`` / ``view_mode`` of its config), next to
the same model shown only the middle slice (the bundle's ``max_views=1 view_mode=axial`` override: what a 2-D-only
model sees) and the per-question majority.

Accuracies come with Wilson 95 % intervals. ``--manifest`` records the figures in the demo model's
``MANIFEST.json`` (``evaluation``), which ``tests/test_demo_model.py`` checks a fresh sample against.

Run: ``python benchmarks/bench_demo_model.py [--cases 200] [--seed 2026] [--manifest
bundles/llava_med/models/MANIFEST.json]``.
Last line ``RESULT ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from monai.bundle import ConfigWorkflow
from PIL import Image

from monai_llava_med.constants import CLIP_MEAN
from monai_llava_med.data.phantom import write_volume_vqa_datalist, write_vqa_datalist
from monai_llava_med.metrics import normalize_answer, score_question, wilson_interval

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "llava_med"
#: Question families of the measurement (the demo's closed families, count and modality; not "location").
FAMILIES = ("presence", "side", "brightness", "modality_closed", "count", "modality")


def evaluate_bundle(
    datalist: Path, out: Path, batch_size: int, max_new_tokens: int, reuse: bool = False, **overrides: object
) -> dict[str, bool]:
    """Run the bundle's evaluate path on ``datalist``; ``{question id: correct}`` from its metric report.

    With ``reuse``, a report already in ``out`` (from an earlier run on the same work folder) is read instead;
    ``overrides`` are further bundle overrides (``max_views``, ``view_mode``).
    """
    if reuse and (out / "vqa_metrics.json").is_file():
        report = json.loads((out / "vqa_metrics.json").read_text())
        return {q["question_id"]: bool(q["correct"]) for q in report["per_question"]}
    configs = BUNDLE / "configs"
    workflow = ConfigWorkflow(
        config_file=[str(configs / "inference.json"), str(configs / "evaluate.json")],
        meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"), workflow_type="infer",
        bundle_root=str(BUNDLE), datalist=str(datalist), output_dir=str(out), batch_size=batch_size,
        max_new_tokens=max_new_tokens, **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    report = json.loads((out / "vqa_metrics.json").read_text())
    return {q["question_id"]: bool(q["correct"]) for q in report["per_question"]}


def majority_correct(items: list[dict]) -> dict[str, bool]:
    """Each question answered with its text's most frequent answer in ``items``, scored like the model."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for item in items:
        counts[item["question"]][normalize_answer(item["answer"])] += 1
    return {
        item["id"]: score_question(item["id"], "phantom", item["answer_type"], item["answer"],
                                   counts[item["question"]].most_common(1)[0][0]).correct
        for item in items
    }


def summary(correct: dict[str, bool], ids: list[str]) -> dict[str, float | int]:
    """Accuracy over ``ids`` with its Wilson 95 % interval."""
    n, k = len(ids), sum(correct[i] for i in ids)
    low, high = wilson_interval(k, n)
    return {"n": n, "correct": k, "acc": round(k / n, 4), "ci95": [round(low, 4), round(high, 4)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=200, help="held-out phantoms")
    parser.add_argument("--seed", type=int, default=2026, help="data seed (the demo was trained on seed 0)")
    parser.add_argument("--volumes", type=int, default=60, help="held-out volumes (DICOM series)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--work-dir", default=None, help="keep the data and answers here (default: temporary)")
    parser.add_argument("--reuse-reports", action="store_true", help="read the metric reports already in --work-dir")
    parser.add_argument("--manifest", default=None, help="record the figures under 'evaluation' in this MANIFEST.json")
    args = parser.parse_args()
    start = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_demo_"))
    datalist = write_vqa_datalist(work / "data", args.cases, seed=args.seed, families=FAMILIES)
    items = json.loads(datalist.read_text())
    Image.new("RGB", (64, 64), tuple(round(m * 255) for m in CLIP_MEAN)).save(work / "data" / "neutral.png")
    blank = work / "data" / "blanked.json"
    blank.write_text(json.dumps([{**item, "image": "neutral.png"} for item in items]))

    run = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "reuse": args.reuse_reports}
    scores = {
        "model": evaluate_bundle(datalist, work / "model", **run),
        "majority_per_question": majority_correct(items),
        "blanked_image": evaluate_bundle(blank, work / "blanked", **run),
    }
    evaluation: dict[str, object] = {
        "command": f"python benchmarks/bench_demo_model.py --cases {args.cases} --seed {args.seed} "
                   f"--batch-size {args.batch_size} --max-new-tokens {args.max_new_tokens}",
        "data": f"write_vqa_datalist(n_cases={args.cases}, seed={args.seed}, split='test', size=64, "
                f"families={list(FAMILIES)})",
        "interval": "Wilson 95 %",
    }
    print(f"{args.cases} held-out phantoms (seed {args.seed}), {len(items)} questions")
    print(f"{'':8s} {'n':>5s} {'model':>24s} {'majority per question':>24s} {'blanked image':>24s}")
    for kind, key in (("CLOSED", "closed"), ("OPEN", "open")):
        ids = [item["id"] for item in items if item["answer_type"] == kind]
        rows = {name: summary(correct, ids) for name, correct in scores.items()}
        evaluation[key] = rows
        cells = [f"{r['acc']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" for r in rows.values()]
        print(f"{kind:8s} {len(ids):5d} " + " ".join(f"{c:>24s}" for c in cells))
    vol_list = write_volume_vqa_datalist(work / "volumes", args.volumes, seed=args.seed)
    vol_items = json.loads(vol_list.read_text())
    vol_scores = {
        "model": evaluate_bundle(vol_list, work / "volume_model", **run),
        "middle_slice": evaluate_bundle(vol_list, work / "volume_middle", **run, max_views=1, view_mode="axial"),
        "majority_per_question": majority_correct(vol_items),
    }
    evaluation["volume_data"] = (f"write_volume_vqa_datalist(n_cases={args.volumes}, seed={args.seed}, split='test', "
                                 f"size=64, depth=48)")
    print(f"{args.volumes} held-out volumes, {len(vol_items)} questions")
    for kind, key in (("CLOSED", "volume_closed"), ("OPEN", "volume_open")):
        ids = [item["id"] for item in vol_items if item["answer_type"] == kind]
        rows = {name: summary(correct, ids) for name, correct in vol_scores.items()}
        evaluation[key] = rows
        cells = [f"{name} {r['acc']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" for name, r in rows.items()]
        print(f"volume {kind:8s} {len(ids):5d} " + "  ".join(cells))
    if args.manifest:
        path = Path(args.manifest)
        manifest = json.loads(path.read_text())
        manifest["evaluation"] = evaluation
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"recorded in {path}")
    closed, opened = evaluation["closed"], evaluation["open"]
    print(
        f"RESULT closed_acc={closed['model']['acc']:.4f} ci95={closed['model']['ci95']} "
        f"closed_majority={closed['majority_per_question']['acc']:.4f} "
        f"closed_blanked={closed['blanked_image']['acc']:.4f} open_acc={opened['model']['acc']:.4f} "
        f"open_majority={opened['majority_per_question']['acc']:.4f} open_blanked={opened['blanked_image']['acc']:.4f} "
        f"n_closed={closed['model']['n']} n_open={opened['model']['n']} "
        f"volume_acc={evaluation['volume_closed']['model']['acc']:.4f} "
        f"volume_middle_slice_acc={evaluation['volume_closed']['middle_slice']['acc']:.4f} "
        f"volume_majority={evaluation['volume_closed']['majority_per_question']['acc']:.4f} "
        f"minutes={(time.perf_counter() - start) / 60:.2f}"
    )


if __name__ == "__main__":
    main()
