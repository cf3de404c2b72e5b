# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Checkpoint loading: tell the three folder layouts apart, rename their weights, build the network.

Three folder layouts are read by :func:`load_pretrained`, each described in its own module:

* ``llava_med`` (ours, :mod:`.layout_ours`): ``llava_med_config.json`` + ``model.safetensors`` (or shards +
  index) + tokenizer.
* ``llava_med_v15`` (:mod:`.layout_llava_native`, the released ``microsoft/llava-med-v1.5-mistral-7b`` and
  original LLaVA): ``config.json`` with ``model_type: llava_mistral``, sharded safetensors with
  ``model.mm_projector.*`` and the CLIP weights under ``model.vision_tower.vision_tower.*``, a sentencepiece
  tokenizer.
* ``hf_llava`` (:mod:`.layout_hf_llava`, ``LlavaForConditionalGeneration``): 4.x or 5.x key names.

:func:`~.export_hf.export_hf_llava` writes the HF Llava layout. Weights are only read with safetensors or
``torch.load(weights_only=True)`` (:mod:`.checkpoint_files`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .assemble import assemble_from_parts
from .checkpoint_files import (
    IGNORED_KEYS,
    architecture,
    load_state_dict_strict,
    read_json,
    read_state_dict,
    resolve_folder,
)
from .config import CONFIG_NAME, LlavaMedConfig
from .config_checks import check_fits_memory
from .export_hf import export_hf_llava
from .layout_hf_llava import HF_LLAVA_KEY_RULES, config_from_hf_llava
from .layout_llava_native import NATIVE_KEY_RULES, NATIVE_MODEL_TYPES, config_from_native, is_native_llava
from .layout_ours import save_pretrained
from .factory import build_llava_med, resolve_placement, vision_key_alias
from .llava_med import LlavaMedNet

__all__ = [
    "detect_layout",
    "read_state_dict",
    "convert_state_dict",
    "config_from_folder",
    "load_state_dict_strict",
    "load_pretrained",
    "save_pretrained",
    "export_hf_llava",
    "assemble_from_parts",
]

logger = logging.getLogger(__name__)

_KEY_RULES: dict[str, list[tuple[str, str]]] = {
    "llava_med": [],
    "llava_med_v15": NATIVE_KEY_RULES,
    "hf_llava": HF_LLAVA_KEY_RULES,
}


def detect_layout(folder: str | PathLike) -> str:
    """Name the layout of a checkpoint folder: ``llava_med``, ``llava_med_v15`` or ``hf_llava``.

    Raises:
        CheckpointError: for a missing folder or an unrecognised config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError("checkpoint folder does not exist", folder)
    if (folder / CONFIG_NAME).is_file():
        return "llava_med"
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"neither {CONFIG_NAME} nor config.json found: not a model folder", folder)
    raw = read_json(folder / "config.json")
    model_type = str(raw.get("model_type", ""))
    if model_type in NATIVE_MODEL_TYPES:
        return "llava_med_v15"
    if model_type == "llava":
        # original-LLaVA folders (LlavaLlamaForCausalLM) also say "llava" but keep the native key layout
        if is_native_llava(raw):
            return "llava_med_v15"
        if architecture(raw) == "LlavaForConditionalGeneration" or "vision_config" in raw or "text_config" in raw:
            return "hf_llava"
        raise CheckpointError(
            "config.json has model_type 'llava' but neither mm_vision_tower (native LLaVA layout) nor "
            "vision_config/text_config (HF Llava layout)",
            folder,
        )
    raise CheckpointError(f"config.json has model_type {model_type!r}; expected llava_mistral or llava", folder)


def _rename(key: str, layout: str) -> str:
    for old, new in _KEY_RULES[layout]:
        if key.startswith(old):
            rest = key[len(old) :]
            if new.endswith("#"):  # linear_{1,2}.weight -> {0,2}.weight
                index, _, tail = rest.partition(".")
                return f"{new[:-1]}{2 * (int(index) - 1)}.{tail}"
            return new + rest
    return key


def convert_state_dict(
    state: Mapping[str, torch.Tensor], layout: str, expected_keys: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """Rename a state dict of ``layout`` to :class:`LlavaMedNet` names.

    Args:
        state: weights as read from the folder.
        layout: one of the names returned by :func:`detect_layout`.
        expected_keys: the target model's keys; used to reconcile CLIP's optional ``vision_model.`` prefix,
            which transformers versions name differently (:func:`build_llava_med` reconciles it too).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if IGNORED_KEYS.search(key):
            continue
        new = _rename(key, layout)
        if expected_keys is not None:
            new = vision_key_alias(new, expected_keys)
        out[new] = value
    return out


def config_from_folder(folder: str | PathLike, state: Mapping[str, torch.Tensor] | None = None) -> LlavaMedConfig:
    """Build a :class:`LlavaMedConfig` from a checkpoint folder of any supported layout.

    Args:
        folder: the checkpoint folder.
        state: its weights if already read; used when the vision tower must be inferred from shapes (the
            weights are read on demand otherwise).
    """
    folder = Path(folder)
    layout = detect_layout(folder)
    if layout == "llava_med":
        return LlavaMedConfig.load(folder)
    try:
        if layout == "llava_med_v15":
            return config_from_native(read_json(folder / "config.json"), folder, state)
        return config_from_hf_llava(folder)
    except CheckpointError as err:
        if err.path is not None:
            raise
        raise CheckpointError(err.reason, folder / "config.json") from err
    except (ValueError, TypeError) as err:  # LlavaMedConfig's own checks of the values read
        raise CheckpointError(f"config.json values cannot build a network: {err}", folder / "config.json") from err


def load_pretrained(
    path: str | PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    load_tokenizer: bool = True,
    check_memory: bool = True,
    view_options: Mapping[str, Any] | None = None,
) -> tuple[LlavaMedNet, Any]:
    """Load a LLaVA-Med network (and its tokenizer) from a local folder of any supported layout.

    The config is read and checked first (value ranges, and the parameters against the free memory of the
    target device), then the weights are read and handed to :func:`build_llava_med`, which assigns them to a
    network built on the meta device: the model is materialised once.

    Args:
        path: a folder in our layout, the released LLaVA-Med v1.5 layout or the HF Llava layout; a hub id
            (``org/name``) is downloaded unless ``HF_HUB_OFFLINE=1``.
        dtype: parameter dtype; default :func:`~monai_llava_med.networks.default_dtype` (fp32 CPU, bf16 GPU).
        device: target device (default CPU; ``"auto"``: CUDA when available).
        load_tokenizer: also load the tokenizer (``<image>`` and a pad token added when absent).
        check_memory: refuse a model whose parameters cannot fit in the free memory before reading weights.
        view_options: ``token_pool`` / ``max_views`` / ``view_mode`` replacing the folder's values (``None``
            values keep them; :meth:`~.config.LlavaMedConfig.with_view_options`); any layout, e.g. the released v1.5
            folder with ``{"token_pool": 2}``.

    Returns:
        ``(model, tokenizer)``; ``tokenizer`` is ``None`` when ``load_tokenizer`` is false. The model is in
        eval mode; ``model.config.image_token_id`` matches the tokenizer's ``<image>`` id.

    Raises:
        CheckpointError: for an unreadable folder, config or weights, weights that do not fit, or a model
            larger than the free memory.
    """
    folder = resolve_folder(path)
    layout = detect_layout(folder)
    config = config_from_folder(folder)
    if view_options:
        try:
            config = config.with_view_options(**view_options)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"view_options cannot be applied: {err}", folder) from None
    dtype, device = resolve_placement(dtype, device)
    if check_memory:
        placements = [(device, dtype.itemsize)]
        if device.type != "cpu":
            placements.append((torch.device("cpu"), dtype.itemsize))  # the weights as read, before the move
        try:
            check_fits_memory(config, placements)
        except CheckpointError as err:
            raise CheckpointError(err.reason, folder) from None
    tokenizer = None
    if load_tokenizer:
        from ..conversation import load_tokenizer as _load_tokenizer

        tokenizer = _load_tokenizer(folder, model_max_length=config.model_max_length)
        image_id = tokenizer.convert_tokens_to_ids(config.image_token)
        if layout == "llava_med" and image_id != config.image_token_id:
            raise CheckpointError(
                f"tokenizer maps {config.image_token} to {image_id} but the config says {config.image_token_id}", folder
            )
        config.image_token_id = int(image_id)
    state = convert_state_dict(read_state_dict(folder), layout)
    model = build_llava_med(config, dtype=dtype, device=device, state_dict=state, source=folder, check_memory=False)
    logger.info("loaded %s (%s layout) from %s", config.name, layout, folder.name)
    return model.eval(), tokenizer
