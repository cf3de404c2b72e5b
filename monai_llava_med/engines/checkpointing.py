# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Exact resume and consolidated export for DeepSpeed training.

A checkpoint is a DeepSpeed checkpoint folder ``checkpoints/step{N:08d}`` (module, ZeRO optimizer partitions,
the client LR scheduler, and in DeepSpeed's client state the data position ``iteration``, ``epoch_length``)
plus ``rng_state_rank{r}.safetensors`` per rank (python, numpy, torch CPU and CUDA RNG as tensors and JSON: a
format that cannot carry code), then ``manifest.json`` (size and sha256 of every file) and ``latest``, written
last (:mod:`~monai_llava_med.engines.resume`). DeepSpeed's own files are pickles that DeepSpeed loads with
``weights_only=False``: resume only from a folder you trust. Starting from someone else's weights goes through
``init_from`` (safetensors).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from ..errors import CheckpointError
from ..networks import LlavaMedConfig, LlavaMedNet, build_llava_med, save_pretrained
from .lora import apply_lora, merge_lora
from .resume import (
    checkpoint_tag,
    commit_checkpoint,
    is_disk_full,
    plan_resume,
    prune_checkpoints,
    read_latest,
    verify_checkpoint,
)
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


def latest_checkpoint(checkpoint_dir: str | PathLike) -> str | None:
    """The newest complete checkpoint's tag (manifest and file sizes checked), or None when there is none.

    Raises:
        CheckpointError: ``latest`` holds something other than a checkpoint tag of this run.
    """
    return plan_resume(checkpoint_dir, checksums=False, collective=False).tag


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng_state_rank{rank}.safetensors"


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


def _save_rng_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write RNG states as safetensors tensors plus JSON metadata (no pickle), through a renamed temporary file."""
    from safetensors.torch import save_file

    version, mt, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    tensors = {
        "python": torch.tensor(mt, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "torch": state["torch"].clone(),
    }
    if "cuda" in state:
        tensors["cuda"] = state["cuda"].cpu().clone()
    meta = {"python_version": version, "python_gauss": gauss, "numpy_name": name, "numpy_pos": int(pos),
            "numpy_has_gauss": int(has_gauss), "numpy_cached_gaussian": float(cached)}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"rng": json.dumps(meta)})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_rng_state(path: Path) -> dict[str, Any]:
    """Read :func:`_save_rng_state` output; nothing in the file can run code.

    Raises:
        CheckpointError: the file is missing, empty, damaged or not an RNG state of this format.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["rng"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state: dict[str, Any] = {
            "python": (int(meta["python_version"]), tuple(int(v) for v in tensors["python"].tolist()),
                       None if meta["python_gauss"] is None else float(meta["python_gauss"])),
            "numpy": (str(meta["numpy_name"]), tensors["numpy"].numpy().astype(np.uint32), int(meta["numpy_pos"]),
                      int(meta["numpy_has_gauss"]), float(meta["numpy_cached_gaussian"])),
            "torch": tensors["torch"].to(torch.uint8),
        }
        if "cuda" in tensors:
            state["cuda"] = tensors["cuda"].to(torch.uint8)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path.name} is missing", path.parent) from err
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path.name} is empty, damaged or not an RNG state written by this trainer", path.parent) from err
    return state


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def save_training_checkpoint(
    ds_engine: Any, checkpoint_dir: str | PathLike, iteration: int, epoch_length: int, keep_last: int = 0
) -> Path:
    """Save model, optimizer, scheduler, data position and RNG after ``iteration`` iterations (all ranks call).

    The folder becomes complete (manifest, then ``latest``) only when every file is written; older step
    checkpoints beyond ``keep_last`` are deleted only after that.

    Args:
        ds_engine: the ``deepspeed.DeepSpeedEngine``.
        checkpoint_dir: the run's ``checkpoints`` folder.
        iteration: engine iterations (micro-batches) done; must be at a gradient-accumulation boundary.
        epoch_length: iterations per epoch.
        keep_last: keep this many complete step checkpoints (0 keeps all).

    Raises:
        CheckpointError: the checkpoint could not be written ("no space left on the device" when the disk is
            full); the half-written folder is never resumed from, the previous checkpoints are untouched.
    """
    root = Path(checkpoint_dir)
    tag = checkpoint_tag(iteration)
    folder = root / tag
    rank = ds_engine.global_rank
    position = {"iteration": int(iteration), "epoch_length": int(epoch_length), "optimizer_steps": int(ds_engine.global_steps)}
    try:
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            if folder.exists():  # a stale folder of an interrupted run, past the checkpoint resumed from
                shutil.rmtree(folder)
            folder.mkdir()
        _barrier()
        _save_rng_state(_rng_file(folder, rank), _rng_state())
        _barrier()
        ds_engine.save_checkpoint(str(root), tag=tag, client_state=position, save_latest=False)
        _barrier()
        commit_checkpoint(root, tag, position)
    except (OSError, RuntimeError, CheckpointError, SafetensorError) as err:
        cause = "no space left on the device" if is_disk_full(err) else f"{type(err).__name__}: {err}"
        try:
            previous = read_latest(root)
        except CheckpointError:
            previous = None
        raise CheckpointError(
            f"cannot write checkpoint {tag}: {cause}. The half-written {tag} is not resumed from; "
            + (f"a relaunch resumes from {previous}" if previous else "no earlier checkpoint is complete"),
            root,
        ) from err
    if rank == 0 and keep_last > 0:
        for old in prune_checkpoints(root, tag, keep_last):
            logger.info("deleted checkpoint %s (a newer one is complete)", root / old)
    _barrier()
    if rank == 0:
        logger.info("saved checkpoint %s", folder)
    return folder


