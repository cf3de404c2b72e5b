# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Handlers of a :class:`~monai_llava_med.engines.DeepSpeedTrainer`: checkpoints and resume, the final export,
the loss log. Each attaches with ``attach(engine)`` like a MONAI handler.
"""

from __future__ import annotations

import json
import logging
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events

from ..errors import CheckpointError
from ..networks import CONFIG_NAME
from .checkpointing import export_consolidated, load_training_checkpoint, save_training_checkpoint
from .resume import move_aside, plan_resume
from .train_config import LoraSettings

if TYPE_CHECKING:
    from .trainer import DeepSpeedTrainer

__all__ = ["DeepSpeedCheckpointer", "ConsolidatedExport", "LossLogger"]

logger = logging.getLogger(__name__)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


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
