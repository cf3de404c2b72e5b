# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The native LLaVA layout: the released ``microsoft/llava-med-v1.5-mistral-7b`` and original LLaVA folders.

``config.json`` has ``model_type`` ``llava_mistral`` / ``llava_llama`` (or ``llava`` with ``mm_*`` fields and a
``...ForCausalLM`` architecture); the weights hold the language model under ``model.*`` / ``lm_head.*``, the
projector under ``model.mm_projector.*`` and the CLIP tower under ``model.vision_tower.vision_tower.*``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .checkpoint_files import TEXT_FIELDS, architecture, model_name, read_state_dict
from .config import LlavaMedConfig, clip_vit_l14_336_config

__all__ = ["NATIVE_KEY_RULES", "NATIVE_MODEL_TYPES", "is_native_llava", "config_from_native"]

logger = logging.getLogger(__name__)

#: ``model_type`` values that always mean the native layout.
NATIVE_MODEL_TYPES = ("llava_mistral", "llava_llama", "llava_med")
#: Released name prefix -> :class:`~monai_llava_med.networks.LlavaMedNet` name prefix (first match wins).
NATIVE_KEY_RULES: list[tuple[str, str]] = [
    ("model.mm_projector.", "projector."),
    ("model.vision_tower.vision_tower.", "vision_tower."),
    ("lm_head.", "language_model.lm_head."),
    ("model.", "language_model.model."),
]

_KNOWN_VISION_TOWERS: dict[str, Callable[[], dict[str, Any]]] = {
    "openai/clip-vit-large-patch14-336": clip_vit_l14_336_config,
    "openai/clip-vit-large-patch14": lambda: {**clip_vit_l14_336_config(), "image_size": 224},
}


def is_native_llava(raw: Mapping[str, Any]) -> bool:
    """Whether a ``model_type: llava`` config is an original-LLaVA (native) one rather than HF Llava."""
    return "mm_vision_tower" in raw or "mm_projector_type" in raw or architecture(raw).endswith("ForCausalLM")


def _vision_config_from_weights(state: Mapping[str, torch.Tensor], folder: Path) -> dict[str, Any]:
    prefix = next((k.split("embeddings.patch_embedding.weight")[0] for k in state if "patch_embedding.weight" in k), None)
    if prefix is None:
        raise CheckpointError("no vision tower weights in the checkpoint and its mm_vision_tower is unknown", folder)
    patch = state[prefix + "embeddings.patch_embedding.weight"]
    positions = state[prefix + "embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.search(r"encoder\.layers\.(\d+)\.", k)))
    hidden = int(patch.shape[0])
    grid = int(round((positions - 1) ** 0.5))
    return {
        "model_type": "clip_vision_model",
        "hidden_size": hidden,
        "intermediate_size": int(state[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),  # CLIP ViTs use 64-wide heads
        "image_size": grid * int(patch.shape[-1]),
        "patch_size": int(patch.shape[-1]),
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


def _reference_vision_config(
    raw: dict[str, Any], state: Mapping[str, torch.Tensor] | None, folder: Path
) -> dict[str, Any]:
    tower = str(raw.get("mm_vision_tower", ""))
    if tower in _KNOWN_VISION_TOWERS:
        return _KNOWN_VISION_TOWERS[tower]()
    tower_path = Path(tower) if tower else None
    if tower_path is not None and not tower_path.is_absolute():
        tower_path = folder / tower_path
    if tower_path is not None and (tower_path / "config.json").is_file():
        from transformers import CLIPVisionConfig

        return {"model_type": "clip_vision_model", **CLIPVisionConfig.from_pretrained(str(tower_path)).to_diff_dict()}
    logger.info("vision tower %r is not a known id: inferring its shape from the checkpoint weights", tower)
    return _vision_config_from_weights(read_state_dict(folder) if state is None else state, folder)


def config_from_native(
    raw: dict[str, Any], folder: Path, state: Mapping[str, torch.Tensor] | None = None
) -> LlavaMedConfig:
    """The :class:`LlavaMedConfig` of a native-layout folder from its ``config.json`` values.

    Args:
        raw: the parsed ``config.json``.
        folder: the checkpoint folder (for errors, the model name and a relative ``mm_vision_tower``).
        state: its weights if already read (to infer an unknown vision tower's shape).
    """
    if raw.get("mm_use_im_start_end") or raw.get("mm_use_im_patch_token"):
        raise CheckpointError(
            "LLaVA-Med v1.0 layouts with <im_start>/<im_patch> tokens are not supported; use v1.5 weights",
            folder,
        )
    aspect = raw.get("image_aspect_ratio", "pad")
    if isinstance(aspect, str) and aspect.startswith("anyres"):
        raise CheckpointError("image_aspect_ratio 'anyres' (LLaVA-NeXT tiling) is not supported", folder)
    text = {k: raw[k] for k in TEXT_FIELDS if k in raw}
    vocab = raw.get("vocab_size", 32000)  # <image> gets this id from the tokenizer (32000 for v1.5)
    mistral = raw["model_type"] == "llava_mistral" or "Mistral" in architecture(raw)
    text["model_type"] = "mistral" if mistral else "llama"
    return LlavaMedConfig(
        vision_config=_reference_vision_config(raw, state, folder),
        text_config=text,
        vision_feature_layer=raw.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=str(raw.get("mm_vision_select_feature", "patch")),
        projector_type=str(raw.get("mm_projector_type", "linear")),
        image_token_id=vocab if isinstance(vocab, int) and 0 <= vocab < 2**31 else 0,  # then the tokenizer's
        image_aspect_ratio="pad" if aspect == "pad" else "resize",
        model_max_length=raw.get("tokenizer_model_max_length", 2048),
        name=model_name(folder),
    )
