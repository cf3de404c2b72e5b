# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Exact resume and consolidated export for DeepSpeed training.

A checkpoint is a DeepSpeed checkpoint folder ``checkpoints/step{N:08d}`` (module, ZeRO optimizer partitions,
the client LR scheduler) plus ``rng_state_rank{r}.pt`` per rank (python, numpy, torch CPU and CUDA RNG) and, in
DeepSpeed's client state, the data position (``iteration``, ``epoch_length``). The RNG files are written
before DeepSpeed writes the folder and updates ``latest``, so a run killed at any instant resumes from the
last complete checkpoint. The batch order of an epoch depends only on ``(seed, epoch)``
(:class:`ResumableBatchSampler`), so skipping the iterations already done replays the same batches.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..networks import LlavaMedConfig, LlavaMedNet, build_llava_med, save_pretrained
from .lora import apply_lora, merge_lora
from .schedule import ResumableBatchSampler
from .train_config import LoraSettings

__all__ = [
    "ResumableBatchSampler",
    "checkpoint_tag",
    "latest_checkpoint",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "gather_state_dict",
    "parameter_checksum",
    "export_consolidated",
    "export_from_checkpoint",
]

logger = logging.getLogger(__name__)
_TAG = re.compile(r"^step(\d{8})$")


def checkpoint_tag(step: int) -> str:
    """Folder name of the checkpoint after ``step`` iterations."""
    return f"step{int(step):08d}"


def latest_checkpoint(checkpoint_dir: str | PathLike) -> str | None:
    """The tag DeepSpeed recorded as complete in ``latest``, or None when there is no checkpoint."""
    latest = Path(checkpoint_dir) / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    return tag if (Path(checkpoint_dir) / tag).is_dir() else None


