# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Checks of a model config before anything is built: value types and ranges, and its size in memory.

A config read from someone else's folder decides how much memory the factory asks for, so every size
field is checked here first: a wrong type or a value outside its range is a :class:`CheckpointError` naming
the field (``text_config.vocab_size``...), and :func:`estimate_parameters` counts the parameters from the
config alone (no tensor is made), so that :func:`check_fits_memory` can refuse a model that cannot fit
before the first allocation. The ranges are far above every released vision-language model (LLaVA-Med
v1.5: vocab 32000, hidden 4096, 32 layers, 576 image tokens) and far below what would hang or exhaust a
machine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .config_fields import check_int as _check_int
from .config_fields import show_value as _show
from .config_volume import is_volume_config, volume_geometry, volume_parameters

__all__ = [
    "TEXT_LIMITS",
    "VISION_LIMITS",
    "MAX_IMAGE_PATCHES",
    "check_config_values",
    "estimate_parameters",
    "available_memory",
    "check_fits_memory",
]

#: Inclusive integer ranges of the language model's size fields.
TEXT_LIMITS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 1 << 24),
    "hidden_size": (1, 1 << 16),
    "intermediate_size": (1, 1 << 20),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "head_dim": (1, 4096),
    "max_position_embeddings": (1, 1 << 24),
    "bos_token_id": (0, 1 << 24),
    "eos_token_id": (0, 1 << 24),
    "pad_token_id": (0, 1 << 24),
}
#: Inclusive integer ranges of the vision encoder's size fields.
VISION_LIMITS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 1 << 14),
    "intermediate_size": (1, 1 << 18),
    "num_hidden_layers": (1, 256),
    "num_attention_heads": (1, 1024),
    "num_channels": (1, 16),
    "image_size": (1, 8192),
    "patch_size": (1, 8192),
    "projection_dim": (1, 1 << 16),
}
#: Most patches (image tokens) one image may give: 4096 = 896 px at patch 14 (v1.5 gives 576).
MAX_IMAGE_PATCHES = 4096
_TOP_LIMITS: dict[str, tuple[int, int]] = {
    "image_token_id": (0, (1 << 31) - 1),
    "model_max_length": (1, 1 << 24),
    "vision_feature_layer": (-257, 256),
    "token_pool": (1, 64),
    "max_views": (1, 1024),
}
_TEXT_DEFAULTS = {"mistral": (32000, 4096, 14336, 32, 32, 8), "llama": (32000, 4096, 11008, 32, 32, None)}


