# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A MONAI trainer (Ignite engine) whose iteration runs on a DeepSpeed engine, plus its handlers.

One iteration = one micro-batch: forward -> loss -> ``ds_engine.backward`` -> ``ds_engine.step``. DeepSpeed
accumulates gradients and steps the optimizer and the LR scheduler every ``gradient_accumulation_steps``
micro-batches. MONAI handlers attach as usual (``StatsHandler(output_transform=operator.itemgetter("loss"))``,
``TensorBoardStatsHandler``, ``ValidationHandler``...); the iteration output is not decollated: it is
``{"loss": 0-d tensor, "tokens": 0-d tensor}`` (detached, never copied to the host by the loop itself: a handler
that logs calls ``float()`` at its own interval, as :class:`LossLogger` does). Epoch cut, resume position and the
end of the run are a :class:`~monai_llava_med.engines.schedule.TrainingSchedule`.
"""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Average
from monai.engines import Evaluator, Trainer
from monai.engines.utils import IterationEvents
from torch.utils.data import DataLoader

from ..errors import CheckpointError
from ..networks import CONFIG_NAME
from .checkpointing import (
    export_consolidated,
    load_training_checkpoint,
    save_training_checkpoint,
)
from .resume import move_aside, plan_resume
from .schedule import TrainingSchedule
from .train_config import LoraSettings

__all__ = [
    "MODEL_KEYS",
    "prepare_llava_batch",
    "DeepSpeedTrainer",
    "LlavaMedLossEvaluator",
    "DeepSpeedCheckpointer",
    "ConsolidatedExport",
    "LossLogger",
]

logger = logging.getLogger(__name__)

#: Batch keys that go into ``LlavaMedNet.forward``.
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "labels", "position_ids")


def prepare_llava_batch(batch: Mapping[str, Any], device: torch.device, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The model inputs of a collated batch on ``device`` (pixels in ``dtype`` when given).

    Args:
        batch: output of ``LlavaMedCollator``.
        device: target device.
        dtype: floating dtype of the network (bf16 under DeepSpeed bf16).
    """
    out: dict[str, Any] = {}
    for key in MODEL_KEYS:
        value = batch.get(key)
        if value is None:
            continue
        value = value.to(device, non_blocking=True)
        if key == "pixel_values" and dtype is not None:
            value = value.to(dtype)
        out[key] = value
    return out


