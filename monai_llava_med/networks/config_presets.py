# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Sub-configs of the released parts (CLIP ViT-L/14-336, Mistral-7B-Instruct) and of the small native 3-D towers."""

from __future__ import annotations

from typing import Any

from .config_volume import RESNET3D_TOWER_TYPE, VIT3D_TOWER_TYPE

__all__ = ["clip_vit_l14_336_config", "mistral_7b_instruct_config", "monai_vit3d_config", "monai_resnet3d_config"]


def clip_vit_l14_336_config() -> dict[str, Any]:
    """The vision encoder of LLaVA-Med v1.5: ``openai/clip-vit-large-patch14-336`` (vision half)."""
    return {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 336,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
    }


def monai_vit3d_config(**overrides: Any) -> dict[str, Any]:
    """A small native 3-D tower (MONAI ``ViT(spatial_dims=3)``): 32 x 64 x 64 volumes, 64 image tokens.

    Patches of 4 x 8 x 8 voxels give an 8 x 8 x 8 grid, averaged in 2 x 2 x 2 blocks (``pool``) to 64 tokens;
    fast enough to train on a CPU. ``img_size``, ``patch_size`` and ``pool`` are ``(D, H, W)``.

    Args:
        overrides: any of the keys (``img_size``, ``patch_size``, ``pool``, ``hidden_size``, ``mlp_dim``,
            ``num_layers``, ``num_heads``, ``in_channels``, ``qkv_bias``, ``merge``: the ``(D, H, W)`` block of pooled
            cells concatenated into one token, default ``(1, 1, 1)``).
    """
    values: dict[str, Any] = {
        "model_type": VIT3D_TOWER_TYPE,
        "in_channels": 1,
        "img_size": [32, 64, 64],
        "patch_size": [4, 8, 8],
        "pool": [2, 2, 2],
        "hidden_size": 64,
        "mlp_dim": 128,
        "num_layers": 2,
        "num_heads": 4,
        "qkv_bias": False,
    }
    values.update(overrides)
    return values


def monai_resnet3d_config(**overrides: Any) -> dict[str, Any]:
    """A small native 3-D ResNet tower (MONAI ``ResNet(spatial_dims=3)``, basic blocks): 32 x 64 x 64 volumes.

    One block per stage, widths 16 / 32 / 64 / 128, a 3 x 7 x 7 first convolution with in-plane stride 2 and the
    max pool: the last stage's 2 x 2 x 2 feature map gives 8 tokens of width 128 (left / right, front / back,
    cranial / caudal each on its own grid axis). Its BatchNorm layers make it learn in a few hundred steps on a
    CPU where the 3-D ViT of :func:`monai_vit3d_config` learns nothing (``docs/training.md``). MedicalNet's
    ResNet-10 is ``layers=[1, 1, 1, 1], block_inplanes=[64, 128, 256, 512], conv1_t_size=7,
    conv1_t_stride=2, shortcut_type="B", bias_downsample=False``.

    Args:
        overrides: any of the keys (``img_size``, ``in_channels``, ``block`` ("basic" or "bottleneck"), ``layers``,
            ``block_inplanes``, ``conv1_t_size``, ``conv1_t_stride``, ``no_max_pool``, ``shortcut_type`` ("A" or
            "B"), ``bias_downsample``, ``pool``, ``merge``: the ``(D, H, W)`` block of pooled cells concatenated into
            one token, e.g. ``[2, 2, 2]``: the 8 cells as one token of width 8 x 128); sizes are ``(D, H, W)``.
    """
    values: dict[str, Any] = {
        "model_type": RESNET3D_TOWER_TYPE,
        "in_channels": 1,
        "img_size": [32, 64, 64],
        "block": "basic",
        "layers": [1, 1, 1, 1],
        "block_inplanes": [16, 32, 64, 128],
        "conv1_t_size": [3, 7, 7],
        "conv1_t_stride": [1, 2, 2],
        "no_max_pool": False,
        "shortcut_type": "A",
        "bias_downsample": False,
        "pool": [1, 1, 1],
    }
    values.update(overrides)
    return values


def mistral_7b_instruct_config() -> dict[str, Any]:
    """The language model of LLaVA-Med v1.5: Mistral-7B-Instruct-v0.2."""
    return {
        "model_type": "mistral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
