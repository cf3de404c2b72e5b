# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The HF Llava layout (``LlavaForConditionalGeneration``), as read by :func:`load_pretrained`.

Weights carry transformers 4.x names (``language_model.model.*``, ``multi_modal_projector.*``,
``vision_tower.*``) or 5.x names (``model.language_model.*``, ``model.vision_tower.*``...). The
preprocessing and context length come from ``preprocessor_config.json`` / ``tokenizer_config.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .checkpoint_files import TEXT_FIELDS, model_name, read_json
from .config import LlavaMedConfig

__all__ = ["HF_LLAVA_KEY_RULES", "config_from_hf_llava"]

#: HF name prefix -> our name prefix (first match wins); ``#`` renumbers ``linear_{1,2}`` to ``{0,2}``.
HF_LLAVA_KEY_RULES: list[tuple[str, str]] = [
    # transformers 5.x names
    ("model.multi_modal_projector.linear_", "projector.#"),
    ("model.vision_tower.", "vision_tower."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    # transformers 4.x names
    ("multi_modal_projector.linear_", "projector.#"),
    ("vision_tower.", "vision_tower."),
    ("language_model.", "language_model."),
]


def _hf_preprocessing(folder: Path) -> dict[str, Any]:
    """Config fields recorded by an HF Llava folder's ``preprocessor_config.json`` / ``tokenizer_config.json``."""
    out: dict[str, Any] = {}
    if (folder / "preprocessor_config.json").is_file():
        processor = read_json(folder / "preprocessor_config.json")
        if "do_pad" in processor:
            out["image_aspect_ratio"] = "pad" if processor["do_pad"] else "resize"
        for key in ("image_mean", "image_std"):
            values = processor.get(key)
            if isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values):
                out[key] = tuple(float(v) for v in values)
    if (folder / "tokenizer_config.json").is_file():
        max_length = read_json(folder / "tokenizer_config.json").get("model_max_length")
        if isinstance(max_length, int) and 0 < max_length < 1_000_000_000:  # transformers writes 1e30 for "unset"
            out["model_max_length"] = max_length
    return out


def config_from_hf_llava(folder: Path) -> LlavaMedConfig:
    """The :class:`LlavaMedConfig` of an HF Llava folder.

    Raises:
        CheckpointError: an unparsable config, or a vision tower / projector we cannot express.
    """
    from transformers import LlavaConfig

    try:
        hf = LlavaConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"cannot parse the Llava config.json: {err}", folder) from err
    if hf.vision_config.model_type not in ("clip_vision_model", "clip"):
        raise CheckpointError(f"vision tower {hf.vision_config.model_type!r} is not CLIP; unsupported", folder)
    if not isinstance(hf.vision_feature_layer, int):
        raise CheckpointError("multi-layer vision_feature_layer is not supported", folder)
    if hf.projector_hidden_act != "gelu" or not hf.multimodal_projector_bias:
        raise CheckpointError("only a 2-layer GELU projector with bias (mlp2x_gelu) is supported", folder)
    text = {"model_type": hf.text_config.model_type}
    text.update({k: getattr(hf.text_config, k) for k in TEXT_FIELDS if getattr(hf.text_config, k, None) is not None})
    vision = {"model_type": "clip_vision_model", **hf.vision_config.to_diff_dict()}
    vision.pop("transformers_version", None)
    return LlavaMedConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=hf.vision_feature_layer,
        vision_feature_select_strategy="patch" if hf.vision_feature_select_strategy == "default" else "cls_patch",
        projector_type="mlp2x_gelu",
        image_token_id=int(hf.image_token_id),
        name=model_name(folder),
        **_hf_preprocessing(folder),
    )
