# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""DeepSpeed plumbing: process-group environment, config files, optimizer and learning-rate schedule.

The JSON files in ``training/deepspeed/`` leave run-dependent values as ``"auto"``; :func:`resolve_deepspeed_config`
fills them from a :class:`~monai_llava_med.engines.TrainingConfig` (micro batch, accumulation, clipping,
bf16 on GPUs that support it, fp32 on CPU).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .train_config import TrainingConfig

__all__ = [
    "DEEPSPEED_CONFIG_DIR",
    "DistributedSetupError",
    "init_distributed_env",
    "dist_info",
    "load_deepspeed_config",
    "resolve_deepspeed_config",
    "build_optimizer",
    "build_lr_scheduler",
]

#: Where the named configs (``zero2``, ``zero3``, ``zero2_offload``, ``zero3_offload``) live; override with the
#: ``LLAVA_MED_DEEPSPEED_DIR`` environment variable.
# Shipped inside the package (``training/deepspeed`` in the repository links here), so named configs work
# from an installed wheel too.
DEEPSPEED_CONFIG_DIR = Path(__file__).resolve().parent / "deepspeed_configs"


class DistributedSetupError(CheckpointError):
    """A DeepSpeed config that cannot be read or used (named by its path)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed_env(master_port: int | None = None) -> dict[str, str]:
    """Set the rank variables a launcher would set, for a single process started without one.

    Existing values (from ``torchrun``, ``deepspeed`` or the user) are kept. Without them DeepSpeed would try
    MPI discovery.

    Args:
        master_port: rendezvous port (default: a free local port).

    Returns:
        The values now in effect.
    """
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(master_port if master_port is not None else _free_port())
    return {k: os.environ[k] for k in (*defaults, "MASTER_PORT")}


def dist_info() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the process group, else from the environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, int(os.environ.get("LOCAL_RANK", 0)), world


def load_deepspeed_config(spec: str | PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read a DeepSpeed config: a name in ``training/deepspeed`` (``zero2``...), a JSON path, or a dict.

    Raises:
        DistributedSetupError: unknown name, unreadable file or invalid JSON.
    """
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec))
    path = Path(spec)
    if not path.suffix and not path.exists():
        folder = Path(os.environ.get("LLAVA_MED_DEEPSPEED_DIR", DEEPSPEED_CONFIG_DIR))
        path = folder / f"{spec}.json"
        if not path.is_file():
            known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
            raise DistributedSetupError(f"no DeepSpeed config named {str(spec)!r}; known: {known}", path)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DistributedSetupError(f"cannot read the DeepSpeed config: {err}", path) from err
    if not isinstance(values, dict):
        raise DistributedSetupError("a DeepSpeed config must be a JSON object", path)
    return values


def _bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_deepspeed_config(
    spec: str | PathLike | Mapping[str, Any], config: TrainingConfig, world_size: int, trainable_numel: int | None = None
) -> dict[str, Any]:
    """Fill the ``"auto"`` entries of a DeepSpeed config from the training config.

    ``train_micro_batch_size_per_gpu`` = ``micro_batch_size``; ``gradient_accumulation_steps`` from
    :meth:`TrainingConfig.accumulation_steps`; ``gradient_clipping`` = ``max_grad_norm``; ``bf16.enabled`` is
    true on GPUs with bf16 and false on CPU (fp32). On CPU, pinned-memory offload is switched off.

    Args:
        spec: see :func:`load_deepspeed_config`.
        config: the run's hyper-parameters.
        world_size: number of ranks.
        trainable_numel: number of trainable parameters; ZeRO communication buckets larger than the whole
            gradient are cut to it (a bucket is a pre-allocated buffer: 200M elements cost 0.8 GB and, on CPU,
            a second per step for nothing on a small model).
    """
    ds = load_deepspeed_config(spec)
    auto = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.accumulation_steps(world_size),
        "gradient_clipping": config.max_grad_norm,
    }
    for key, value in auto.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    for half in ("bf16", "fp16"):
        section = ds.get(half)
        if isinstance(section, dict) and section.get("enabled") == "auto":
            section["enabled"] = half == "bf16" and _bf16_available()
    if not torch.cuda.is_available():
        ds.pop("fp16", None)
        zero = ds.get("zero_optimization", {})
        for key in ("offload_optimizer", "offload_param"):
            if isinstance(zero.get(key), dict):
                zero[key]["pin_memory"] = False
    zero = ds.get("zero_optimization", {})
    if trainable_numel is not None:
        cap = max(int(trainable_numel), 1_000_000)
        for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size"):
            if isinstance(zero.get(key), (int, float)) and zero[key] > cap:
                zero[key] = cap
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("zero_force_ds_cpu_optimizer", False)
    return ds


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed (matrices) and non-decayed (biases, norms) groups."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters for this stage")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: TrainingConfig, ds_config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: DeepSpeed's CPU Adam when the optimizer state is offloaded to CPU,
    else ``torch.optim.AdamW``.

    Args:
        model: the network with the stage's parameters trainable.
        config: learning rate, betas, epsilon, weight decay.
        ds_config: the resolved DeepSpeed config (checked for optimizer offload).
    """
    groups = _decay_groups(model, config.weight_decay)
    kwargs = {"lr": config.learning_rate, "betas": tuple(config.adam_betas), "eps": config.adam_eps}
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {})
    if isinstance(offload, dict) and offload.get("device") == "cpu" and torch.cuda.is_available():
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then ``cosine``/``linear``/``constant`` schedule (transformers' implementations), stepped once
    per optimizer step by DeepSpeed.

    Args:
        optimizer: the client optimizer.
        config: ``lr_scheduler`` and ``warmup_ratio``.
        total_steps: optimizer steps of the whole run.
    """
    from transformers import get_scheduler

    warmup = math.ceil(config.warmup_ratio * total_steps)
    name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))