def _module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _on_any_rank(flag: bool, device: torch.device) -> bool:
    """``flag`` OR-ed over all ranks (collective when torch.distributed is initialised)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


class DeepSpeedTrainer(Trainer):
    """MONAI ``Trainer`` driving a ``deepspeed.DeepSpeedEngine`` wrapping a ``LlavaMedNet``.

    Args:
        ds_engine: the engine from ``deepspeed.initialize`` (optimizer and LR scheduler inside).
        max_epochs: passes over the data.
        train_data_loader: loader of collated batches; use a :class:`ResumableBatchSampler` as its batch sampler
            for exact resume.
        epoch_length: micro-batches of a pass to use (default ``len(train_data_loader)``); the epoch is cut to
            whole optimizer steps and every epoch is one fresh pass over the data.
        max_steps: stop after this many optimizer steps (None: ``max_epochs`` epochs).
        checkpointer: optional :class:`DeepSpeedCheckpointer`; with ``resume`` its newest complete checkpoint is
            loaded when :meth:`run` starts (a finished run is not trained again).
        handlers: MONAI/Ignite handlers (objects with ``attach(engine)``).
        key_train_metric: optional Ignite metrics computed on the iteration outputs.
        additional_metrics: more such metrics.
        schedule: the run's :class:`TrainingSchedule` (default: built from the loader, ``epoch_length``,
            ``max_epochs``, ``max_steps`` and DeepSpeed's accumulation).
    """

    def __init__(
        self,
        ds_engine: Any,
        max_epochs: int,
        train_data_loader: DataLoader,
        epoch_length: int | None = None,
        max_steps: int | None = None,
        checkpointer: DeepSpeedCheckpointer | None = None,
        handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        schedule: TrainingSchedule | None = None,
    ) -> None:
        accumulation = int(ds_engine.gradient_accumulation_steps())
        if schedule is None:
            passes = int(epoch_length) if epoch_length is not None else len(train_data_loader)
            schedule = TrainingSchedule(passes, accumulation, int(max_epochs), max_steps)
        elif schedule.accumulation != accumulation:
            raise ValueError(f"the schedule accumulates {schedule.accumulation} micro-batches, DeepSpeed {accumulation}")
        self.schedule = schedule
        self.exporters: list[ConsolidatedExport] = []  # filled by ConsolidatedExport.attach (handlers below)
        super().__init__(
            device=ds_engine.device,
            max_epochs=schedule.num_epochs,
            data_loader=train_data_loader,
            epoch_length=schedule.epoch_length,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=handlers,
            decollate=False,
        )
        self.ds_engine = ds_engine
        self.network = ds_engine.module
        self.optimizer = ds_engine.optimizer
        self.lr_scheduler = ds_engine.lr_scheduler
        self.accumulation_steps = accumulation
        self.max_steps = schedule.max_steps
        self.checkpointer = checkpointer
        self.resumed_from: int | None = None
        schedule.attach(self)
        if checkpointer is not None:
            checkpointer.attach(self)

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps taken so far (DeepSpeed's ``global_steps``)."""
        return int(self.ds_engine.global_steps)

    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        """forward -> loss -> DeepSpeed backward -> DeepSpeed step (optimizer/scheduler at accumulation ends).

        Nothing here waits for the device: the loss stays a tensor and tokens are counted on the host batch.
        """
        mask = batchdata.get("attention_mask")
        tokens = mask.sum() if mask is not None else torch.tensor(batchdata["input_ids"].numel())
        inputs = prepare_llava_batch(batchdata, engine.state.device, _module_dtype(self.network))
        self.ds_engine.train()
        out = self.ds_engine(**inputs)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = out.loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self.ds_engine.backward(loss)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        self.ds_engine.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return {"loss": loss.detach(), "tokens": tokens}

    @property
    def finished(self) -> bool:
        """Whether training is over (``max_steps`` optimizer steps or ``max_epochs`` epochs done)."""
        return self.schedule.finished(self.state.iteration)

    def run(self) -> None:  # type: ignore[override]
        """Resume from the newest complete checkpoint (when a checkpointer with ``resume`` is attached), then train.

        A run whose checkpoint is already finished is not trained again (Ignite would restart it from epoch 1
        on top of the final weights); only a missing export is written.
        """
        if self.checkpointer is not None and self.state.iteration == 0:
            position = self.checkpointer.restore(self)
            if position is not None:
                self._restore_position(int(position["iteration"]), int(position["epoch_length"]))
        if self.finished:
            if self.state.rank == 0:
                logger.info(
                    "training already finished (iteration %d, %d optimizer steps): nothing to train",
                    self.state.iteration, self.optimizer_steps,
                )
            for exporter in self.exporters:
                if _on_any_rank(not exporter.is_complete() if self.state.rank == 0 else False, self.state.device):
                    exporter(self)
            return
        super().run()

    def _restore_position(self, iteration: int, epoch_length: int) -> None:
        self.schedule.restore(self, iteration, epoch_length)
        self.resumed_from = int(iteration)


