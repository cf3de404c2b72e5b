# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Where a training run is: the epoch cut, the resume position and the end, in one place.

:class:`TrainingSchedule` turns ``(micro-batches per pass, accumulation, epochs, max_steps)`` into the epoch
length (whole optimizer steps), the number of optimizer steps (what the LR schedule is sized for) and the
last iteration; it cuts every data pass to the epoch, puts a resumed run at its position (engine state and
sampler) and stops the engine at the end. :class:`ResumableBatchSampler` makes a pass's batch order depend
only on ``(seed, epoch)``, so skipping the batches already done replays the same batches.

Its arithmetic is checked from the number of samples before a model is loaded
(:meth:`TrainingSchedule.for_samples`): data that cannot fill one optimizer step is refused at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from typing import Any

from torch.utils.data import Sampler

from ..errors import LlavaMedInputError

__all__ = ["TrainingPlanError", "ResumableBatchSampler", "TrainingSchedule"]


class TrainingPlanError(LlavaMedInputError):
    """Batch sizes, ranks and data that cannot make one optimizer step (named by the data file when known)."""


class ResumableBatchSampler(Sampler[list[int]]):
    """Wrap a batch sampler so that pass ``k`` over the data uses epoch ``start_epoch + k`` and the first pass
    after a resume skips the batches already trained on.

    The wrapped sampler (e.g. ``LengthGroupedBatchSampler``, or ``BatchSampler`` over a ``DistributedSampler``)
    must be deterministic given its epoch; ``set_epoch`` is called on it (or on its ``.sampler``) at the
    start of every pass, so the order does not depend on when the engine's events fire.

    Args:
        batch_sampler: the batch sampler to wrap.
        max_batches: yield at most this many batches per pass (the first ones of the epoch's order), so that
            a pass is exactly one engine epoch when the epoch is cut to whole optimizer steps (None: all).
    """

    def __init__(self, batch_sampler: Any, max_batches: int | None = None) -> None:
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        self.batch_sampler = batch_sampler
        self.max_batches = max_batches
        self.next_epoch = 0
        self._skip = 0

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start the next pass at ``epoch`` (0-based), skipping its first ``batches_done`` batches."""
        self.next_epoch, self._skip = int(epoch), int(batches_done)

    def _set_epoch(self, epoch: int) -> None:
        for target in (self.batch_sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
                return

    def __len__(self) -> int:
        n = len(self.batch_sampler)
        return n if self.max_batches is None else min(n, self.max_batches)

    def __iter__(self) -> Iterator[list[int]]:
        self._set_epoch(self.next_epoch)
        self.next_epoch += 1
        skip, self._skip = self._skip, 0
        for i, batch in enumerate(self.batch_sampler):
            if self.max_batches is not None and i >= self.max_batches:
                return
            if i >= skip:
                yield batch


@dataclass(frozen=True)
class TrainingSchedule:
    """Epoch length, optimizer steps and the last iteration of a run (one iteration = one micro-batch per rank).

    Args:
        batches_per_pass: micro-batches one pass over the data gives each rank.
        accumulation: micro-batches per optimizer step.
        num_epochs: passes over the data.
        max_steps: stop after this many optimizer steps (None: ``num_epochs`` epochs).

    Raises:
        TrainingPlanError: a pass shorter than one optimizer step, or non-positive values.
    """

    batches_per_pass: int
    accumulation: int
    num_epochs: int
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.accumulation < 1 or self.num_epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise TrainingPlanError(
                f"accumulation ({self.accumulation}), num_epochs ({self.num_epochs}) and max_steps "
                f"({self.max_steps}) must be >= 1"
            )
        if self.batches_per_pass < self.accumulation:
            raise TrainingPlanError(
                f"an epoch of {self.batches_per_pass} micro-batches per rank is shorter than one optimizer step "
                f"({self.accumulation} accumulated micro-batches)"
            )

    @classmethod
    def for_samples(
        cls,
        num_samples: int,
        micro_batch_size: int,
        world_size: int,
        accumulation: int,
        num_epochs: int,
        max_steps: int | None = None,
        source: str | PathLike | None = None,
    ) -> TrainingSchedule:
        """The schedule of ``num_samples`` samples split over ranks with ``drop_last`` (checked before any model).

        Args:
            num_samples: samples in the training data.
            micro_batch_size: samples per forward pass on one rank.
            world_size: number of ranks.
            accumulation: micro-batches per optimizer step.
            num_epochs: passes over the data.
            max_steps: optimizer step limit.
            source: the data file, named in the error.

        Raises:
            TrainingPlanError: the samples do not fill one optimizer step, with the numbers and what to change.
        """
        per_step = micro_batch_size * world_size * accumulation
        if num_samples < per_step:
            raise TrainingPlanError(
                f"{num_samples} training samples cannot fill one optimizer step of micro_batch_size "
                f"{micro_batch_size} x {world_size} rank(s) x {accumulation} accumulation step(s) = {per_step} "
                f"samples; lower micro_batch_size / global_batch_size (e.g. --set micro_batch_size=1 --set "
                f"global_batch_size={world_size * max(1, num_samples // world_size)}), use fewer ranks, or more data",
                source,
            )
        return cls(num_samples // (micro_batch_size * world_size), accumulation, num_epochs, max_steps)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch."""
        return self.batches_per_pass // self.accumulation

    @property
    def epoch_length(self) -> int:
        """Iterations per epoch: whole optimizer steps (the last micro-batches of a pass that do not fill a
        step are not used; the next epoch is a fresh pass)."""
        return self.steps_per_epoch * self.accumulation

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (what the LR schedule is sized for)."""
        steps = self.steps_per_epoch * self.num_epochs
        return steps if self.max_steps is None else min(steps, self.max_steps)

    @property
    def total_iterations(self) -> int:
        """The iteration after which training is over."""
        return self.total_steps * self.accumulation

    def finished(self, iteration: int) -> bool:
        """Whether ``iteration`` iterations complete the run."""
        return iteration >= self.total_iterations

    def position(self, iteration: int) -> tuple[int, int]:
        """``(epoch, batches done in it)`` after ``iteration`` iterations (epoch 0-based)."""
        return divmod(int(iteration), self.epoch_length)

    # ------------------------------------------------------------------------------------------ engine side
    def attach(self, engine: Any) -> None:
        """Cut every data pass to the epoch and stop ``engine`` at the end. ``engine`` is an Ignite engine whose
        ``data_loader`` has a :class:`ResumableBatchSampler` (needed to cut passes and to resume mid-epoch).

        A run cut by ``max_steps`` stops after its last iteration (at the end of that epoch, so epoch handlers
        such as validation still run, when it falls on one); a run that is over stops before fetching a batch.
        """
        from ignite.engine import Events

        sampler = getattr(getattr(engine, "data_loader", None), "batch_sampler", None)
        if isinstance(sampler, ResumableBatchSampler) and self.epoch_length < len(sampler.batch_sampler):
            # Ignite does not restart the data iterator when an epoch ends before it is used up: the next epoch
            # would start with this one's leftover batches and drift from the sampler epoch resume assumes.
            sampler.max_batches = self.epoch_length
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._stop_when_finished)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_when_finished, True)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._stop_when_finished)

    def _stop_when_finished(self, engine: Any, mid_epoch_only: bool = False) -> None:
        iteration = engine.state.iteration
        if self.finished(iteration) and not (mid_epoch_only and iteration % self.epoch_length == 0):
            engine.terminate()

    def restore(self, engine: Any, iteration: int, epoch_length: int) -> None:
        """Put ``engine`` (state and sampler) at ``iteration``, as saved by a run with ``epoch_length``.

        Raises:
            TrainingPlanError: the checkpoint's epoch length differs from this run's (other data, batch size or
                rank count), or mid-epoch resume without a :class:`ResumableBatchSampler`.
        """
        if int(epoch_length) != self.epoch_length:
            raise TrainingPlanError(
                f"cannot resume: the checkpoint has {epoch_length} iterations per epoch, this run {self.epoch_length} "
                "(the data, micro_batch_size, global_batch_size or number of ranks changed)"
            )
        epoch, done = self.position(iteration)
        engine.state.iteration, engine.state.epoch = int(iteration), epoch
        sampler = getattr(getattr(engine, "data_loader", None), "batch_sampler", None)
        if isinstance(sampler, ResumableBatchSampler):
            sampler.resume_at(epoch, done)
        elif done:
            raise TrainingPlanError("resuming mid-epoch needs a ResumableBatchSampler as the data loader's batch sampler")
