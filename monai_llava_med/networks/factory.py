# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The one factory of :class:`LlavaMedNet` and the one place that resolves dtype and device.

Every path that makes a network goes through :func:`build_llava_med`: a fresh random network (tests, the
first stage of training), :func:`~monai_llava_med.networks.load_pretrained` (the bundle, MONAI Label, the
predictor, training's ``init_from``) and :func:`~monai_llava_med.networks.assemble_from_parts`. With
``state_dict`` the network is built on the meta device and the given tensors are assigned to it, so a
pretrained model is materialised once, never as a random copy first.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch

from ..errors import CheckpointError
from .checkpoint_files import load_state_dict_strict
from .config import LlavaMedConfig
from .config_checks import check_fits_memory
from .llava_med import LlavaMedNet, configure_stage

__all__ = ["build_llava_med", "default_dtype", "resolve_device", "resolve_dtype", "resolve_placement"]

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The dtype used when none is given: bf16 on CUDA devices that support it, fp32 elsewhere."""
    device = resolve_device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """``None`` -> CPU; ``"auto"`` -> the first CUDA device when there is one, else CPU; else ``torch.device``.

    Raises:
        ValueError: for a string that names no device.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"not a device: {device!r} ({err})") from err


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str | None = None) -> torch.dtype:
    """``None`` -> :func:`default_dtype` of ``device``; a name (``"bfloat16"``, ``"bf16"``, ``"torch.float16"``...)
    or a floating ``torch.dtype`` -> that dtype.

    Raises:
        ValueError: for an unknown name or a non-floating dtype.
    """
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.").lower()
        if name not in _DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(_DTYPE_NAMES)}")
        return _DTYPE_NAMES[name]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"the network's dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def resolve_placement(
    dtype: torch.dtype | str | None = None, device: torch.device | str | None = None
) -> tuple[torch.dtype, torch.device]:
    """The one resolver of dtype and device arguments: ``(resolve_dtype(dtype, device), resolve_device(device))``."""
    resolved = resolve_device(device)
    return resolve_dtype(dtype, resolved), resolved


def _as_config(config: LlavaMedConfig | Mapping[str, Any] | str) -> LlavaMedConfig:
    if isinstance(config, LlavaMedConfig):
        return config
    if isinstance(config, Mapping):
        return LlavaMedConfig.from_dict(dict(config))
    if isinstance(config, str):
        try:
            return LlavaMedConfig.preset(config)
        except ValueError as err:
            raise ValueError(
                f"{err} A config file is read with LlavaMedConfig.load(path), a checkpoint folder with "
                "load_pretrained(folder)."
            ) from None
    if isinstance(config, PathLike):
        raise TypeError("build_llava_med takes a config, not a path: use LlavaMedConfig.load(path) or load_pretrained()")
    raise TypeError(f"config must be a LlavaMedConfig, its dict or a preset name, got {type(config).__name__}")


def _match_vision_prefix(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Rename ``vision_tower.vision_model.*`` <-> ``vision_tower.*`` to the CLIP names this transformers uses."""
    return {vision_key_alias(key, expected): value for key, value in state.items()}


def vision_key_alias(key: str, expected: set[str]) -> str:
    """``key``, or its ``vision_tower.vision_model.*`` <-> ``vision_tower.*`` twin when only the twin is expected.

    Args:
        key: a state-dict key.
        expected: the keys the network being loaded has.
    """
    if not key.startswith("vision_tower.") or key in expected:
        return key
    prefix, twin = "vision_tower.vision_model.", "vision_tower."
    other = key.replace(prefix, twin, 1) if key.startswith(prefix) else key.replace(twin, prefix, 1)
    return other if other in expected else key


def build_llava_med(
    config: LlavaMedConfig | Mapping[str, Any] | str,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    source: str | PathLike | None = None,
    stage: str | None = None,
    gradient_checkpointing: bool = False,
    check_memory: bool = True,
) -> LlavaMedNet:
    """The one factory of LLaVA-Med networks: random, or holding the given weights.

    Args:
        config: a :class:`LlavaMedConfig`, its dict form, or a preset name (``"tiny"``, ``"v1.5"``). Files are
            never guessed from a string: read one with :meth:`LlavaMedConfig.load` (a config) or
            :func:`~monai_llava_med.networks.load_pretrained` (a checkpoint folder).
        dtype: parameter dtype (a ``torch.dtype`` or a name such as ``"bfloat16"``); default
            :func:`default_dtype` of the device (bf16 on CUDA, fp32 elsewhere).
        device: where the network goes; ``None`` is the CPU, ``"auto"`` CUDA when available.
        state_dict: weights under :class:`LlavaMedNet`'s names. The network is then built on the meta
            device and these tensors are assigned (missing, unexpected or mis-shaped keys are refused with
            the full list), so no random copy is ever made. Without it the network is randomly initialised
            (in fp32 on the CPU, then cast and moved).
        source: the file or folder ``state_dict`` came from, named in errors.
        stage: optionally freeze for a training stage (see :data:`~monai_llava_med.networks.STAGES`).
        gradient_checkpointing: enable activation checkpointing.
        check_memory: refuse a config whose parameters do not fit in the free memory of the devices they
            will occupy (estimated from the config before anything is allocated).

    Raises:
        CheckpointError: a config value out of range, a model too large for the free memory, or weights that
            do not fit the config.
        ValueError: an unknown preset, dtype or device.
    """
    config = _as_config(config)
    config.validate()
    dtype, device = resolve_placement(dtype, device)
    if check_memory:
        placements = [(device, dtype.itemsize)]
        if state_dict is None and (device.type != "cpu" or dtype != torch.float32):
            placements.insert(0, (torch.device("cpu"), 4))  # the fp32 random copy made before the cast
        try:
            check_fits_memory(config, placements)
        except CheckpointError as err:
            raise CheckpointError(err.reason, source) from None
    if state_dict is None:
        model = LlavaMedNet(config)
    else:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):  # parameters on meta; rotary / position buffers real
            model = LlavaMedNet(config)
        state_dict = _match_vision_prefix(state_dict, set(model.state_dict()))
        load_state_dict_strict(model, state_dict, source if source is not None else "state_dict")
        if model.language_model.config.tie_word_embeddings:
            model.language_model.tie_weights()
    model = model.to(dtype=dtype, device=device)
    if stage is not None:
        configure_stage(model, stage)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