def _check_positive_float(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{where} must be a finite number > 0, got {_show(value)}")


def _check_ids(where: str, value: Any, low: int, high: int) -> None:
    for i, item in enumerate(value if isinstance(value, list) else [value]):
        if item is not None:
            _check_int(f"{where}[{i}]" if isinstance(value, list) else where, item, low, high)


def check_config_values(config: Any) -> None:
    """Check the types and ranges of a :class:`~monai_llava_med.networks.LlavaMedConfig`'s size fields.

    Args:
        config: the config (its ``vision_config`` / ``text_config`` dicts and top-level fields).

    Raises:
        CheckpointError: naming the first field with a wrong type or an out-of-range value.
    """
    volume = is_volume_config(config.vision_config)
    for part, limits in (("text_config", TEXT_LIMITS), ("vision_config", VISION_LIMITS)):
        values = getattr(config, part)
        if volume and part == "vision_config":
            volume_geometry(values)
            continue
        if not isinstance(values, Mapping):
            raise CheckpointError(f"{part} must be a mapping, got {type(values).__name__}")
        for key, (low, high) in limits.items():
            if values.get(key) is None:
                continue
            if key.endswith("_token_id"):
                _check_ids(f"{part}.{key}", values[key], low, high)
            else:
                _check_int(f"{part}.{key}", values[key], low, high)
        for key in ("rope_theta", "rms_norm_eps", "layer_norm_eps"):
            if values.get(key) is not None:
                _check_positive_float(f"{part}.{key}", values[key])
    for name, (low, high) in _TOP_LIMITS.items():
        _check_int(name, getattr(config, name), low, high)
    text, vision = config.text_config, config.vision_config
    heads, kv = text.get("num_attention_heads"), text.get("num_key_value_heads")
    if heads is not None and kv is not None and heads % kv:
        raise CheckpointError(f"text_config.num_attention_heads = {heads} is not a multiple of num_key_value_heads = {kv}")
    if heads is not None and text.get("hidden_size") is not None and text.get("head_dim") is None:
        if text["hidden_size"] % heads:
            raise CheckpointError(
                f"text_config.hidden_size = {text['hidden_size']} is not a multiple of num_attention_heads = {heads}"
            )
    if volume:
        return
    v_heads, v_hidden = vision.get("num_attention_heads"), vision.get("hidden_size")
    if v_heads is not None and v_hidden is not None and v_hidden % v_heads:
        raise CheckpointError(
            f"vision_config.hidden_size = {v_hidden} is not a multiple of num_attention_heads = {v_heads}"
        )
    patches = (config.image_size // max(1, config.patch_size)) ** 2
    if patches > MAX_IMAGE_PATCHES:
        raise CheckpointError(
            f"vision_config.image_size = {config.image_size} with patch_size = {config.patch_size} gives {patches} "
            f"patches per image, more than {MAX_IMAGE_PATCHES}"
        )


def estimate_parameters(config: Any) -> dict[str, int]:
    """Count the parameters of the network a config describes, by part, without building it.

    Exact for the CLIP vision tower, the projector and the Mistral/Llama language models
    :class:`~monai_llava_med.networks.LlavaMedNet` builds (missing fields take transformers' defaults).

    Args:
        config: a :class:`~monai_llava_med.networks.LlavaMedConfig` that passed :func:`check_config_values`.

    Returns:
        ``{"vision": n, "projector": n, "text_embeddings": n, "text_layers": n}``.
    """
    v, t = config.vision_config, config.text_config
    hv, iv = int(v.get("hidden_size", 768)), int(v.get("intermediate_size", 3072))
    lv, channels = int(v.get("num_hidden_layers", 12)), int(v.get("num_channels", 3))
    patch, positions = config.patch_size, (config.image_size // config.patch_size) ** 2 + 1
    vision_layer = 4 * (hv * hv + hv) + (hv * iv + iv) + (iv * hv + hv) + 4 * hv
    vision = channels * patch * patch * hv + hv + positions * hv + 2 * hv + lv * vision_layer + 2 * hv
    if is_volume_config(v):
        vision, hv = volume_parameters(v), volume_geometry(v)["width"]
    vocab, hidden, inter, layers, heads, kv = _TEXT_DEFAULTS[config.text_model_type]
    vocab, hidden = int(t.get("vocab_size", vocab)), int(t.get("hidden_size", hidden))
    inter, layers = int(t.get("intermediate_size", inter)), int(t.get("num_hidden_layers", layers))
    heads = int(t.get("num_attention_heads", heads))
    kv = int(t.get("num_key_value_heads") or kv or heads)
    head_dim = int(t.get("head_dim") or hidden // heads)
    attn_bias = bool(t.get("attention_bias", False))
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
    if attn_bias:
        attention += (heads + 2 * kv) * head_dim + hidden
    mlp = 3 * hidden * inter + (2 * inter + hidden if t.get("mlp_bias") else 0)
    tied = bool(t.get("tie_word_embeddings", False))
    depth = config.projector_depth
    projector = hv * hidden + hidden + (depth - 1) * (hidden * hidden + hidden)
    return {
        "vision": vision,
        "projector": projector,
        "text_embeddings": vocab * hidden * (1 if tied else 2) + hidden,
        "text_layers": layers * (attention + mlp + 2 * hidden),
    }


def available_memory(device: Any) -> int | None:
    """Bytes free for new tensors on ``device`` (a ``torch.device``): CUDA's free memory, or the host's
    ``MemAvailable`` (capped by a cgroup v2 limit); ``None`` when unknown (then nothing is refused)."""
    if device.type == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    free: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        free = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            free = min(free if free is not None else 1 << 62, int(limit) - used)
    except (OSError, ValueError):
        pass
    if free is None and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            free = None
    return free


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.3g} GiB"


def check_fits_memory(config: Any, placements: list[tuple[Any, int]]) -> int:
    """Refuse a config whose parameters cannot fit in the free memory of the devices they will occupy.

    Args:
        config: a checked :class:`~monai_llava_med.networks.LlavaMedConfig`.
        placements: ``(device, bytes per parameter)`` for each full copy building will hold (e.g. an fp32
            copy on the CPU, then a bf16 copy on the GPU); copies on the same device add up.

    Returns:
        the parameter count.

    Raises:
        CheckpointError: naming the largest part and its fields, the bytes needed and the bytes free.
    """
    parts = estimate_parameters(config)
    total = sum(parts.values())
    needed: dict[Any, int] = {}
    for device, width in placements:
        needed[device] = needed.get(device, 0) + total * width
    fields = {
        "vision": "vision_config (hidden_size, num_hidden_layers, intermediate_size, image_size / patch_size)",
        "projector": "projector_type and the hidden sizes",
        "text_embeddings": "text_config.vocab_size x text_config.hidden_size",
        "text_layers": "text_config (num_hidden_layers, hidden_size, intermediate_size)",
    }
    for device, nbytes in needed.items():
        free = available_memory(device)
        if free is not None and nbytes > free:
            largest = max(parts, key=parts.get)  # type: ignore[arg-type]
            raise CheckpointError(
                f"the model has {total:,} parameters and needs about {_gib(nbytes)} on {device}, but only "
                f"{_gib(free)} is free; the largest part is {largest} ({parts[largest]:,} parameters) set by "
                f"{fields[largest]}"
            )
    return total