class LlavaMedLossEvaluator(Evaluator):
    """Validation loss (teacher forcing) of the network under training, for MONAI's ``ValidationHandler``.

    Its key metric ``val_loss`` is the mean per-batch loss (lower is better). Under ZeRO-3 every rank must run it.

    Args:
        network: the model (``ds_engine.module``, or the DeepSpeed engine itself).
        val_data_loader: loader of collated validation batches.
        device: where to run.
        handlers: MONAI handlers of the evaluator.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        val_data_loader: DataLoader,
        device: torch.device | str,
        handlers: Sequence | None = None,
    ) -> None:
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            key_val_metric={"val_loss": Average(output_transform=operator.itemgetter("loss"))},
            metric_cmp_fn=lambda current, prev: prev < 0 or current < prev,
            val_handlers=handlers,
            decollate=False,
        )
        self.network = network

    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        module = getattr(self.network, "module", self.network)
        inputs = prepare_llava_batch(batchdata, engine.state.device, _module_dtype(module))
        was_training = self.network.training
        self.network.eval()
        with torch.no_grad():
            loss = self.network(**inputs).loss
        self.network.train(was_training)
        return {"loss": loss.detach().float()}


class DeepSpeedCheckpointer:
    """Save DeepSpeed checkpoints every N optimizer steps and at the end; resume from the newest complete one.

    Args:
        checkpoint_dir: folder of the checkpoints.
        every_n_steps: optimizer steps between checkpoints (0: only at the end).
        keep_last: keep this many complete step checkpoints (0: all); older ones are deleted only after a newer
            one is complete.
        resume: load the newest complete checkpoint when the trainer starts.
        save_final: also save when training completes.
        restart: start from scratch even though the folder holds checkpoints (they are moved aside to
            ``<checkpoint_dir>.replaced-<time>``, not deleted). Without it, a folder that holds checkpoints of
            which none can be resumed, or ``resume=False`` over existing checkpoints, is refused.
    """

    def __init__(
        self,
        checkpoint_dir: str | PathLike,
        every_n_steps: int = 500,
        keep_last: int = 2,
        resume: bool = True,
        save_final: bool = True,
        restart: bool = False,
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.every_n_steps = int(every_n_steps)
        self.keep_last = int(keep_last)
        self.resume = resume
        self.save_final = save_final
        self.restart = restart
        self._last_saved = -1

    def check(self) -> None:
        """Refuse, before anything is loaded, a folder this run could only start over (no model needed).

        Raises:
            CheckpointError: ``latest`` is not a checkpoint tag; checkpoints of which none is complete (file
                sizes checked); or ``resume=False`` over checkpoints; each unless ``restart``.
        """
        if self.restart:
            return
        plan = plan_resume(self.checkpoint_dir, checksums=False, collective=False)
        if plan.holds_checkpoints and not self.resume:
            raise CheckpointError(
                "resume is off but the folder holds checkpoints: pass restart=True (--restart) to start over "
                "(they are moved aside, not deleted), or resume from them", self.checkpoint_dir,
            )
        if plan.holds_checkpoints and plan.tag is None:
            raise CheckpointError(
                plan.describe(self.checkpoint_dir) + ". Refusing to start from scratch over them: fix or remove "
                "them, or pass restart=True (--restart) to start over (they are moved aside, not deleted)",
                self.checkpoint_dir,
            )

    def restore(self, engine: DeepSpeedTrainer) -> dict[str, Any] | None:
        """Load the checkpoint to resume from into ``engine.ds_engine`` (all ranks); its data position or None.

        Raises:
            CheckpointError: see :meth:`check` and :func:`load_training_checkpoint`.
        """
        if self.restart:
            holds = plan_resume(self.checkpoint_dir, checksums=False, collective=False).holds_checkpoints
            _barrier()
            if holds and engine.state.rank == 0:
                moved = move_aside(self.checkpoint_dir)
                logger.warning("restart: starting from scratch; the old checkpoints were moved to %s", moved)
            _barrier()
            return None
        self.check()
        if not self.resume:
            return None
        position = load_training_checkpoint(engine.ds_engine, self.checkpoint_dir)
        if position is not None:
            self._last_saved = int(position["iteration"])
        return position

    def attach(self, engine: DeepSpeedTrainer) -> None:
        """Register on ``ITERATION_COMPLETED`` and ``COMPLETED``."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._maybe_save)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self.save)

    def _maybe_save(self, engine: DeepSpeedTrainer) -> None:
        every = self.every_n_steps * engine.accumulation_steps
        if every and engine.state.iteration % every == 0:
            self.save(engine)

    def save(self, engine: DeepSpeedTrainer) -> None:
        """Checkpoint now (all ranks)."""
        if engine.state.iteration == self._last_saved:
            return
        if engine.state.iteration % engine.accumulation_steps:
            logger.warning("checkpoint at iteration %d is inside an accumulation window", engine.state.iteration)
        save_training_checkpoint(
            engine.ds_engine, self.checkpoint_dir, engine.state.iteration, engine.state.epoch_length, self.keep_last
        )
        self._last_saved = engine.state.iteration


