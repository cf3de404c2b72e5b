# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The starting point of stage 1, assembled from a pretrained CLIP folder and a pretrained causal-LM folder."""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .checkpoint_files import IGNORED_KEYS, TEXT_FIELDS
from .config import LlavaMedConfig
from .layout_ours import save_pretrained
from .factory import build_llava_med
from .llava_med import LlavaMedNet, build_projector

__all__ = ["assemble_from_parts"]

logger = logging.getLogger(__name__)


def assemble_from_parts(
    vision_dir: str | PathLike,
    language_dir: str | PathLike,
    out_dir: str | PathLike | None = None,
    projector_type: str = "mlp2x_gelu",
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str = "patch",
    name: str = "llava-med-init",
    seed: int = 0,
) -> tuple[LlavaMedNet, Any]:
    """Build the starting point of stage 1: a pretrained CLIP tower + a pretrained LLM + a fresh projector.

    Args:
        vision_dir: a local CLIP folder (``CLIPModel`` or ``CLIPVisionModel`` weights, e.g.
            ``openai/clip-vit-large-patch14-336``); only the vision half is kept.
        language_dir: a local causal-LM folder (Mistral or Llama, e.g. ``Mistral-7B-Instruct-v0.2``) with its
            tokenizer; ``<image>`` and a pad token are added to the tokenizer when absent. When the added pad
            token (or any other token but ``<image>``) lies beyond the LLM's embedding rows, the embeddings and
            LM head are resized to cover it (new rows = mean of the old ones).
        out_dir: when given, the result is written there with :func:`save_pretrained` (the ``init_from`` of
            stage 1).
        projector_type: ``linear`` or ``mlp{N}x_gelu``.
        vision_feature_layer: hidden state fed to the projector.
        vision_feature_select_strategy: ``patch`` or ``cls_patch``.
        name: ``config.name`` of the result.
        seed: seed of the projector's random initialisation.

    Returns:
        ``(model, tokenizer)`` in fp32.

    Raises:
        CheckpointError: when a folder is missing or is not a CLIP / supported causal LM.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    from ..conversation import IMAGE_TOKEN
    from ..conversation import load_tokenizer as _load_tokenizer

    vision_dir, language_dir = Path(vision_dir), Path(language_dir)
    for folder in (vision_dir, language_dir):
        if not (folder / "config.json").is_file():
            raise CheckpointError("not a model folder (no config.json)", folder)
    try:
        vision_config = CLIPVisionConfig.from_pretrained(str(vision_dir))
        text_config = AutoConfig.from_pretrained(str(language_dir))
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"cannot read the component configs: {err}", vision_dir) from err
    tokenizer = _load_tokenizer(language_dir)
    text = {"model_type": text_config.model_type}
    text.update({k: getattr(text_config, k) for k in TEXT_FIELDS if getattr(text_config, k, None) is not None})
    vision = {"model_type": "clip_vision_model", **vision_config.to_diff_dict()}
    for values in (vision, text):
        values.pop("transformers_version", None)
    config = LlavaMedConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        projector_type=projector_type,
        image_token_id=int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)),
        model_max_length=int(min(tokenizer.model_max_length, 2048)),
        name=name,
    )
    try:
        vision_tower = CLIPVisionModel.from_pretrained(str(vision_dir), dtype=torch.float32)
        language_model = AutoModelForCausalLM.from_pretrained(str(language_dir), dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load the component weights: {err}", language_dir) from err
    # a tokenizer without <unk> got a new <pad> (after <image>): every id it can emit except <image> (remapped by
    # LlavaMedNet.embed) must have an embedding row, so grow the embeddings / LM head (new rows = mean of the old)
    rows = language_model.get_input_embeddings().num_embeddings
    needed = 1 + max(i for i in tokenizer.get_vocab().values() if i != config.image_token_id)
    if needed > rows:
        language_model.resize_token_embeddings(needed)
        config.text_config["vocab_size"] = needed
        logger.info("grew the language model's embeddings from %d to %d rows for the added tokens", rows, needed)
    torch.manual_seed(seed)
    projector = build_projector(projector_type, vision_tower.config.hidden_size, language_model.config.hidden_size)
    state = {f"projector.{k}": v for k, v in projector.state_dict().items()}
    state.update({f"vision_tower.{k}": v for k, v in vision_tower.state_dict().items()})
    state.update({f"language_model.{k}": v for k, v in language_model.state_dict().items()})
    state = {k: v for k, v in state.items() if not IGNORED_KEYS.search(k)}
    # the factory builds on the meta device and takes these tensors over: nothing is initialised twice
    model = build_llava_med(config, dtype=torch.float32, state_dict=state, source=language_dir).eval()
    if out_dir is not None:
        save_pretrained(model, out_dir, tokenizer)
    return model, tokenizer
