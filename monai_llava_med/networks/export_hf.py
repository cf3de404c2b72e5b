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

from ..errors import ExportError
from .checkpoint_files import save_weights, staged_folder
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


def _portable_config(hf_config: Any, dtype: torch.dtype) -> dict[str, Any]:
    """The LlavaConfig as JSON that transformers 4.4x reads the same way as 5.x.

    5.x writes ``rope_parameters`` and ``dtype``; 4.x reads ``rope_theta`` and ``torch_dtype`` (and would fall
    back to rope_theta 10000 without it, silently changing v1.5's 1e6): both spellings are written.
    """
    values = json.loads(hf_config.to_json_string())
    text = values["text_config"]
    rope = text.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        text.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default" and "rope_scaling" not in text:
            text["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    name = str(dtype).removeprefix("torch.")
    values["dtype"] = values["torch_dtype"] = name
    return values


def _processor_files(config: Any, select_strategy: str) -> dict[str, str]:
    processor = {
        "image_processor_type": "LlavaImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_pad": config.image_aspect_ratio == "pad",
        "do_resize": True,
        # "pad": square canvas, then resize; "resize": squash to the square, as our pipeline does (no crop)
        "size": {"height": config.image_size, "width": config.image_size},
        "do_center_crop": False,
        "crop_size": {"height": config.image_size, "width": config.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        "do_convert_rgb": True,
        "resample": 3,
    }
    processor_config = {
        "processor_class": "LlavaProcessor",
        "image_token": config.image_token,
        "patch_size": config.patch_size,
        "vision_feature_select_strategy": select_strategy,
        "num_additional_image_tokens": 1,
    }
    return {
        "preprocessor_config.json": json.dumps(processor, indent=2) + "\n",
        "processor_config.json": json.dumps(processor_config, indent=2) + "\n",
    }


def export_hf_llava(
    model: LlavaMedNet,
    tokenizer: Any,
    out_dir: str | PathLike,
    max_shard_size: int | str = "5GB",
    template: str | None = None,
) -> Path:
    """Export to the HF Llava layout that transformers 4.4x / 5.x, vLLM and SGLang load and prompt like us.

    The image token must be inside the vocabulary there, so when ``image_token_id`` (or the tokenizer) lies
    beyond the embedding matrix, the embeddings and LM head grow to a multiple of 64 rows; the new rows are
    the mean of the old ones (as transformers' resize does). The LLaVA "pad" preprocessing is recorded as a
    ``LlavaImageProcessor`` with ``do_pad`` so servers pad images to a square like the model saw. The
    tokenizer is written for serving (:func:`~monai_llava_med.conversation.serving_tokenizer_files`): a
    ``PreTrainedTokenizerFast`` config, BOS added once, and a Jinja chat template (``chat_template.jinja``,
    also in ``tokenizer_config.json`` and ``chat_template.json`` for older readers) rendering the model's
    conversation template byte for byte. Files are written to a staging folder and moved into place one by
    one (mode ``0644`` under the usual umask), the config last.

    Args:
        model: the network (its projector must be ``mlp2x_gelu``).
        tokenizer: its tokenizer (holding ``<image>``).
        out_dir: destination folder (created).
        max_shard_size: shard the weights above this size.
        template: the conversation template of the chat template (default ``model.config.template``).

    Raises:
        ExportError: for a pooled model (``token_pool > 1``): HF Llava has no spatial pooling of the patch tokens.
        ExportError: for a native 3-D vision tower, which HF Llava cannot hold.
        ValueError: when the projector or vision tower cannot be expressed as HF Llava.
        TemplateError: when the conversation template cannot be expressed as a chat template.
    """
    from transformers import GenerationConfig, LlavaConfig

    from ..conversation.tokenizer import serving_tokenizer_files

    config = model.config
    if config.is_volume:
        raise ExportError(
            "HF Llava holds a 2-D CLIP tower only; this model has a native 3-D tower "
            f"({config.vision_config['model_type']}), which "
            "transformers, vLLM and SGLang cannot load: keep it in our layout (save_pretrained)", out_dir
        )
    if config.token_pool != 1:
        raise ExportError(
            f"token_pool = {config.token_pool} averages {config.token_pool} x {config.token_pool} patch blocks before "
            f"the projector ({config.num_image_tokens} tokens per image), and transformers' "
            "LlavaForConditionalGeneration has no such pooling: the exported model would see other features than it "
            "was trained on; save it with save_pretrained (our layout) instead",
            out_dir,
        )
    if config.projector_type != "mlp2x_gelu":
        raise ValueError(f"HF Llava only has a 2-layer GELU projector; this model uses {config.projector_type!r}.")
    tokenizer_files = serving_tokenizer_files(
        tokenizer, template or config.template, model_max_length=config.model_max_length
    )
    rows = model.language_model.get_input_embeddings().num_embeddings
    needed = max(rows, len(tokenizer), config.image_token_id + 1)
    vocab = rows if needed == rows else -(-needed // 64) * 64
    text = model.language_model.config.to_diff_dict()
    for key in ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path"):
        text.pop(key, None)
    text["vocab_size"] = vocab
    text["model_type"] = model.language_model.config.model_type
    vision = {k: v for k, v in config.vision_config.items() if k != "transformers_version"}
    select_strategy = "default" if config.vision_feature_select_strategy == "patch" else "full"
    hf_config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=config.image_token_id,
        image_seq_length=config.num_image_tokens,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=select_strategy,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    hf_config.architectures = ["LlavaForConditionalGeneration"]
    if tokenizer.pad_token_id is not None:
        hf_config.pad_token_id = tokenizer.pad_token_id
    lm_config = model.language_model.config
    generation = GenerationConfig(bos_token_id=lm_config.bos_token_id, eos_token_id=lm_config.eos_token_id)
    files = {
        "config.json": json.dumps(_portable_config(hf_config, model.dtype), indent=2, sort_keys=True) + "\n",
        "generation_config.json": generation.to_json_string(use_diff=True),
        **tokenizer_files,
        **_processor_files(config, select_strategy),
    }
    with staged_folder(out_dir) as staging:
        save_weights(_hf_llava_state(model, vocab), staging, max_shard_size)
        for name, content in files.items():
            (staging / name).write_text(content, encoding="utf-8")
    return Path(out_dir)