def _load_tag(ds_engine: Any, root: Path, tag: str) -> dict[str, Any]:
    rng = _load_rng_state(_rng_file(root / tag, ds_engine.global_rank))  # before any engine state changes
    try:
        path, client = ds_engine.load_checkpoint(str(root), tag=tag)
    except (OSError, RuntimeError, KeyError, ValueError, EOFError) as err:
        raise CheckpointError(f"cannot resume from checkpoint {tag}: {type(err).__name__}: {err}", root) from err
    if path is None or client is None or "iteration" not in client:
        raise CheckpointError(f"checkpoint {tag} has no data position (not written by this trainer)", root)
    _set_rng_state(rng)
    return {k: int(client[k]) for k in ("iteration", "epoch_length", "optimizer_steps")}


def load_training_checkpoint(
    ds_engine: Any, checkpoint_dir: str | PathLike, tag: str | None = None, allow_restart: bool = False
) -> dict[str, Any] | None:
    """Restore model, optimizer, scheduler and this rank's RNG from the newest complete checkpoint (all ranks call).

    Folders that are not complete (no manifest, a file missing, truncated or damaged) are skipped, and so is a
    complete one that fails to load: the one before it is tried. Rank 0 logs which checkpoint it resumed from
    and why it skipped the others.

    Args:
        ds_engine: the ``deepspeed.DeepSpeedEngine`` built exactly as for the saved run.
        checkpoint_dir: the run's ``checkpoints`` folder.
        tag: a specific checkpoint (verified the same way; no fallback).
        allow_restart: return None instead of raising when the folder holds checkpoints but none can be loaded.

    Returns:
        ``{"iteration", "epoch_length", "optimizer_steps"}``, or None when there is nothing to resume.

    Raises:
        CheckpointError: ``tag`` (or every checkpoint in the folder) is incomplete or cannot be loaded, or
            ``latest`` names something that is not a checkpoint of this run.
    """
    root = Path(checkpoint_dir)
    rank = ds_engine.global_rank
    if tag is not None:
        reason = verify_checkpoint(root / tag)
        if reason is not None:
            raise CheckpointError(f"checkpoint {tag} is not complete: {reason}", root)
        return _load_tag(ds_engine, root, tag)
    plan = plan_resume(root)
    skipped: list[tuple[str, str]] = []
    while True:
        skipped += plan.skipped
        if plan.tag is None:
            break
        try:
            position = _load_tag(ds_engine, root, plan.tag)
        except CheckpointError as err:  # complete on disk yet not loadable: try the one before it
            skipped.append((plan.tag, err.reason))
            plan = plan_resume(root, below=plan.tag, latest=plan.latest)
            continue
        plan.skipped = skipped
        if rank == 0:
            (logger.warning if skipped else logger.info)("%s (iteration %d)", plan.describe(root), position["iteration"])
        return position
    plan.skipped = skipped
    if skipped and not plan.holds_checkpoints and rank == 0:
        logger.warning("%s; only unfinished saves: starting from scratch", plan.describe(root))
    if plan.holds_checkpoints and not allow_restart:
        raise CheckpointError(
            plan.describe(root) + ". Refusing to start from scratch over them: fix or remove them, or pass "
            "restart=True (--restart) to start over (the old checkpoints are moved aside, not deleted)",
            root,
        )
    return None


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
        raise CheckpointError("no complete DeepSpeed checkpoint to export", checkpoint_dir)
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"cannot consolidate checkpoint {tag}: {err}", checkpoint_dir) from err
    model = _merged_model(state, model_config, lora, dtype)
    return save_pretrained(model, out_dir, tokenizer)
