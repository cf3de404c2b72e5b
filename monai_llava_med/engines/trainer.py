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

import logging
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Average
from monai.engines import Evaluator, Trainer
from monai.engines.utils import IterationEvents
from torch.utils.data import DataLoader

from .schedule import TrainingSchedule
from .training_handlers import ConsolidatedExport, DeepSpeedCheckpointer, LossLogger

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
