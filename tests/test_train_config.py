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
        assert set(run) <= {"init_from", "data_json", "image_root", "export_name", "handlers"}
        load_deepspeed_config(cfg.deepspeed)


def test_resumable_sampler_max_batches_cuts_every_pass():
    def make():
        base = DistributedSampler(range(20), num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
        return BatchSampler(base, 2, drop_last=True)  # 10 batches a pass

    full = ResumableBatchSampler(make())
    epochs = [_batches(full) for _ in range(3)]
    cut = ResumableBatchSampler(make(), max_batches=4)
    assert len(cut) == 4 and [_batches(cut) for _ in range(3)] == [e[:4] for e in epochs]
    cut.resume_at(epoch=1, batches_done=3)
    assert _batches(cut) == epochs[1][3:4] and _batches(cut) == epochs[2][:4]
    with pytest.raises(ValueError, match="max_batches"):
        ResumableBatchSampler(make(), max_batches=0)


class _Output:
    loss: torch.Tensor


class _FakeDeepSpeedEngine:
    """Just enough of a DeepSpeedEngine for the trainer's loop: records the batches, steps every 2 micro-batches."""

    device = torch.device("cpu")
    optimizer = lr_scheduler = None
    loss_type = torch.Tensor

    def __init__(self) -> None:
        self.module = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []
        self.micro_steps = self.global_steps = 0

    def gradient_accumulation_steps(self) -> int:
        return 2

    def train(self) -> None:
        pass

    def __call__(self, **inputs) -> _Output:
        self.seen.append(inputs["input_ids"].tolist())
        out = _Output()
        out.loss = torch.tensor(0.0, requires_grad=True).as_subclass(self.loss_type)
        return out

    def backward(self, loss) -> None:
        pass

    def step(self) -> None:
        self.micro_steps += 1
        self.global_steps = self.micro_steps // 2

    def get_lr(self) -> list[float]:
        return [0.0]


def _fake_trainer(num_samples=10, max_epochs=3, epoch_length=4, max_steps=None):
    from torch.utils.data import DataLoader

    from monai_llava_med.engines import DeepSpeedTrainer

    data = [{"input_ids": torch.tensor(i)} for i in range(num_samples)]
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
    batches = ResumableBatchSampler(BatchSampler(sampler, 2, drop_last=True))
    def collate(items):
        return {"input_ids": torch.stack([x["input_ids"] for x in items])}

    loader = DataLoader(data, batch_sampler=batches, collate_fn=collate)
    engine = _FakeDeepSpeedEngine()
    return DeepSpeedTrainer(engine, max_epochs, loader, epoch_length=epoch_length, max_steps=max_steps), engine


def _sampler_epoch(epoch, num_samples=10):
    sampler = DistributedSampler(range(num_samples), num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
    sampler.set_epoch(epoch)
    return [list(b) for b in BatchSampler(sampler, 2, drop_last=True)]


def test_epochs_cut_to_whole_steps_are_fresh_sampler_passes():
    # 10 samples / micro-batch 2 = 5 micro-batches; accumulation 2 -> epochs of 4 (as build_trainer cuts them)
    trainer, engine = _fake_trainer()
    trainer.run()
    assert trainer.state.iteration == 12 and len(engine.seen) == 12
    for e in range(3):
        assert engine.seen[4 * e : 4 * e + 4] == _sampler_epoch(e)[:4], e
    resumed, resumed_engine = _fake_trainer()
    resumed._restore_position(6, 4)  # what a checkpoint after 6 iterations restores
    resumed.run()
    assert resumed_engine.seen == engine.seen[6:]


def test_finished_run_is_not_trained_again():
    from monai.engines import Trainer

    trainer, engine = _fake_trainer()
    trainer._restore_position(12, 4)  # the final checkpoint of 3 epochs x 4
    trainer.run()
    assert engine.seen == [] and trainer.state.iteration == 12 and trainer.finished

    stopped, engine = _fake_trainer(max_steps=3)
    stopped.run()
    assert len(engine.seen) == 6 and stopped.optimizer_steps == 3
    relaunched, engine = _fake_trainer(max_steps=3)
    relaunched._restore_position(6, 4)
    engine.global_steps, engine.micro_steps = 3, 6  # as restored from its final checkpoint
    relaunched.run()
    assert engine.seen == [] and relaunched.optimizer_steps == 3
    Trainer.run(relaunched)  # bypassing the check in run(): max_steps is checked before a batch is fetched
    assert engine.seen == [] and relaunched.state.iteration == 6


def test_rng_state_includes_the_cuda_generator_when_present(monkeypatch):
    from monai_llava_med.engines import checkpointing

    assert ("cuda" in checkpointing._rng_state()) is torch.cuda.is_available()
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7, device], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append((s.tolist(), device)))
    state = checkpointing._rng_state()
    assert state["cuda"].tolist() == [7, 1]
    checkpointing._set_rng_state(state)
    assert restored == [([7, 1], 1)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    checkpointing._set_rng_state(state)  # a GPU checkpoint resumed without CUDA: the rest is restored
    assert len(restored) == 1 and "cuda" not in checkpointing._rng_state()


def test_train_bundle_epochs_follow_the_stage_preset():
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "bundles" / "llava_med" / "configs"
    for files in (["train.json"], ["train.json", "multi_gpu_train.json"]):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        assert parser.get_parsed_content("max_epochs") == stage_preset(parser["stage"]).num_epochs == 3
        assert parser["train"]["trainer"]["max_views"] == "@max_views"  # reaches the default image loader
        parser["stage"] = "stage1"
        assert parser.get_parsed_content("max_epochs") == 1


class _WatchedLoss(torch.Tensor):
    """A loss whose reads to the host (``item``/``float``) are recorded with the trainer's iteration."""

    reads: list[int] = []
    trainer = None

    def item(self):
        _WatchedLoss.reads.append(_WatchedLoss.trainer.state.iteration)
        return super().item()

    def __float__(self):
        return float(self.item())


def test_the_loop_reads_the_loss_only_at_the_logging_interval(tmp_path):
    from monai_llava_med.engines import LossLogger

    trainer, engine = _fake_trainer(max_epochs=3)  # 12 iterations
    LossLogger(tmp_path / "loss_log.jsonl", every_n_iterations=4).attach(trainer)
    _WatchedLoss.reads, _WatchedLoss.trainer = [], trainer
    engine.loss_type = _WatchedLoss
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "loss_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [4, 8, 12]
    assert _WatchedLoss.reads == [4, 8, 12]  # once per logged row, never per micro-batch
    assert isinstance(trainer.state.output["loss"], _WatchedLoss) and len(engine.seen) == 12


def test_a_resumed_run_logs_replayed_iterations_once(tmp_path):
    from monai_llava_med.engines import LossLogger

    log = tmp_path / "loss_log.jsonl"
    full, _ = _fake_trainer()
    LossLogger(log, every_n_iterations=2).attach(full)
    full.run()
    reference = log.read_text()
    # as if killed after iteration 10 with the last checkpoint at 6: rows 8 and 10 exist, 7..12 are replayed
    log.write_text("".join(line + "\n" for line in reference.splitlines()[:5]) + '{"iteration": 11, "trunc')
    resumed, engine = _fake_trainer()
    LossLogger(log, every_n_iterations=2).attach(resumed)
    resumed._restore_position(6, 4)
    engine.global_steps, engine.micro_steps = 3, 6  # as restored from the checkpoint
    resumed.run()
    assert log.read_text() == reference


@pytest.mark.parametrize("max_steps, iterations, epochs_completed", [(None, 12, 3), (2, 4, 1), (3, 6, 1)])
def test_the_end_of_a_run_keeps_epoch_handlers(max_steps, iterations, epochs_completed):
    from ignite.engine import Events

    trainer, engine = _fake_trainer(max_steps=max_steps)  # epochs of 4 iterations = 2 optimizer steps
    ended = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: ended.append(e.state.epoch))
    trainer.run()
    assert len(engine.seen) == trainer.state.iteration == iterations
    assert ended == list(range(1, epochs_completed + 1))  # a cut on an epoch boundary still completes the epoch