class ConsolidatedExport:
    """On completion, write the trained network (ZeRO gathered, LoRA merged) in our layout.

    Args:
        out_dir: destination folder (``load_pretrained`` reads it).
        tokenizer: saved beside the weights.
        lora: the run's LoRA settings, if any.
        name: optional new ``config.name`` of the exported model.
    """

    def __init__(self, out_dir: str | PathLike, tokenizer: Any = None, lora: LoraSettings | None = None,
                 name: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.tokenizer = tokenizer
        self.lora = lora
        self.name = name
        self.exported: Path | None = None

    def attach(self, engine: DeepSpeedTrainer) -> None:
        """Register on ``COMPLETED`` (and with the trainer, which exports a finished run whose export is missing)."""
        engine.add_event_handler(Events.COMPLETED, self)
        exporters = getattr(engine, "exporters", None)
        if isinstance(exporters, list) and self not in exporters:
            exporters.append(self)

    def is_complete(self) -> bool:
        """Whether ``out_dir`` holds a finished export (config, weights and tokenizer, written in that order)."""
        weights = ("model.safetensors", "model.safetensors.index.json")
        done = (self.out_dir / CONFIG_NAME).is_file() and any((self.out_dir / w).is_file() for w in weights)
        return done and (self.tokenizer is None or (self.out_dir / "tokenizer_config.json").is_file())

    def __call__(self, engine: DeepSpeedTrainer) -> None:
        if self.name is not None:
            engine.network.config.name = self.name
        self.exported = export_consolidated(engine.ds_engine, self.out_dir, self.tokenizer, self.lora)


class LossLogger:
    """Append ``{"iteration", "epoch", "step", "loss", "lr", "tokens"}`` JSON lines (rank 0) every N iterations.

    The loss, learning rate and token count are read (a host sync on GPUs) only at these iterations. When a run
    resumes, rows past the resumed iteration (written by the interrupted run after its last checkpoint) are
    dropped first, so replayed iterations are logged once.

    Args:
        path: the JSON-lines file.
        every_n_iterations: logging interval.
    """

    def __init__(self, path: str | PathLike, every_n_iterations: int = 10) -> None:
        self.path = Path(path)
        self.every = max(1, int(every_n_iterations))

    def attach(self, engine: DeepSpeedTrainer) -> None:
        """Register on ``STARTED`` (drop rows past the start) and ``ITERATION_COMPLETED`` every N."""
        engine.add_event_handler(Events.STARTED, self._drop_rows_after_start)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)

    def _drop_rows_after_start(self, engine: DeepSpeedTrainer) -> None:
        if engine.state.rank != 0 or not self.path.is_file():
            return
        start = engine.state.iteration
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if _logged_iteration(line) <= start]
        if len(kept) != len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)

    def __call__(self, engine: DeepSpeedTrainer) -> None:
        if engine.state.rank != 0:
            return
        out = engine.state.output or {}
        row: dict[str, Any] = {"iteration": engine.state.iteration, "epoch": engine.state.epoch, "step": engine.optimizer_steps}
        if "loss" in out:
            row["loss"] = float(out["loss"])
        row["lr"] = float(engine.ds_engine.get_lr()[0])
        if "tokens" in out:
            row["tokens"] = int(out["tokens"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _logged_iteration(line: str) -> float:
    """The iteration of a loss-log line (a line that does not parse counts as past any start: dropped)."""
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return float("inf")
