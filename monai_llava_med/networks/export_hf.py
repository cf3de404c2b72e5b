# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Export to the HF Llava layout (transformers 4.x key names, which transformers 5, vLLM and SGLang read)."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from .checkpoint_files import save_weights
from .llava_med import LlavaMedNet

__all__ = ["export_hf_llava"]


def _hf_llava_state(model: LlavaMedNet, vocab: int) -> dict[str, torch.Tensor]:
    """Our weights under the transformers 4.x Llava names (embeddings grown to ``vocab`` rows)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("projector."):
            index, _, tail = key[len("projector.") :].partition(".")
            new = f"multi_modal_projector.linear_{int(index) // 2 + 1}.{tail}"
        elif key.startswith("vision_tower."):
            rest = key[len("vision_tower.") :]
            new = "vision_tower." + (rest if rest.startswith("vision_model.") else "vision_model." + rest)
        else:
            new = key
        if key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight") and value.shape[0] < vocab:
            extra = value.float().mean(0, keepdim=True).expand(vocab - value.shape[0], -1).to(value.dtype)
            value = torch.cat([value, extra], 0)
        out[new] = value
    return out


def export_hf_llava(model: LlavaMedNet, tokenizer: Any, out_dir: str | PathLike, max_shard_size: int | str = "5GB") -> Path:
    """Export to the HF Llava layout that ``LlavaForConditionalGeneration.from_pretrained``, vLLM and SGLang load.

    The image token must be inside the vocabulary there, so when ``image_token_id`` (or the tokenizer) lies
    beyond the embedding matrix, the embeddings and LM head grow to a multiple of 64 rows; the new rows are
    the mean of the old ones (as transformers' resize does). The LLaVA "pad" preprocessing is recorded as a
    ``LlavaImageProcessor`` with ``do_pad`` so servers pad images to a square like the model saw.

    Args:
        model: the network (its projector must be ``mlp2x_gelu``).
        tokenizer: its tokenizer (holding ``<image>``).
        out_dir: destination folder (created).
        max_shard_size: shard the weights above this size.

    Raises:
        ValueError: when the projector or vision tower cannot be expressed as HF Llava.
    """
    from transformers import GenerationConfig, LlavaConfig

    config = model.config
    if config.projector_type != "mlp2x_gelu":
        raise ValueError(f"HF Llava only has a 2-layer GELU projector; this model uses {config.projector_type!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = model.language_model.get_input_embeddings().num_embeddings
    needed = max(rows, len(tokenizer), config.image_token_id + 1)
    vocab = rows if needed == rows else -(-needed // 64) * 64
    text = model.language_model.config.to_diff_dict()
    for key in ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path"):
        text.pop(key, None)
    text["vocab_size"] = vocab
    text["model_type"] = model.language_model.config.model_type
    vision = {k: v for k, v in config.vision_config.items() if k != "transformers_version"}
    hf_config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=config.image_token_id,
        image_seq_length=config.num_image_tokens,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy="default" if config.vision_feature_select_strategy == "patch" else "full",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    hf_config.architectures = ["LlavaForConditionalGeneration"]
    hf_config.dtype = str(model.dtype).removeprefix("torch.")
    if tokenizer.pad_token_id is not None:
        hf_config.pad_token_id = tokenizer.pad_token_id
    hf_config.save_pretrained(str(out))
    lm_config = model.language_model.config
    GenerationConfig(bos_token_id=lm_config.bos_token_id, eos_token_id=lm_config.eos_token_id).save_pretrained(str(out))
    save_weights(_hf_llava_state(model, vocab), out, max_shard_size)
    tokenizer.save_pretrained(str(out))
    processor = {
        "image_processor_type": "LlavaImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_pad": config.image_aspect_ratio == "pad",
        "do_resize": True,
        "size": {"shortest_edge": config.image_size},
        "do_center_crop": True,
        "crop_size": {"height": config.image_size, "width": config.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        "do_convert_rgb": True,
        "resample": 3,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    (out / "processor_config.json").write_text(
        json.dumps(
            {"processor_class": "LlavaProcessor", "image_token": config.image_token, "patch_size": config.patch_size,
             "vision_feature_select_strategy": hf_config.vision_feature_select_strategy, "num_additional_image_tokens": 1},
            indent=2,
        )
        + "\n"
    )
    return out
