# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A tiny folder in the layout of the released ``microsoft/llava-med-v1.5-mistral-7b``, written from literal data.

The key names, file names and ``config.json`` fields below are copied from the released checkpoint (see the
project's reference notes), not derived from the loader: nothing here imports ``monai_llava_med.networks``.
Only the sizes are tiny. :func:`hf_llava_reference` loads the same tensors into transformers'
``LlavaForConditionalGeneration`` through transformers' own key handling (4.x Llava names), the independent
model the loaded network is compared with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# tiny sizes in the shape of v1.5 (Mistral with grouped KV heads, CLIP ViT with CLS + patches, mlp2x_gelu)
TEXT = {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2}
VISION = {"hidden": 32, "intermediate": 64, "layers": 2, "heads": 2, "image": 32, "patch": 8}
#: the released vision tower's config as a local folder (the id "openai/clip-vit-large-patch14-336" would
#: select the 1024-wide ViT-L); ``mm_vision_tower`` may name a folder relative to the checkpoint
TOWER_FOLDER = "clip-vit-tiny-patch8-32"


def released_keys(text_layers: int = TEXT["layers"], vision_layers: int = VISION["layers"]) -> list[str]:
    """The released checkpoint's tensor names, literally."""
    keys = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(text_layers):
        keys += [f"model.layers.{i}.self_attn.{p}_proj.weight" for p in ("q", "k", "v", "o")]
        keys += [f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        keys += [f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"]
    keys += ["model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight",
             "model.mm_projector.2.bias"]
    clip = "model.vision_tower.vision_tower.vision_model."
    keys += [clip + "embeddings.class_embedding", clip + "embeddings.patch_embedding.weight",
             clip + "embeddings.position_embedding.weight", clip + "embeddings.position_ids",
             clip + "pre_layrnorm.weight", clip + "pre_layrnorm.bias",
             clip + "post_layernorm.weight", clip + "post_layernorm.bias"]
    for i in range(vision_layers):
        layer = f"{clip}encoder.layers.{i}."
        for p in ("q", "k", "v", "out"):
            keys += [f"{layer}self_attn.{p}_proj.weight", f"{layer}self_attn.{p}_proj.bias"]
        for p in ("layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2"):
            keys += [f"{layer}{p}.weight", f"{layer}{p}.bias"]
    return keys


def _shape(key: str, vocab: int) -> tuple[int, ...]:
    h, f, kv = TEXT["hidden"], TEXT["intermediate"], TEXT["hidden"] // TEXT["heads"] * TEXT["kv_heads"]
    vh, vf = VISION["hidden"], VISION["intermediate"]
    positions = (VISION["image"] // VISION["patch"]) ** 2 + 1
    if key.startswith("model.vision_tower."):
        table = {
            "class_embedding": (vh,), "patch_embedding.weight": (vh, 3, VISION["patch"], VISION["patch"]),
            "position_embedding.weight": (positions, vh), "position_ids": (1, positions),
            "fc1.weight": (vf, vh), "fc1.bias": (vf,), "fc2.weight": (vh, vf), "_proj.weight": (vh, vh),
        }
        default = (vh,)  # biases and layer norms
    else:
        table = {
            "embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h),
            "q_proj.weight": (h, h), "k_proj.weight": (kv, h), "v_proj.weight": (kv, h), "o_proj.weight": (h, h),
            "gate_proj.weight": (f, h), "up_proj.weight": (f, h), "down_proj.weight": (h, f),
            "mm_projector.0.weight": (h, vh), "mm_projector.2.weight": (h, h),
        }
        default = (h,)  # RMS norms and projector biases
    return next((shape for suffix, shape in table.items() if key.endswith(suffix)), default)


def released_tensors(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the released names (norm weights near 1, the rest small), bf16-free fp32."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in released_keys():
        shape = _shape(key, vocab)
        if key.endswith("position_ids"):
            out[key] = torch.arange(shape[1]).unsqueeze(0)
        elif "norm" in key and key.endswith("weight"):
            out[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            out[key] = 0.05 * torch.randn(shape, generator=gen)
    return out


def released_config(vocab: int, vision_tower: str = TOWER_FOLDER) -> dict:
    """``config.json`` as released (Mistral fields at the top level, ``mm_*`` fields, unused leftovers)."""
    return {
        "_name_or_path": "/mnt/model/llava-med-v1.5-mistral-7b",
        "architectures": ["LlavaMistralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "feature_outs": "encoder+decoder",
        "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu",
        "hidden_size": TEXT["hidden"],
        "image_aspect_ratio": "pad",
        "img_size": 640,
        "initializer_range": 0.02,
        "intermediate_size": TEXT["intermediate"],
        "max_position_embeddings": 32768,
        "mm_hidden_size": VISION["hidden"],
        "mm_patch_merge_type": "flat",
        "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": vision_tower,
        "model_type": "llava_mistral",
        "num_attention_heads": TEXT["heads"],
        "num_hidden_layers": TEXT["layers"],
        "num_key_value_heads": TEXT["kv_heads"],
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.36.2",
        "tune_mm_mlp_adapter": False,
        "use_cache": True,
        "use_mm_proj": True,
        "vision_backbone": "convnexttiny",
        "vocab_size": vocab,
    }


def tower_config() -> dict:
    """``config.json`` of the local CLIP vision folder ``mm_vision_tower`` names."""
    return {
        "model_type": "clip_vision_model", "hidden_size": VISION["hidden"], "intermediate_size": VISION["intermediate"],
        "num_hidden_layers": VISION["layers"], "num_attention_heads": VISION["heads"], "image_size": VISION["image"],
        "patch_size": VISION["patch"], "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "num_channels": 3,
    }


def write_released_checkpoint(folder: Path, save_tokenizer, vocab: int, *, shards: int = 4, seed: int = 0,
                              vision_tower: str = TOWER_FOLDER) -> dict[str, torch.Tensor]:
    """Write the folder: ``model-0000{i}-of-0000{n}.safetensors`` + index + ``config.json`` + tokenizer.

    Args:
        folder: created.
        save_tokenizer: ``folder -> None`` writing the tokenizer as released (without ``<image>``).
        vocab: ``vocab_size`` (the tokenizer's length, as 32000 is for the released one).
        shards: number of weight files.
        seed: seed of the random tensors.
        vision_tower: ``mm_vision_tower``; the tiny CLIP config is written to :data:`TOWER_FOLDER`.

    Returns:
        the tensors under their released names.
    """
    folder.mkdir(parents=True)
    tensors = released_tensors(vocab, seed)
    keys = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i::shards]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(released_config(vocab, vision_tower), indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (folder / TOWER_FOLDER).mkdir()
    (folder / TOWER_FOLDER / "config.json").write_text(json.dumps(tower_config()))
    save_tokenizer(folder)
    return tensors


def save_plain_tokenizer(tokenizer, folder: Path) -> Path:
    """Save a prepared tokenizer without <image> (nor its vocabulary entry), as the released folder ships it."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image>"]
    data["model"]["vocab"].pop("<image>", None)
    plain = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    plain.save_pretrained(str(folder))
    return folder


#: released name prefix -> transformers 4.x LlavaForConditionalGeneration name prefix (transformers renames
#: these to its current layout itself when loading)
HF_4X_NAMES = (
    ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
    ("model.vision_tower.vision_tower.", "vision_tower."),
    ("lm_head.", "language_model.lm_head."),
    ("model.", "language_model.model."),
)


def hf_llava_reference(tensors: dict[str, torch.Tensor], image_token_id: int, folder: Path):
    """transformers' LlavaForConditionalGeneration holding ``tensors`` (embeddings padded to 64 more rows so the
    image token id lies inside its vocabulary; compare logits over the first ``vocab`` columns)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    vocab = tensors["model.embed_tokens.weight"].shape[0]
    state = {}
    for key, value in tensors.items():
        if key.endswith("position_ids"):
            continue
        new = next(hf + key[len(ours):] for ours, hf in HF_4X_NAMES if key.startswith(ours))
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            value = torch.cat([value, torch.zeros(64, value.shape[1])])
        state[new] = value.contiguous()
    text = {"model_type": "mistral", "vocab_size": vocab + 64, "hidden_size": TEXT["hidden"],
            "intermediate_size": TEXT["intermediate"], "num_hidden_layers": TEXT["layers"],
            "num_attention_heads": TEXT["heads"], "num_key_value_heads": TEXT["kv_heads"], "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": None,
            "tie_word_embeddings": False}
    config = LlavaConfig(vision_config=tower_config(), text_config=text, image_token_id=image_token_id,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", tie_word_embeddings=False)
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
