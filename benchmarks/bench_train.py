# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Proof that the training workflow learns from images: a tiny LLaVA-Med trained from scratch on phantom VQA.

The real workflow (``build_trainer``: DeepSpeed ZeRO-2, MONAI trainer, checkpoints, consolidated export) runs
stage 1 (projector alignment on captions, ``plain`` template, 1 epoch) then stage 2 (projector + language
model on questions, ``mistral_instruct``) with the vision tower frozen at its random initialisation.
Images are made exactly as at inference: each phantom is written as a DICOM file by the phantom writer and
read back through ``MedicalImageToPixels`` (the pixel tensors are cached on disk).

Splits: train, val and test phantoms come from separate random streams (``case_rng(seed, split, i)``) and are
checked to share no image. Stage-2 learning rate and steps are chosen on the val split only (``--tune`` runs
the grid :data:`GRID_LRS` x :data:`GRID_STEPS` on val, picks the best val closed accuracy, then evaluates
that model on the test split once). A normal run trains the committed :data:`CHOSEN` setting and reports val
and test. Evaluation: greedy answers to balanced held-out questions (closed ones balanced yes/no per
question text), each figure with its Wilson 95 % interval, per question family too.

Baselines on the same test questions, in the same run: ``chance`` (uniform guess among the answers the
question has in the train split; 0.5 for closed), ``majority`` (the train split's most frequent answer to
that question text, no image), ``blank_image`` (the trained model shown the neutral image: zeros after CLIP
normalisation, i.e. the mean colour) and ``control`` (a model trained identically with every image blanked,
evaluated blanked). Goal: closed accuracy >= 90 % for the real run, the control within 10 points of chance.

Run: ``python benchmarks/bench_train.py [--tune] [--smoke] [--control-only] [--save-dir DIR]``. ``--smoke`` is
a tiny configuration (about a minute) that only checks the code path; ``--control-only`` trains and tests only
the control (it never sees a test image, so it does not re-evaluate the chosen model). ``--save-dir`` writes
the real-run model (``save_pretrained`` layout, ``name=llava-med-phantom-demo``). Output: ``RESULT`` lines.

Measured 2026-12-02 on a 2-core Intel Xeon VM shared with other jobs (``nice -n 10 ... --tune --skip-control``,
18.4 min, then ``--control-only``): val chose lr 1.5e-3 at 600 steps; test closed 0.670 [0.640-0.698] vs
majority 0.507, blank image 0.512, control 0.495 [0.464-0.526], chance 0.500; open 0.554 [0.510-0.597] vs
majority 0.398, blank image 0.346, control 0.398.
The earlier default (3,600 steps at lr 1.5e-3, closed 0.900) had been picked on the test split.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))

import numpy as np
import torch
from torch.utils.data import Dataset

from monai_llava_med.conversation import build_bpe_tokenizer, build_generation_inputs, tokenize_conversation
from monai_llava_med.data import LlavaMedCollator
from monai_llava_med.data.phantom import (
    balanced_question_set, case_rng, generate_phantom, make_questions, presence_agreement, weighted_questions,
    write_dicom,
)
from monai_llava_med.data.phantom.questions import NUMBER_WORDS, findings_from_label_map
from monai_llava_med.metrics import closed_answer, normalize_answer
from monai_llava_med.networks import LlavaMedConfig, load_pretrained, save_pretrained
from monai_llava_med.transforms.pipelines import MedicalImageToPixels

from vqa_scoring import (  # benchmarks/ (script dir)
    balanced_accuracy, check_disjoint, consistent_answers, fmt, groups, image_free_baselines, pick, wilson,
)

# The --tune grid (stage 2, on val only) and the setting it chose. The grid is small because of CPU time: on
# 2 CPU cores shared with other jobs stage 2 ran at 40-120 steps/min, so the planned lr x {2400, 3600} grid
# could not finish; at 600 steps the test closed accuracy (0.670) is far from the 0.90 goal.
GRID_LRS = (1.5e-3, 3.0e-3)
GRID_STEPS = (600,)
CHOSEN = {"stage2_lr": 1.5e-3, "stage2_steps": 600}
CHOSEN_PROVENANCE = ("chosen by `--tune` on 2026-12-02 (2-core Intel Xeon VM, shared), val closed 0.655 "
                     "[0.625-0.684] vs 0.621 [0.591-0.651] at lr 3e-3")

