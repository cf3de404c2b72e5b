# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Training configuration, DeepSpeed config resolution and the resumable batch order (no DeepSpeed engine)."""

from __future__ import annotations

from pathlib import Path

import json

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler

from monai_llava_med.data import LengthGroupedBatchSampler
from monai_llava_med.engines import (
    STAGE_DEFAULTS,
    LoraSettings,
    ResumableBatchSampler,
    TrainingConfig,
    init_distributed_env,
    load_deepspeed_config,
    resolve_deepspeed_config,
    stage_preset,
)
from monai_llava_med.engines.deepspeed_setup import DEEPSPEED_CONFIG_DIR, DistributedSetupError, build_lr_scheduler
from monai_llava_med.engines.launch import parse_overrides
from monai_llava_med.errors import CheckpointError


def test_stage_presets_follow_the_reference_recipe():
    s1, s2, ft = stage_preset("stage1"), stage_preset("stage2"), stage_preset("finetune")
    assert (s1.learning_rate, s1.num_epochs, s1.deepspeed) == (2e-3, 1, "zero2")
    assert (s2.learning_rate, s2.num_epochs, s2.deepspeed) == (2e-5, 3, "zero3")
    assert (ft.learning_rate, ft.num_epochs) == (2e-5, 3)
    for cfg in (s1, s2, ft):
        assert (cfg.weight_decay, cfg.warmup_ratio, cfg.lr_scheduler, cfg.global_batch_size) == (0.0, 0.03, "cosine", 128)
        assert cfg.gradient_checkpointing and cfg.max_length == 2048
    assert set(STAGE_DEFAULTS) == {"stage1", "stage2", "finetune"}
    over = stage_preset("stage1", learning_rate=1e-3, num_epochs=2)
    assert (over.learning_rate, over.num_epochs, over.stage) == (1e-3, 2, "stage1")


def test_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="stage"):
        TrainingConfig(stage="inference")
    with pytest.raises(ValueError, match="LoRA"):
        stage_preset("stage1", lora=LoraSettings(r=4))
    with pytest.raises(ValueError, match="Unknown stage"):
        stage_preset("stage3")
    with pytest.raises(ValueError, match="Unknown TrainingConfig fields"):
        TrainingConfig.from_dict({"learning_rat": 1.0})
    cfg = stage_preset("finetune", lora={"r": 8, "alpha": 16})
    assert isinstance(cfg.lora, LoraSettings) and cfg.lora.r == 8
    back = TrainingConfig.from_dict(json.loads(cfg.save(tmp_path / "t.json").read_text()))
    assert back == cfg


def test_accumulation_from_global_batch():
    cfg = stage_preset("stage2", micro_batch_size=16)
    assert cfg.accumulation_steps(1) == 8 and cfg.accumulation_steps(8) == 1
    with pytest.raises(ValueError, match="multiple"):
        cfg.accumulation_steps(3)
    assert stage_preset("stage2", gradient_accumulation_steps=5).accumulation_steps(3) == 5


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero2_offload", "zero3_offload"])
def test_named_deepspeed_configs_resolve(name):
    assert (DEEPSPEED_CONFIG_DIR / f"{name}.json").is_file()
    cfg = stage_preset("stage2", micro_batch_size=4, global_batch_size=32, max_grad_norm=0.5)
    ds = resolve_deepspeed_config(name, cfg, world_size=2, trainable_numel=5000)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is torch.cuda.is_available()  # fp32 on CPU
    zero = ds["zero_optimization"]
    assert zero["stage"] == (3 if "zero3" in name else 2)
    assert zero["reduce_bucket_size"] == 1_000_000  # capped to the (tiny) gradient, floor 1M
    if "offload" in name:
        assert zero["offload_optimizer"]["device"] == "cpu"
    if "zero3" in name:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert "auto" not in json.dumps(ds)


def test_deepspeed_config_errors(tmp_path):
    with pytest.raises(DistributedSetupError, match="no DeepSpeed config named 'zero9'") as err:
        load_deepspeed_config("zero9")
    assert isinstance(err.value, CheckpointError)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DistributedSetupError, match="cannot read"):
        load_deepspeed_config(bad)
    assert load_deepspeed_config({"a": 1}) == {"a": 1}


def test_init_distributed_env_keeps_launcher_values(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    env = init_distributed_env()
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "4" and int(env["MASTER_PORT"]) > 0


def test_warmup_cosine_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = build_lr_scheduler(opt, stage_preset("stage1"), total_steps=100)  # 3 warm-up steps
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(1 / 3) and lrs[3] == pytest.approx(1.0)
    assert lrs[-1] < 1e-3 and all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def _batches(sampler):
    return [list(b) for b in sampler]


@pytest.mark.parametrize("kind", ["distributed", "length_grouped"])
def test_resumable_sampler_replays_the_same_batches(kind):
    def make():
        if kind == "distributed":
            base = DistributedSampler(range(40), num_replicas=2, rank=1, shuffle=True, seed=3, drop_last=True)
            return ResumableBatchSampler(BatchSampler(base, 4, drop_last=True))
        lengths = [int(v) for v in torch.randint(5, 50, (40,), generator=torch.Generator().manual_seed(0))]
        return ResumableBatchSampler(LengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=1, seed=3, drop_last=True))

    full = make()
    epochs = [_batches(full) for _ in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # a new order each pass (seed + epoch)
    resumed = make()
    resumed.resume_at(epoch=1, batches_done=2)
    assert _batches(resumed) == epochs[1][2:]
    assert _batches(resumed) == epochs[2]  # next pass is whole again


def test_parse_overrides():
    assert parse_overrides(["max_steps=3", "deepspeed=zero2", "lora={\"r\": 4}"]) == {
        "max_steps": 3,
        "deepspeed": "zero2",
        "lora": {"r": 4},
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["oops"])


def test_shipped_recipes_are_valid_run_files():
    from monai_llava_med.engines.training import _resolve_training, load_run_config

    recipes = sorted((Path(__file__).resolve().parents[1] / "training" / "recipes").glob("*.json"))
    assert [p.stem for p in recipes] == ["finetune", "stage1", "stage2"]
    for path in recipes:
        run = load_run_config(path, {"training#max_steps": 7})
        cfg = _resolve_training(run.pop("training"), {})
        assert cfg.stage == path.stem and cfg.max_steps == 7 and cfg.global_batch_size == 128
        assert set(run) <= {"init_from", "data_json", "image_root", "export_name"}
        load_deepspeed_config(cfg.deepspeed)