def _rng_state() -> dict[str, Any]:
    """This process's RNG states: python, numpy, torch CPU and, with CUDA, the current CUDA device's generator."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on GPU draws from the device generator, not the CPU one
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`_rng_state` output (the CUDA state on the current device, when saved and CUDA is present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"], torch.cuda.current_device())
        else:
            logger.warning("the checkpoint holds a CUDA RNG state but CUDA is not available: not restored")


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def save_training_checkpoint(
    ds_engine: Any, checkpoint_dir: str | PathLike, iteration: int, epoch_length: int, keep_last: int = 0
) -> Path:
    """Save model, optimizer, scheduler, data position and RNG after ``iteration`` iterations (all ranks call).

    Args:
        ds_engine: the ``deepspeed.DeepSpeedEngine``.
        checkpoint_dir: the run's ``checkpoints`` folder.
        iteration: engine iterations (micro-batches) done; must be at a gradient-accumulation boundary.
        epoch_length: iterations per epoch.
        keep_last: delete older step checkpoints beyond this many (0 keeps all).
    """
    root = Path(checkpoint_dir)
    tag = checkpoint_tag(iteration)
    folder = root / tag
    folder.mkdir(parents=True, exist_ok=True)
    rank = ds_engine.global_rank
    torch.save(_rng_state(), folder / f"rng_state_rank{rank}.pt")
    _barrier()
    client = {"iteration": int(iteration), "epoch_length": int(epoch_length), "optimizer_steps": int(ds_engine.global_steps)}
    ds_engine.save_checkpoint(str(root), tag=tag, client_state=client)
    if rank == 0 and keep_last > 0:
        tags = sorted(p.name for p in root.iterdir() if p.is_dir() and _TAG.match(p.name))
        for old in tags[:-keep_last]:
            shutil.rmtree(root / old, ignore_errors=True)
    _barrier()
    logger.info("saved checkpoint %s", folder)
    return folder


def load_training_checkpoint(ds_engine: Any, checkpoint_dir: str | PathLike, tag: str | None = None) -> dict[str, Any] | None:
    """Restore model, optimizer, scheduler and this rank's RNG; return the data position or None.

    Args:
        ds_engine: the ``deepspeed.DeepSpeedEngine`` built exactly as for the saved run.
        checkpoint_dir: the run's ``checkpoints`` folder.
        tag: a specific checkpoint (default: DeepSpeed's ``latest``).

    Returns:
        ``{"iteration", "epoch_length", "optimizer_steps"}`` or None when there is nothing to resume.

    Raises:
        CheckpointError: the checkpoint exists but cannot be loaded.
    """
    root = Path(checkpoint_dir)
    tag = tag or latest_checkpoint(root)
    if tag is None:
        return None
    rng_file = root / tag / f"rng_state_rank{ds_engine.global_rank}.pt"
    try:
        path, client = ds_engine.load_checkpoint(str(root), tag=tag)
        rng = torch.load(rng_file, weights_only=False)  # our own file: python/numpy RNG states are not tensors
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"cannot resume from checkpoint {tag}: {err}", root) from err
    if path is None or client is None or "iteration" not in client:
        raise CheckpointError(f"checkpoint {tag} has no data position (not written by this trainer)", root)
    _set_rng_state(rng)
    logger.info("resumed from %s at iteration %d", root / tag, client["iteration"])
    return {k: client[k] for k in ("iteration", "epoch_length", "optimizer_steps")}


def gather_state_dict(ds_engine: Any) -> dict[str, torch.Tensor] | None:
    """The full module state dict on rank 0 (None elsewhere); all ranks must call (ZeRO-3 gathers)."""
    if ds_engine.zero_optimization_partition_weights():
        state = ds_engine._zero3_consolidated_16bit_state_dict()  # collective; rank 0 receives the tensors
        return state if ds_engine.global_rank == 0 else None
    if ds_engine.global_rank != 0:
        return None
    return {k: v.detach().clone() for k, v in ds_engine.module.state_dict().items()}


def parameter_checksum(ds_engine: Any) -> float:
    """Sum of all weights in float64 on this rank, ZeRO-3 partitions gathered; all ranks must call."""
    import deepspeed

    params = list(ds_engine.module.parameters())
    enabled = bool(ds_engine.zero_optimization_partition_weights())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=enabled):
        return float(sum(p.detach().double().sum() for p in params))


def _merged_model(
    state: Mapping[str, torch.Tensor], config: LlavaMedConfig, lora: LoraSettings | None, dtype: torch.dtype
) -> LlavaMedNet:
    model = build_llava_med(config, dtype=torch.float32)
    if lora is not None:
        apply_lora(model, lora)
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in missing if not k.endswith(("rotary_emb.inv_freq", "position_ids"))]
    if missing or unexpected:
        raise CheckpointError(f"trained weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if lora is not None:
        merge_lora(model)
    return model.to(dtype).eval()


def export_consolidated(
    ds_engine: Any,
    out_dir: str | PathLike,
    tokenizer: Any = None,
    lora: LoraSettings | None = None,
    dtype: torch.dtype | None = None,
) -> Path | None:
    """Write the trained network in our layout (``save_pretrained``), LoRA merged; all ranks must call.

    Args:
        ds_engine: the ``deepspeed.DeepSpeedEngine`` (its module is the ``LlavaMedNet``).
        out_dir: destination folder.
        tokenizer: saved beside the weights.
        lora: the LoRA settings the model was trained with (merged into the weights).
        dtype: dtype of the saved weights (default: the training dtype).

    Returns:
        ``out_dir`` on rank 0, None on other ranks.
    """
    state = gather_state_dict(ds_engine)
    out = None
    if state is not None:
        module = ds_engine.module
        dtype = dtype or next(iter(state.values())).dtype
        model = _merged_model(state, module.config, lora, dtype)
        out = save_pretrained(model, out_dir, tokenizer)
        logger.info("exported %s to %s", module.config.name, out)
    _barrier()
    return out


def export_from_checkpoint(
    checkpoint_dir: str | PathLike,
    out_dir: str | PathLike,
    model_config: LlavaMedConfig,
    tokenizer: Any = None,
    lora: LoraSettings | None = None,
    tag: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Offline export: consolidate a ZeRO checkpoint's fp32 weights (``zero_to_fp32``) into our layout.

    Args:
        checkpoint_dir: the run's ``checkpoints`` folder.
        out_dir: destination folder.
        model_config: the trained network's config.
        tokenizer: saved beside the weights.
        lora: LoRA settings of the run (merged on export).
        tag: checkpoint tag (default: latest).
        dtype: dtype of the saved weights.

    Raises:
        CheckpointError: no checkpoint, or weights that do not fit ``model_config``.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = tag or latest_checkpoint(checkpoint_dir)
    if tag is None:
        raise CheckpointError("no DeepSpeed checkpoint to export", checkpoint_dir)
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"cannot consolidate checkpoint {tag}: {err}", checkpoint_dir) from err
    model = _merged_model(state, model_config, lora, dtype)
    return save_pretrained(model, out_dir, tokenizer)