DEMO_NAME = "llava-med-phantom-demo"
IMAGE_SIZE = 64
PHANTOM_SIZE = 64


def demo_config(tokenizer) -> LlavaMedConfig:
    """Frozen random CLIP-style ViT (64 wide, patch 8 -> 64 tokens) + a small Mistral LM (64 wide, 2 layers)."""
    return LlavaMedConfig(
        vision_config={
            "model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 8, "hidden_act": "quick_gelu",
        },
        text_config={
            "model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        model_max_length=256,
        template="mistral_instruct",
        name=DEMO_NAME,
    )


def caption(case) -> str:
    """A findings sentence computed from the label map (stage-1 alignment text)."""
    found = findings_from_label_map(case.image, case.label)
    modality = "CT" if case.modality == "CT" else "MRI"
    if not found:
        return f"{modality} image of an organ with no lesion."
    parts = [f"a {f.kind} lesion on the {f.side} side" for f in found]
    return f"{modality} image of an organ with {NUMBER_WORDS[len(found)]} lesion{'s' if len(found) > 1 else ''}: {', '.join(parts)}."


def make_cases(split: str, n: int, seed: int) -> list:
    return [generate_phantom(case_rng(seed, split, i), size=PHANTOM_SIZE, ndim=2, case_id=f"phantom_{split}_{i:05d}")
            for i in range(n)]


def pixels_via_dicom(cases: list, cache: Path) -> torch.Tensor:
    """Write every phantom as DICOM and run it through ``MedicalImageToPixels`` (cached as a tensor file)."""
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    to_pixels = MedicalImageToPixels(IMAGE_SIZE, max_views=1)
    out = torch.empty(len(cases), 3, IMAGE_SIZE, IMAGE_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            files = write_dicom(case, Path(tmp) / f"{i}.dcm")
            out[i] = to_pixels(str(files[0]))["pixel_values"][0]
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


def case_pixels(pixels: torch.Tensor, k: int) -> torch.Tensor:
    """The model input of case ``k``: ``(1, 3, S, S)`` of a 2-D cache ``(N, 3, S, S)``, else ``pixels[k]``
    (the views of a volume ``(V, 3, S, S)``, or one volume ``(1, 1, D, H, W)`` for a 3-D tower)."""
    return pixels[k : k + 1] if pixels.ndim == 4 else pixels[k]


class PixelQADataset(Dataset):
    """Pre-tokenised samples over shared pixel tensors, one per source (blanked for the control).

    Args:
        items: tokenised samples with ``case`` (index into its source) and ``source`` (a key of ``pixels``).
        pixels: source name -> pixel cache (see :func:`case_pixels`).
    """

    def __init__(self, items: list[dict], pixels: dict[str, torch.Tensor]) -> None:
        self.items, self.pixels = items, pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.items[index])
        pv = case_pixels(self.pixels[item.pop("source")], item.pop("case"))
        item["pixel_values"], item["num_images"] = pv, int(pv.shape[0])
        return item


def stage2_questions(cases: list, sampling: str, seed: int) -> list[tuple[int, object]]:
    """The stage-2 questions: ``"all"`` asks every question of every phantom; ``"weighted"`` draws as many
    by family weight with side answers that disagree with presence half of the time (``data.phantom.sampling``)."""
    if sampling == "all":
        return [(k, qa) for k, case in enumerate(cases) for qa in make_questions(case)]
    n = sum(len(make_questions(case)) for case in cases)
    return weighted_questions(cases, n, np.random.default_rng([seed, 7]))


def tokenize_items(convs: list, tokenizer, config: LlavaMedConfig, source: str, num_images: int) -> list[dict]:
    """Tokenise ``(case, template, turns)`` conversations whose cases have ``num_images`` images each."""
    common = {"num_images": num_images, "num_image_tokens": config.num_image_tokens,
              "image_token_id": config.image_token_id, "max_length": config.model_max_length}
    return [{"case": k, "source": source, **tokenize_conversation(turns, tokenizer, template, **common)}
            for k, template, turns in convs]


def question_convs(questions: list) -> list:
    """Stage-2 conversations of ``(case, question)`` pairs."""
    return [(k, "mistral_instruct", [("user", f"<image>\n{qa.question}"), ("assistant", qa.answer)]) for k, qa in questions]


def build_items(cases: list, tokenizer, config: LlavaMedConfig, stage: str, sampling: str = "weighted",
                seed: int = 0) -> list[dict]:
    """Tokenised samples of the 2-D phantoms (source ``"2d"``): captions (stage 1) or questions (stage 2)."""
    if stage == "stage1":
        convs = [(k, "plain", [("user", "<image>"), ("assistant", caption(case))]) for k, case in enumerate(cases)]
    else:
        convs = question_convs(stage2_questions(cases, sampling, seed))
    return tokenize_items(convs, tokenizer, config, "2d", 1)


#: The four questions whose answers must agree with each other on every phantom (contradiction rate).
CONSISTENCY_QUESTIONS = ("Is there a lesion in this image?", "Is there a lesion on the left side?",
                         "Is there a lesion on the right side?", "How many lesions are there?")


def consistency_set(cases: list, limit: int) -> list[tuple[int, object]]:
    """The presence, left, right and count questions of the first ``limit`` phantoms, in that order."""
    out = []
    for k, case in enumerate(cases[:limit]):
        qas = {qa.question: qa for qa in make_questions(case)}
        out += [(k, qas[q]) for q in CONSISTENCY_QUESTIONS]
    return out


def contradiction_rate(answers: list[str]) -> list[int]:
    """One 0/1 per phantom: 1 when its four answers (:data:`CONSISTENCY_QUESTIONS` order) contradict each other."""
    return [int(not consistent_answers(closed_answer(answers[i]), closed_answer(answers[i + 1]),
                                       closed_answer(answers[i + 2]), normalize_answer(answers[i + 3])))
            for i in range(0, len(answers), 4)]


@torch.no_grad()
def evaluate(model, tokenizer, pixels: torch.Tensor, questions: list, batch_size: int = 128,
             answers: list[str] | None = None) -> list[int]:
    """Greedy answers -> one hit (0/1) per question: closed normalised yes/no, open exact match (the decoded
    answers are appended to ``answers`` when a list is given)."""
    cfg = model.config
    collate = LlavaMedCollator(tokenizer.pad_token_id, "left")
    hits: list[int] = []
    model.eval()
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        views = [case_pixels(pixels, k) for k, _ in chunk]
        batch = collate([
            {"input_ids": build_generation_inputs(f"<image>\n{qa.question}", tokenizer, cfg.template,
                                                  num_images=int(pv.shape[0]), num_image_tokens=cfg.num_image_tokens,
                                                  image_token_id=cfg.image_token_id, max_length=cfg.model_max_length),
             "pixel_values": pv}
            for (_, qa), pv in zip(chunk, views)
        ])
        new = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=6,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        for (_, qa), ids in zip(chunk, new):
            pred = tokenizer.decode(ids, skip_special_tokens=True)
            if answers is not None:
                answers.append(pred)
            ok = closed_answer(pred) == qa.answer if qa.answer_type == "CLOSED" else normalize_answer(pred) == normalize_answer(qa.answer)
            hits.append(int(ok))
    return hits


def common_trainer_args(args, config) -> dict:
    return {"micro_batch_size": args.batch_size, "global_batch_size": args.batch_size, "deepspeed": "zero2",
            "lr_scheduler": args.lr_scheduler,
            "gradient_checkpointing": False, "save_every_n_steps": args.save_every, "keep_last_checkpoints": 1,
            "log_every_n_steps": 50, "seed": args.seed, "max_length": config.model_max_length, "restart": True}


def train_stage1(out: Path, tokenizer, config, s1: Dataset, args) -> tuple[Path, float]:
    """Stage 1 (projector, captions, 1 epoch) with the real trainer; returns the export folder and last loss."""
    from monai_llava_med.engines import build_trainer

    t1 = build_trainer("stage1", train_data=s1, model_config=config, tokenizer=tokenizer, output_dir=str(out),
                       learning_rate=args.stage1_lr, num_epochs=1, template="plain", export_name=DEMO_NAME,
                       **common_trainer_args(args, config))
    t1.run()
    return out / "model", t1.state.output["loss"]


def train_stage2(out: Path, init: Path | None, tokenizer, config, s2: Dataset, lr: float, steps: int, args, **options):
    """Stage 2 (projector + LM, questions) from the stage-1 export (``init``; None: from the random initialisation
    of ``config``); returns the trained model and last loss (``options``: further ``build_trainer`` arguments)."""
    from monai_llava_med.engines import build_trainer

    epochs = max(1, -(-steps * args.batch_size // len(s2)))
    start = {"init_from": str(init)} if init is not None else {"model_config": config}
    t2 = build_trainer("stage2", train_data=s2, **start, tokenizer=tokenizer, output_dir=str(out),
                       learning_rate=lr, num_epochs=epochs, max_steps=steps, warmup_ratio=0.03,
                       export_name=DEMO_NAME, **common_trainer_args(args, config), **options)
    t2.run()
    model, _ = load_pretrained(out / "model", dtype=torch.float32)
    return model, t2.state.output["loss"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tune", action="store_true", help="run the stage-2 grid on val and pick by val closed accuracy")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and steps (< 1 min): checks the code path only")
    parser.add_argument("--train-cases", type=int, default=4000)
    parser.add_argument("--val-cases", type=int, default=600)
    parser.add_argument("--test-cases", type=int, default=600)
    parser.add_argument("--eval-questions", type=int, default=1000, help="closed questions per split (plus half as many open)")
    parser.add_argument("--stage2-steps", type=int, default=None, help="override the chosen setting (not then val-chosen)")
    parser.add_argument("--stage2-lr", type=float, default=None, help="override the chosen setting (not then val-chosen)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--stage1-lr", type=float, default=2e-3)
    parser.add_argument("--save-every", type=int, default=1000, help="checkpoint interval (optimizer steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / ".cache" / "bench_train"))
    parser.add_argument("--work-dir", default=None, help="training outputs (default: a temporary folder)")
    parser.add_argument("--save-dir", default=None, help="write the trained real-run model here (save_pretrained)")
    parser.add_argument("--sampling", choices=("weighted", "all"), default="weighted",
                        help="stage-2 question mix: weighted families (default) or every question of every phantom")
    parser.add_argument("--train-vision", action="store_true", help="train the vision tower in stage 2 too")
    parser.add_argument("--skip-stage1", action="store_true", help="stage 2 from the random initialisation")
    parser.add_argument("--lr-scheduler", default="cosine", choices=("cosine", "linear", "constant"))
    parser.add_argument("--consistency-cases", type=int, default=300, help="test phantoms asked presence/left/right/count")
    parser.add_argument("--skip-control", action="store_true", help="train only the real run (no ablation)")
    parser.add_argument("--control-only", action="store_true", help="train and test only the control (chosen setting)")
    args = parser.parse_args()
    args.grid = [(lr, steps) for lr in GRID_LRS for steps in GRID_STEPS]
    if args.smoke:
        args.train_cases, args.val_cases, args.test_cases, args.eval_questions = 48, 24, 24, 16
        args.batch_size, args.save_every, args.grid = 8, 1000, [(1.5e-3, 4), (2.5e-3, 4)]
        args.consistency_cases = 12
    chosen = (args.stage2_lr or CHOSEN["stage2_lr"], args.stage2_steps or CHOSEN["stage2_steps"])
    args.chosen = args.grid[0] if args.smoke and not args.tune else chosen
    args.overridden = args.stage2_lr is not None or args.stage2_steps is not None
    return args


def run_real(args, work: Path, tokenizer, config, cases: dict, pix: dict, val_q: list, test_q: list,
             chance: list, majority: list, start: float) -> tuple[float, int]:
    """Stage 1, stage 2 per setting on val, then the chosen model on the test split once; returns the setting."""
    test_groups = groups(test_q)
    s1 = PixelQADataset(build_items(cases["train"], tokenizer, config, "stage1"), {"2d": pix["train"]})
    s2 = PixelQADataset(build_items(cases["train"], tokenizer, config, "stage2", args.sampling, args.seed),
                        {"2d": pix["train"]})
    init, loss1 = (None, float("nan")) if args.skip_stage1 else train_stage1(work / "real" / "stage1", tokenizer, config,
                                                                           s1, args)
    print(f"real stage 1: loss {loss1:.3f}", flush=True)
    val_groups = groups(val_q)
    grid = args.grid if args.tune else [args.chosen]
    val_closed: dict[tuple[float, int], float] = {}
    for lr, steps in grid:
        t0 = time.perf_counter()
        model, loss2 = train_stage2(work / "real" / f"stage2_lr{lr:g}_s{steps}", init, tokenizer, config, s2, lr, steps,
                                    args, train_vision=args.train_vision)
        hits = evaluate(model, tokenizer, pix["val"], val_q)
        val_closed[(lr, steps)] = wilson(pick(hits, val_groups["CLOSED"]))[0]
        print(f"RESULT split=val stage2_lr={lr:g} stage2_steps={steps} {fmt('closed_acc', pick(hits, val_groups['CLOSED']))} "
              f"{fmt('open_acc', pick(hits, val_groups['OPEN']))} stage2_loss={loss2:.3f} "
              f"train_min={(time.perf_counter() - t0) / 60:.2f}", flush=True)
    lr, steps = max(grid, key=lambda s: (val_closed[s], -s[1]))  # best val closed accuracy; ties: fewer steps
    how = "chosen on val by this run (--tune)" if args.tune else (
        "given on the command line, NOT chosen on val" if args.overridden else f"committed, {CHOSEN_PROVENANCE}")
    print(f"stage 2 setting: lr={lr:g} steps={steps} ({how})", flush=True)
    model, _ = load_pretrained(work / "real" / f"stage2_lr{lr:g}_s{steps}" / "model", dtype=torch.float32)

    # The test split, once: the chosen model, the same model on blank images (next to the image-free baselines).
    real = evaluate(model, tokenizer, pix["test"], test_q)
    blank = evaluate(model, tokenizer, torch.zeros_like(pix["test"]), test_q)
    if args.save_dir:
        model.config.name = DEMO_NAME
        save_pretrained(model, args.save_dir, tokenizer)
        print(f"saved {args.save_dir} ({sum(f.stat().st_size for f in Path(args.save_dir).iterdir()) / 2**20:.1f} MiB)")
    c, o = test_groups["CLOSED"], test_groups.get("OPEN", [])
    side = test_groups.get("side", [])
    side_bacc = balanced_accuracy(pick(real, side), [test_q[i][1].answer for i in side])
    cons_q, cons_answers = consistency_set(cases["test"], args.consistency_cases), []
    evaluate(model, tokenizer, pix["test"], cons_q, answers=cons_answers)
    contradictions = contradiction_rate(cons_answers)
    same_sides = [int(closed_answer(cons_answers[i + 1]) == closed_answer(cons_answers[i + 2]))
                  for i in range(0, len(cons_answers), 4) if len({les.side for les in cases["test"][cons_q[i][0]].lesions}) == 1]
    print(f"RESULT split=test side_bacc={side_bacc:.4f} side_bacc_chance=0.5000 {fmt('contradiction_rate', contradictions)} "
          f"phantoms={len(contradictions)} left_equals_right_on_one_sided={np.mean(same_sides) if same_sides else float('nan'):.4f}",
          flush=True)
    for name, idx in test_groups.items():
        if name not in ("CLOSED", "OPEN"):
            print(f"RESULT split=test family={name} n={len(idx)} {fmt('acc', pick(real, idx))} "
                  f"chance={np.mean(pick(chance, idx)):.4f} {fmt('majority', pick(majority, idx))} "
                  f"{fmt('blank_image', pick(blank, idx))}")
    closed_p, closed_lo, _ = wilson(pick(real, c))
    print(f"goal: closed >= 0.90 ({'met' if closed_p >= 0.9 else 'NOT met'}; 95 % lower bound {closed_lo:.3f} "
          f"{'>=' if closed_lo >= 0.9 else '<'} 0.90)")
    print(f"RESULT split=test stage2_lr={lr:g} stage2_steps={steps} n_closed={len(c)} {fmt('closed_acc', pick(real, c))} "
          f"chance=0.5000 {fmt('majority', pick(majority, c))} {fmt('blank_image', pick(blank, c))} "
          f"n_open={len(o)} {fmt('open_acc', pick(real, o))} open_chance={np.mean(pick(chance, o)) if o else float('nan'):.4f} "
          f"{fmt('open_majority', pick(majority, o))} {fmt('open_blank_image', pick(blank, o))} "
          f"sampling={args.sampling} side_bacc={side_bacc:.4f} {fmt('count_acc', pick(real, test_groups.get('count', [])))} "
          f"contradiction_rate={np.mean(contradictions):.4f} minutes={(time.perf_counter() - start) / 60:.2f}", flush=True)
    return lr, steps


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cache = Path(args.cache_dir)
    cases, pix = {}, {}
    for split, n in (("train", args.train_cases), ("val", args.val_cases), ("test", args.test_cases)):
        cases[split] = make_cases(split, n, args.seed)
        pix[split] = pixels_via_dicom(cases[split], cache / f"{split}_s{args.seed}_n{n}_{IMAGE_SIZE}.pt")
    check_disjoint(cases)
    train_cases = cases["train"]
    texts = [caption(c) for c in train_cases[:500]] + [f"{qa.question} {qa.answer}" for c in train_cases[:500] for qa in make_questions(c)]
    tokenizer = build_bpe_tokenizer(texts, vocab_size=400, model_max_length=256)
    config = demo_config(tokenizer)
    val_q = balanced_question_set(cases["val"], make_questions, args.eval_questions, args.seed + 1)
    test_q = balanced_question_set(cases["test"], make_questions, args.eval_questions, args.seed)
    print(f"data: {len(train_cases)} train / {len(cases['val'])} val / {len(cases['test'])} test phantoms (disjoint) via "
          f"DICOM + MedicalImageToPixels; {len(val_q)} val / {len(test_q)} test questions "
          f"({Counter(q.answer_type for _, q in test_q)}), {(time.perf_counter() - start) / 60:.2f} min", flush=True)
    mix = stage2_questions(train_cases, args.sampling, args.seed)
    print(f"stage-2 mix ({args.sampling}): {len(mix)} questions, {Counter(q.family for _, q in mix).most_common()}; "
          f"side questions answered correctly by copying presence: "
          f"{presence_agreement([(train_cases[k], q) for k, q in mix]):.3f}", flush=True)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_train_"))
    chance, majority = image_free_baselines(train_cases, test_q)
    test_groups = groups(test_q)
    c, o = test_groups["CLOSED"], test_groups.get("OPEN", [])
    lr, steps = args.chosen if args.control_only else run_real(
        args, work, tokenizer, config, cases, pix, val_q, test_q, chance, majority, start)
    if not args.skip_control:  # printed after the real run's lines, so a cut-short control loses only itself
        blank = {"2d": torch.zeros_like(pix["train"])}
        cs1 = PixelQADataset(build_items(train_cases, tokenizer, config, "stage1"), blank)
        cs2 = PixelQADataset(build_items(train_cases, tokenizer, config, "stage2", args.sampling, args.seed), blank)
        cinit, _ = train_stage1(work / "control" / "stage1", tokenizer, config, cs1, args)
        cmodel, closs = train_stage2(work / "control" / "stage2", cinit, tokenizer, config, cs2, lr, steps, args)
        control = evaluate(cmodel, tokenizer, torch.zeros_like(pix["test"]), test_q)
        print(f"control (trained and tested on blank images, same setting): stage2 loss {closs:.3f}")
        for name, idx in test_groups.items():
            if name not in ("CLOSED", "OPEN"):
                print(f"RESULT split=test family={name} n={len(idx)} {fmt('control', pick(control, idx))} "
                      f"chance={np.mean(pick(chance, idx)):.4f}")
        print(f"goal: control within 0.10 of chance 0.50 ({'met' if abs(wilson(pick(control, c))[0] - 0.5) <= 0.1 else 'NOT met'})")
        print(f"RESULT split=test {fmt('control_acc', pick(control, c))} chance=0.5000 "
              f"{fmt('open_control_acc', pick(control, o))} minutes={(time.perf_counter() - start) / 60:.2f}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
