# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Where a 3-D tower model loses a volume fact: in its tower's tokens, or in the language model reading them.

For each saved model (``bench_volumes.py --skip-multiview --skip-control --work-dir W`` keeps it in
``W/t3/stage2/model``; its stage-1 model, ``W/t3/stage1/model``, holds the untrained tower: the baseline):

* **linear probes** on the tower's tokens (all of a volume's tokens side by side, standardised; logistic
  regression, its L2 weight chosen on a held-out fifth of the train volumes, then refitted on all of them and
  scored once on the val volumes) for four facts: a lesion on the left side, a lesion in the upper half, the
  largest lesion on the left, the largest in the upper half (the last two only where ``volume_largest`` asks:
  two or more lesions, the largest clearly so);
* **the model's own answers** to the val volume questions, per family (the same balanced set as
  ``bench_volumes.py``), next to each probe.

A fact a probe reads from the tokens but the model does not answer is lost in the language model, not in the
tower. Needs the pixels ``bench_volumes.py`` cached. Run:
``python benchmarks/probe_volume_tokens.py W/t3/stage2/model W/t3/stage1/model``. Prints ``RESULT`` lines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_volumes import (  # benchmarks/ (script dir): offline environment first
    evaluate, make_volumes, volume_cache, volume_question_set,
)
from vqa_scoring import fmt, groups, pick

from monai_llava_med.data.phantom import clear_largest, lps_affine, volume_findings
from monai_llava_med.errors import LlavaMedError
from monai_llava_med.networks import load_pretrained
from monai_llava_med.networks.vision_towers import tower_features

FACTS = ("any_left", "any_upper", "largest_left", "largest_upper")
#: the question family whose answers each fact stands for
FAMILY = {"any_left": "volume_side", "any_upper": "volume_half", "largest_left": "volume_largest",
          "largest_upper": "volume_largest"}
L2 = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def facts(cases: list) -> dict[str, torch.Tensor]:
    """Each fact per volume (1 / 0; NaN where the largest-lesion facts are not asked)."""
    out: dict[str, list[float]] = {k: [] for k in FACTS}
    for case in cases:
        found = volume_findings(case.label, lps_affine(case))
        big = clear_largest(found)  # the lesion volume_largest asks about, or None
        out["any_left"].append(float(any(f.side == "left" for f in found)))
        out["any_upper"].append(float(any(f.half == "upper" for f in found)))
        out["largest_left"].append(np.nan if big is None else float(big.side == "left"))
        out["largest_upper"].append(np.nan if big is None else float(big.half == "upper"))
    return {k: torch.tensor(v) for k, v in out.items()}


def tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """``(N, tokens x width)``: each volume's tower tokens side by side."""
    with torch.no_grad():
        return torch.cat([tower_features(model.vision_tower, pixels[i:i + 50].flatten(0, 1), model.config).flatten(1)
                          for i in range(0, len(pixels), 50)])


def _fit(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = torch.zeros(x.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor) -> tuple[list, float]:
    """Val hits of a logistic probe (L2 chosen on the last fifth of train), and the L2 chosen."""
    keep, keep_val = ~torch.isnan(y_train), ~torch.isnan(y_val)
    x_train, y_train, x_val, y_val = x_train[keep], y_train[keep], x_val[keep_val], y_val[keep_val]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    cut = int(len(x_train) * 0.8)

    def held_out(l2: float) -> float:
        w, b = _fit(x_train[:cut], y_train[:cut], l2)
        return float(((x_train[cut:] @ w + b > 0).float() == y_train[cut:]).float().mean())

    l2 = max(L2, key=held_out)
    w, b = _fit(x_train, y_train, l2)
    return [int(v) for v in ((x_val @ w + b > 0).float() == y_val)], l2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dirs", nargs="+", help="saved 3-D tower models (stage 2, and stage 1 as the baseline)")
    parser.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / ".cache" / "bench_volumes"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-volumes", type=int, default=1200)
    parser.add_argument("--val-volumes", type=int, default=150)
    parser.add_argument("--eval-questions", type=int, default=1000)
    args = parser.parse_args()
    splits = {"train": args.train_volumes, "val": args.val_volumes}
    cache = Path(args.cache_dir)
    files = {s: volume_cache(cache, s, n, args.seed, "volume") for s, n in splits.items()}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise SystemExit(f"no cached volume pixels {missing}: run bench_volumes.py with the same sizes and seed first")
    cases = {s: make_volumes(s, n, args.seed) for s, n in splits.items()}
    pixels = {s: torch.load(f, weights_only=True) for s, f in files.items()}
    truth = {s: facts(c) for s, c in cases.items()}
    questions = volume_question_set(cases["val"], "val", args.eval_questions, args.seed)  # bench_volumes' val set
    families = groups(questions)
    for model_dir in args.model_dirs:
        try:
            model, tokenizer = load_pretrained(model_dir, dtype=torch.float32)
        except LlavaMedError as err:
            raise SystemExit(str(err)) from None
        model.eval()
        answers = evaluate(model, tokenizer, pixels["val"], questions)
        feats = {s: tokens(model, p) for s, p in pixels.items()}
        for fact in FACTS:
            hits, l2 = probe(feats["train"], truth["train"][fact], feats["val"], truth["val"][fact])
            y = truth["val"][fact]
            majority = float(torch.nanmean(y))
            print(f"RESULT model={model_dir} fact={fact} {fmt('probe_acc', hits)} l2={l2:g} "
                  f"majority={max(majority, 1 - majority):.4f} "
                  f"{fmt('model_answer_acc', pick(answers, families[FAMILY[fact]]))} family={FAMILY[fact]}", flush=True)


if __name__ == "__main__":
    main()
