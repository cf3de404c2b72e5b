# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The cost of the trust fields: the same questions answered with ``trust=True`` and ``trust=False``, same run.

Held-out 2-D phantoms (``write_vqa_datalist``, DICOM files) and their closed and open questions are answered by
``LlavaMedPredictor.ask_batch`` with the model of ``--model_dir`` (default the bundle's demo model), once with the
trust fields and once without (the baseline: plain answering), in alternating rounds so that both see the same
machine load; the figure is the median over rounds of the ratio of the two times. Two settings:

* ``end_to_end``: what a user waits for: each image read and preprocessed (once per batch for the questions of the
  batch about it, as ``ask_batch`` does), the prompt built, ``generate``, and with trust its extra teacher-forced
  pass with the neutral image (``docs/trust.md``);
* ``model_only``: the pixels of each image prepared once beforehand (a memoising ``preprocess``), so the time is the
  prompt, ``generate`` and the trust pass: the ratio a user with a slow reader would not see.

The answers with and without trust must be identical (trust never changes what is generated); the run stops if not.

Run: ``python benchmarks/bench_trust.py [--cases 32] [--rounds 5] [--batch-size 16] [--model_dir DIR]``.
Issue #13 goal: ratio <= 1.3. Output: ``RESULT`` lines, one per setting.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import torch

from monai_llava_med.data.phantom import write_vqa_datalist
from monai_llava_med.engines import LlavaMedPredictor, build_preprocess

MODELS = Path(__file__).resolve().parents[1] / "bundles" / "llava_med" / "models"


def memoised(preprocess):
    """``preprocess`` with its output kept per path (``model_only``: reading is taken out of the timing)."""
    cache: dict[str, object] = {}

    def run(path: str):
        if path not in cache:
            cache[path] = preprocess(path)
        return cache[path]

    return run


def timed(predictor: LlavaMedPredictor, items: list[dict], args) -> tuple[float, list[str]]:
    start = time.perf_counter()
    entries = predictor.ask_batch(items, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    return time.perf_counter() - start, [e.get("answer", e.get("error")) for e in entries]


def measure(name: str, on: LlavaMedPredictor, off: LlavaMedPredictor, items: list[dict], args) -> None:
    timed(on, items[: args.batch_size], args), timed(off, items[: args.batch_size], args)  # warm-up
    ratios, t_on, t_off = [], [], []
    for r in range(args.rounds):
        order = (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on))
        got = {}
        for label, predictor in order:
            got[label] = timed(predictor, items, args)
        if got["on"][1] != got["off"][1]:
            raise SystemExit(f"{name}: answers differ with and without trust")
        t_on.append(got["on"][0])
        t_off.append(got["off"][0])
        ratios.append(got["on"][0] / got["off"][0])
    n = len(items)
    print(f"RESULT setting={name} questions={n} rounds={args.rounds} batch_size={args.batch_size} "
          f"trust_off_ms_per_question={1000 * statistics.median(t_off) / n:.2f} "
          f"trust_on_ms_per_question={1000 * statistics.median(t_on) / n:.2f} "
          f"ratio={statistics.median(ratios):.3f} ratio_min={min(ratios):.3f} ratio_max={max(ratios):.3f} goal=1.3",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", default=str(MODELS))
    parser.add_argument("--cases", type=int, default=32, help="held-out phantoms (about 7 questions each)")
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="4 phantoms, 2 rounds: checks the code path")
    args = parser.parse_args()
    if args.smoke:
        args.cases, args.rounds = 4, 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        datalist = write_vqa_datalist(Path(tmp) / "data", args.cases, seed=args.seed)
        items = [{"image": str(Path(tmp) / "data" / it["image"]), "question": it["question"]}
                 for it in json.loads(datalist.read_text())]
        on = LlavaMedPredictor.from_pretrained(args.model_dir, device="cpu", trust=True)
        off = LlavaMedPredictor(on.model, on.tokenizer, preprocess=on.prepare.preprocess, trust=False)
        measure("end_to_end", on, off, items, args)
        cached = memoised(build_preprocess(on.model))
        on_cached = LlavaMedPredictor(on.model, on.tokenizer, preprocess=cached, trust=True,
                                      calibration=on.calibration)
        off_cached = LlavaMedPredictor(on.model, on.tokenizer, preprocess=cached, trust=False)
        measure("model_only", on_cached, off_cached, items, args)


if __name__ == "__main__":
    main()
