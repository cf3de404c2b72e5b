# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""DeepSpeed training on CPU: each stage with ZeRO-2/3, MONAI handlers, export, exact resume after SIGKILL.

Two ranks: ``tests/test_train_recipes.py`` (the documented two-process command).

The first DeepSpeed start compiles a small C++ extension (~30 s, cached under TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import operator
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")
pytest.importorskip("ignite")

from ignite.engine import Events  # noqa: E402
from monai.handlers import StatsHandler, ValidationHandler  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from monai_llava_med.data import LlavaMedCollator, PhantomVQADataset  # noqa: E402
from monai_llava_med.engines import LlavaMedLossEvaluator, build_trainer, export_from_checkpoint  # noqa: E402
from monai_llava_med.networks import load_pretrained  # noqa: E402

pytestmark = pytest.mark.deepspeed
REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "Is there a lesion in this image? yes no",
    "Is there a lesion on the left side? Is there a lesion on the right side?",
    "Is there a bright lesion? Is there a dark lesion? Is this a CT image? Is this a MRI image?",
    "How many lesions are there? zero one two three. What imaging modality is this image? CT MRI",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def phantom_tokenizer():
    from monai_llava_med.conversation import build_bpe_tokenizer

    return build_bpe_tokenizer(TEXTS * 4, vocab_size=300)


def _data(tokenizer, config, n=16, split="train"):
    return PhantomVQADataset(
        n, size=32, split=split, tokenizer=tokenizer, num_image_tokens=config.num_image_tokens,
        image_token_id=config.image_token_id, max_length=128,
    )


def _config(tokenizer):
    from monai_llava_med.networks import LlavaMedConfig

    return LlavaMedConfig.tiny(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def _fixed_loss(module, tokenizer, config) -> float:
    batch = LlavaMedCollator(tokenizer.pad_token_id)([_data(tokenizer, config)[i] for i in range(8)])
    module.eval()
    with torch.no_grad():
        loss = module(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"]).loss
    module.train()
    return float(loss)


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage1_zero2_trains_only_the_projector(phantom_tokenizer, tmp_path, capsys):
    config = _config(phantom_tokenizer)
    trainer = build_trainer(
        "stage1", train_data=_data(phantom_tokenizer, config), model_config=config, tokenizer=phantom_tokenizer,
        output_dir=str(tmp_path), micro_batch_size=4, global_batch_size=4, num_epochs=3, learning_rate=1e-2,
        gradient_checkpointing=False, save_every_n_steps=0, export=False, deepspeed="zero2",
        handlers=[StatsHandler(name="train_stats", output_transform=operator.itemgetter("loss"), iteration_log=4)],
    )
    module = trainer.network
    before, loss_before = _snapshot(module), _fixed_loss(module, phantom_tokenizer, config)
    trainer.run()
    after, loss_after = _snapshot(module), _fixed_loss(module, phantom_tokenizer, config)
    assert trainer.state.iteration == 12 and trainer.optimizer_steps == 12
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)
    frozen = [k for k in before if not k.startswith("projector.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # vision + LLM bit-identical
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("projector."))
    assert "Epoch: 3/3, Iter: 4/4 -- Loss:" in capsys.readouterr().out  # MONAI StatsHandler
    rows = [json.loads(line) for line in (tmp_path / "loss_log.jsonl").read_text().splitlines()]
    assert rows and all(r["lr"] > 0 and r["loss"] > 0 for r in rows[1:])


def test_stage2_zero3_accumulation_validation_and_export(phantom_tokenizer, tmp_path):
    config = _config(phantom_tokenizer)
    val_loader = DataLoader(_data(phantom_tokenizer, config, 8, "val"), batch_size=4,
                            collate_fn=LlavaMedCollator(phantom_tokenizer.pad_token_id))
    trainer = build_trainer(
        "stage2", train_data=_data(phantom_tokenizer, config), model_config=config, tokenizer=phantom_tokenizer,
        output_dir=str(tmp_path), micro_batch_size=4, global_batch_size=8, num_epochs=4, learning_rate=3e-3,
        gradient_checkpointing=True, save_every_n_steps=4, deepspeed="zero3", export_name="tiny-stage2",
    )
    evaluator = LlavaMedLossEvaluator(trainer.ds_engine, val_loader, trainer.state.device)
    ValidationHandler(interval=2, validator=evaluator, epoch_level=True).attach(trainer)
    first_val = []
    evaluator.add_event_handler(Events.COMPLETED, lambda e: first_val.append(e.state.metrics["val_loss"]))
    loss_before = _fixed_loss(trainer.ds_engine, phantom_tokenizer, config)
    trainer.run()
    assert trainer.accumulation_steps == 2 and trainer.state.iteration == 16 and trainer.optimizer_steps == 8
    assert _fixed_loss(trainer.ds_engine, phantom_tokenizer, config) < loss_before - 0.5
    assert len(first_val) == 2 and first_val[1] < first_val[0]  # MONAI ValidationHandler ran the evaluator
    # the consolidated export (ZeRO-3 gathered) loads with load_pretrained and equals the zero_to_fp32 weights
    model, tokenizer = load_pretrained(tmp_path / "model", dtype=torch.float32)
    assert model.config.name == "tiny-stage2" and tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id
    offline = export_from_checkpoint(tmp_path / "checkpoints", tmp_path / "offline", model.config, phantom_tokenizer)
    other, _ = load_pretrained(offline, dtype=torch.float32)
    ref = other.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert _fixed_loss(model, phantom_tokenizer, config) == pytest.approx(
        _fixed_loss(trainer.ds_engine, phantom_tokenizer, config), abs=1e-5
    )


def test_finetune_lora_is_merged_on_export(phantom_tokenizer, tmp_path):
    config = _config(phantom_tokenizer)
    trainer = build_trainer(
        "finetune", train_data=_data(phantom_tokenizer, config), model_config=config, tokenizer=phantom_tokenizer,
        output_dir=str(tmp_path), micro_batch_size=4, global_batch_size=4, num_epochs=3, learning_rate=5e-3,
        gradient_checkpointing=False, save_every_n_steps=0, deepspeed="zero2",
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    )
    module = trainer.network
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)
    base = {k: v.clone() for k, v in module.state_dict().items() if "base_layer" in k}
    loss_before = _fixed_loss(module, phantom_tokenizer, config)
    trainer.run()
    loss_after = _fixed_loss(module, phantom_tokenizer, config)
    assert loss_after < loss_before - 0.1
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in base.items())  # base weights frozen
    model, _ = load_pretrained(tmp_path / "model", dtype=torch.float32)
    assert not any("lora" in k for k in model.state_dict())
    assert _fixed_loss(model, phantom_tokenizer, config) == pytest.approx(loss_after, abs=1e-4)


def _run_config(path: Path, out: Path, num_samples: int = 32, **training) -> Path:
    image_id = "$@tokenizer.convert_tokens_to_ids('<image>')"
    values = {
        "tokenizer": {"_target_": "monai_llava_med.conversation.build_bpe_tokenizer", "texts": TEXTS * 4, "vocab_size": 300},
        "model_config": {"_target_": "monai_llava_med.networks.LlavaMedConfig.tiny", "image_token_id": image_id},
        "train_data": {
            "_target_": "monai_llava_med.data.PhantomVQADataset", "num_samples": num_samples, "size": 32,
            "tokenizer": "@tokenizer", "num_image_tokens": 16, "image_token_id": image_id, "max_length": 128,
        },
        "training": {
            "preset": "stage2", "output_dir": str(out), "micro_batch_size": 4, "global_batch_size": 8, "num_epochs": 2,
            "learning_rate": 3e-3, "gradient_checkpointing": False, "deepspeed": "zero2", "save_every_n_steps": 3,
            "keep_last_checkpoints": 1, "log_every_n_steps": 2, **training,
        },
    }
    path.write_text(json.dumps(values))
    return path


_KILL_SCRIPT = """
import os, signal, sys
from ignite.engine import Events
from monai_llava_med.engines import build_trainer, load_run_config
trainer = build_trainer(**load_run_config(sys.argv[1]))
kill_at = int(sys.argv[2])
if kill_at:
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=kill_at), lambda e: os.kill(os.getpid(), signal.SIGKILL))
trainer.run()
"""


@pytest.mark.parametrize("num_samples, kill_at", [(32, 10), (36, 14)])
def test_sigkill_and_resume_ends_with_identical_weights(tmp_path, num_samples, kill_at):
    # 32 samples / micro 4 = 8 iterations per epoch, 2 epochs, accumulation 2: checkpoints every 3 steps (6 iterations);
    # 36 samples = 9 micro-batches, cut to 8 (whole steps): resumed in epoch 2, which must be a fresh sampler pass
    ref_cfg = _run_config(tmp_path / "ref.json", tmp_path / "ref", num_samples)
    killed_cfg = _run_config(tmp_path / "killed.json", tmp_path / "killed", num_samples)
    env = _env()
    ref = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(ref_cfg), "0"], env=env, capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(killed_cfg), str(kill_at)],
                            env=env, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resume_at = kill_at // 6 * 6
    assert (tmp_path / "killed" / "checkpoints" / "latest").read_text().strip() == f"step{resume_at:08d}"
    assert not (tmp_path / "killed" / "model").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "monai_llava_med.engines.launch", "--config", str(killed_cfg)],
        env=env, capture_output=True, text=True, timeout=240, cwd=str(REPO),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == resume_at and summary["iterations"] == 16 and summary["optimizer_steps"] == 8
    a, _ = load_pretrained(tmp_path / "ref" / "model", dtype=torch.float32)
    b, _ = load_pretrained(tmp_path / "killed" / "model", dtype=torch.float32)
    sb = b.state_dict()
    diff = max(float((v - sb[k]).abs().max()) for k, v in a.state_dict().items())
    assert diff <= 1e-6, diff
    # the loss log of the resumed run is the uninterrupted one: iterations replayed after the resume logged once
    ref_rows = [json.loads(line) for line in (tmp_path / "ref" / "loss_log.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "killed" / "loss_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [r["iteration"] for r in ref_rows] == list(range(2, 17, 2))
    assert all(abs(r["loss"] - q["loss"]) <= 1e-6 and r["step"] == q["step"] for r, q in zip(rows, ref_rows))
    from monai_llava_med.engines import seed_everything
    from monai_llava_med.networks import build_llava_med

    seed_everything(42)  # the run's seed: rebuild its initial weights
    init = build_llava_med(b.config, dtype=torch.float32).state_dict()
    assert all(torch.equal(init[k], v) for k, v in sb.items() if k.startswith("vision_tower."))
    assert not torch.equal(init["projector.0.weight"], sb["projector.0.weight"])


def test_relaunching_a_finished_run_trains_nothing(phantom_tokenizer, tmp_path):
    config = _config(phantom_tokenizer)

    def launch(out, **kwargs):
        trainer = build_trainer(
            "stage1", train_data=_data(phantom_tokenizer, config), model_config=config, tokenizer=phantom_tokenizer,
            output_dir=str(out), micro_batch_size=4, global_batch_size=8, num_epochs=2, learning_rate=1e-2,
            gradient_checkpointing=False, save_every_n_steps=0, deepspeed="zero2", **kwargs,
        )
        iterations = []
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: iterations.append(e.state.iteration))
        trainer.run()
        return trainer, len(iterations)

    first, n = launch(tmp_path / "done")  # 16 samples / micro 4 = 4 iterations, accumulation 2: 2 steps an epoch
    assert n == 8 and first.optimizer_steps == 4
    weights, lr = _snapshot(first.network), first.ds_engine.get_lr()[0]
    export = tmp_path / "done" / "model" / "model.safetensors"
    export.unlink()  # as if killed after the final checkpoint, before the export was complete
    again, n = launch(tmp_path / "done")
    assert n == 0 and again.resumed_from == 8 and again.state.iteration == 8 and again.optimizer_steps == 4
    assert all(torch.equal(v, again.network.state_dict()[k]) for k, v in weights.items())
    assert again.ds_engine.get_lr()[0] == lr and export.is_file()  # LR schedule not restarted; export written
    stamp = export.stat().st_mtime_ns
    launch(tmp_path / "done")
    assert export.stat().st_mtime_ns == stamp  # a complete export is left alone

    stopped, n = launch(tmp_path / "stopped", max_steps=3, export=False)
    assert n == 6 and stopped.optimizer_steps == 3
    relaunched, n = launch(tmp_path / "stopped", max_steps=3, export=False)
    assert n == 0 and relaunched.resumed_from == 6 and relaunched.optimizer_steps == 3
