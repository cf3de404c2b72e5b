# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Vision configs of the native 3-D towers, checked before anything is built.

* ``monai_vit3d``: MONAI ``ViT(spatial_dims=3)``; its patch grid (``img_size / patch_size``) average-pooled in
  ``pool`` blocks gives the tokens of one volume;
* ``monai_resnet3d``: MONAI's 3-D ``ResNet`` (the MedicalNet layout); the feature map of its last stage, averaged
  in ``pool`` blocks, gives the tokens.

Either tower may then concatenate the cells of each ``merge`` block of the pooled grid into one token
(space-to-depth, as Qwen2-VL's patch merger does with 2 x 2 patches): fewer, wider tokens, the projector's MLP
seeing the cells side by side.

Either gives at most :data:`MAX_VOLUME_TOKENS` tokens per volume. :func:`volume_geometry` derives the token grid
and the tower's width from the config alone, :func:`volume_parameters` counts the tower's parameters without
building it (both exact: ``tests/test_networks_resnet3d.py`` compares them with MONAI's modules).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from .config_fields import check_int, check_triple, show_value

__all__ = [
    "VIT3D_TOWER_TYPE",
    "RESNET3D_TOWER_TYPE",
    "VOLUME_TOWER_TYPES",
    "VIT3D_LIMITS",
    "MAX_VOLUME_TOKENS",
    "is_volume_config",
    "volume_geometry",
    "volume_parameters",
    "resnet3d_fields",
    "check_volume_feature_layer",
]

#: ``vision_config["model_type"]`` of the 3-D ViT tower (MONAI ``ViT(spatial_dims=3)``).
VIT3D_TOWER_TYPE = "monai_vit3d"
#: ``vision_config["model_type"]`` of the 3-D ResNet tower (MONAI ``ResNet(spatial_dims=3)``).
RESNET3D_TOWER_TYPE = "monai_resnet3d"
VOLUME_TOWER_TYPES = (VIT3D_TOWER_TYPE, RESNET3D_TOWER_TYPE)
#: Most tokens one volume may give the language model (M3D-LaMed and CT-CHAT use 256).
MAX_VOLUME_TOKENS = 256
#: Inclusive integer ranges of the ViT tower's scalar fields (``img_size``, ``patch_size``, ``pool`` are 3 ints).
VIT3D_LIMITS: dict[str, tuple[int, int]] = {
    "in_channels": (1, 16),
    "hidden_size": (1, 1 << 14),
    "mlp_dim": (1, 1 << 18),
    "num_layers": (1, 256),
    "num_heads": (1, 1024),
}
_TRIPLES = {"img_size": (1, 2048), "patch_size": (1, 2048), "pool": (1, 2048), "merge": (1, 16)}
_VIT_KEYS = {"model_type", "qkv_bias", *VIT3D_LIMITS, *_TRIPLES}
#: The ResNet tower's fields: each with its range and MONAI ``ResNet``'s default (``None``: required).
_RESNET_FIELDS: dict[str, Any] = {
    "in_channels": ((1, 16), None),
    "img_size": ((1, 2048), None),
    "layers": ((1, 64), None),
    "block_inplanes": ((1, 4096), None),
    "conv1_t_size": ((1, 15), 7),
    "conv1_t_stride": ((1, 8), 1),
    "pool": ((1, 2048), (1, 1, 1)),
    "merge": ((1, 16), (1, 1, 1)),
}
_RESNET_CHOICES = {"block": ("basic", "bottleneck"), "shortcut_type": ("A", "B")}
_RESNET_FLAGS = {"no_max_pool": False, "bias_downsample": True}
_RESNET_KEYS = {"model_type", *_RESNET_FIELDS, *_RESNET_CHOICES, *_RESNET_FLAGS}


def is_volume_config(vision_config: Mapping[str, Any]) -> bool:
    """Whether a ``vision_config`` describes a native 3-D tower (``model_type`` in :data:`VOLUME_TOWER_TYPES`)."""
    return isinstance(vision_config, Mapping) and vision_config.get("model_type") in VOLUME_TOWER_TYPES


def _check_keys(vision_config: Mapping[str, Any], allowed: set[str], required: list[str]) -> None:
    kind = vision_config["model_type"]
    unknown = sorted(str(k) for k in vision_config if k not in allowed)
    if unknown:
        raise CheckpointError(f"vision_config of a {kind} tower has unknown keys {unknown}")
    missing = sorted(k for k in required if k not in vision_config)
    if missing:
        raise CheckpointError(f"vision_config of a {kind} tower lacks {missing}")


def _tokens(kind: str, grid: tuple[int, ...], pool: tuple[int, ...], merge: tuple[int, ...]) -> tuple[int, ...]:
    if any(g % k for g, k in zip(grid, pool)):
        raise CheckpointError(f"the {kind} tower's grid {list(grid)} is not a multiple of "
                              f"vision_config.pool {list(pool)}")
    pooled = tuple(g // k for g, k in zip(grid, pool))
    if any(p % m for p, m in zip(pooled, merge)):
        raise CheckpointError(f"the {kind} tower's pooled grid {list(pooled)} is not a multiple of "
                              f"vision_config.merge {list(merge)}")
    tokens = tuple(p // m for p, m in zip(pooled, merge))
    if math.prod(tokens) > MAX_VOLUME_TOKENS:
        raise CheckpointError(
            f"the {kind} tower gives {math.prod(tokens)} tokens per volume (grid {list(grid)} pooled by {list(pool)}), "
            f"more than {MAX_VOLUME_TOKENS}: raise pool"
        )
    return tokens


def _vit_geometry(v: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys(v, _VIT_KEYS, [*VIT3D_LIMITS, "img_size", "patch_size"])
    for key, (low, high) in VIT3D_LIMITS.items():
        check_int(f"vision_config.{key}", v[key], low, high)
    if not isinstance(v.get("qkv_bias", False), bool):
        raise CheckpointError(f"vision_config.qkv_bias must be true or false, got {show_value(v['qkv_bias'])}")
    size, patch, pool, merge = (check_triple(f"vision_config.{k}", v.get(k, (1, 1, 1)), *_TRIPLES[k]) for k in _TRIPLES)
    if any(s % p for s, p in zip(size, patch)):
        raise CheckpointError(f"vision_config.img_size {list(size)} is not a multiple of patch_size {list(patch)}")
    grid = tuple(s // p for s, p in zip(size, patch))
    tokens = _tokens(VIT3D_TOWER_TYPE, grid, pool, merge)
    if v["hidden_size"] % v["num_heads"]:
        raise CheckpointError(f"vision_config.hidden_size = {v['hidden_size']} is not a multiple of "
                              f"num_heads = {v['num_heads']}")
    channels = int(v["hidden_size"])
    return {"img_size": size, "patch_size": patch, "stride": patch, "pool": pool, "merge": merge, "grid": grid,
            "tokens": tokens, "channels": channels, "width": channels * math.prod(merge)}


def resnet3d_fields(v: Mapping[str, Any]) -> dict[str, Any]:
    """The ResNet tower's fields checked, defaults filled, kernel and stride as triples, stage lists as 4 ints."""
    _check_keys(v, _RESNET_KEYS, [k for k, (_, default) in _RESNET_FIELDS.items() if default is None])
    out: dict[str, Any] = {}
    for key, ((low, high), default) in _RESNET_FIELDS.items():
        value, where = v.get(key, default), f"vision_config.{key}"
        if key == "in_channels":
            out[key] = check_int(where, value, low, high)
        elif key in ("layers", "block_inplanes"):
            if not isinstance(value, (list, tuple)) or len(value) != 4:
                raise CheckpointError(f"{where} must be 4 integers (one per stage), got {show_value(value)}")
            out[key] = tuple(check_int(f"{where}[{i}]", item, low, high) for i, item in enumerate(value))
        else:
            value = [value] * 3 if isinstance(value, int) and not isinstance(value, bool) else value
            out[key] = check_triple(where, value, low, high)
    for key, choices in _RESNET_CHOICES.items():
        out[key] = v.get(key, choices[0] if key == "block" else "B")
        if out[key] not in choices:
            raise CheckpointError(f"vision_config.{key} must be one of {list(choices)}, got {show_value(out[key])}")
    for key, default in _RESNET_FLAGS.items():
        out[key] = v.get(key, default)
        if not isinstance(out[key], bool):
            raise CheckpointError(f"vision_config.{key} must be true or false, got {show_value(out[key])}")
    return out


def _resnet_geometry(v: Mapping[str, Any]) -> dict[str, Any]:
    f = resnet3d_fields(v)
    grid = []
    for size, kernel, stride in zip(f["img_size"], f["conv1_t_size"], f["conv1_t_stride"]):
        out = (size + 2 * (kernel // 2) - kernel) // stride + 1  # conv1, padding kernel // 2
        for _ in range(3 if f["no_max_pool"] else 4):  # the max pool, then layers 2-4: kernel 3, padding 1, stride 2
            out = (out - 1) // 2 + 1
        grid.append(out)
    grid_t = tuple(grid)
    tokens = _tokens(RESNET3D_TOWER_TYPE, grid_t, f["pool"], f["merge"])
    channels = f["block_inplanes"][3] * (1 if f["block"] == "basic" else 4)
    stride = tuple(max(1, s // g) for s, g in zip(f["img_size"], grid_t))
    return {"img_size": f["img_size"], "stride": stride, "pool": f["pool"], "merge": f["merge"], "grid": grid_t,
            "tokens": tokens, "channels": channels, "width": channels * math.prod(f["merge"])}


def volume_geometry(vision_config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a 3-D tower's fields and derive its token grid.

    Args:
        vision_config: a ``monai_vit3d`` config (``img_size``, ``patch_size``, ``pool``, ``merge`` as ``(D, H, W)``,
            ``in_channels``, ``hidden_size``, ``mlp_dim``, ``num_layers``, ``num_heads``, optional ``qkv_bias``) or a
            ``monai_resnet3d`` one (``in_channels``, ``img_size``, ``layers`` and ``block_inplanes`` of the 4 stages;
            optional ``block``, ``conv1_t_size``, ``conv1_t_stride``, ``no_max_pool``, ``shortcut_type``,
            ``bias_downsample`` with MONAI ``ResNet``'s defaults, ``pool`` and ``merge``).

    Returns:
        ``{"img_size", "stride", "pool", "merge", "grid", "tokens", "channels", "width"}`` (the ViT adds
        ``"patch_size"``): ``grid`` is the tower's feature grid, ``stride`` the voxels per grid cell, ``tokens`` the
        pooled grid after merging (its product is the number of image tokens of one volume), ``channels`` the
        network's feature width, ``width`` the width of each token (``channels`` times the cells merged into one).

    Raises:
        CheckpointError: an unknown or missing key, a wrong type or range, a size that is not a multiple of the
            patch, the pool or the merge, or more than :data:`MAX_VOLUME_TOKENS` tokens.
    """
    if vision_config.get("model_type") == RESNET3D_TOWER_TYPE:
        return _resnet_geometry(vision_config)
    return _vit_geometry(vision_config)


def volume_parameters(vision_config: Mapping[str, Any]) -> int:
    """Parameters of the 3-D tower a checked config describes (MONAI's ViT without classification head, or its
    ResNet without ``fc``), counted without building it."""
    if vision_config.get("model_type") == RESNET3D_TOWER_TYPE:
        return _resnet_parameters(resnet3d_fields(vision_config))
    geometry = _vit_geometry(vision_config)
    v = vision_config
    h, m, layers = int(v["hidden_size"]), int(v["mlp_dim"]), int(v["num_layers"])
    embed = int(v["in_channels"]) * math.prod(geometry["patch_size"]) * h + h + math.prod(geometry["grid"]) * h
    qkv = 3 * h * h + (3 * h if v.get("qkv_bias", False) else 0)
    block = qkv + (h * h + h) + (h * m + m) + (m * h + h) + 6 * h  # norm1, norm2 and norm_cross_attn
    return embed + layers * block + 2 * h


def _resnet_parameters(f: Mapping[str, Any]) -> int:
    basic = f["block"] == "basic"
    expansion = 1 if basic else 4
    first = f["block_inplanes"][0]
    count = f["in_channels"] * math.prod(f["conv1_t_size"]) * first + 2 * first  # conv1 (no bias) and bn1
    in_planes = first
    for stage, (planes, blocks) in enumerate(zip(f["block_inplanes"], f["layers"])):
        out_planes = planes * expansion
        if f["shortcut_type"] == "B" and (stage > 0 or in_planes != out_planes):  # 1x1 conv and norm
            count += in_planes * out_planes + (out_planes if f["bias_downsample"] else 0) + 2 * out_planes
        for _ in range(blocks):
            if basic:  # two 3x3x3 convs, each with its norm
                count += 27 * in_planes * planes + 27 * planes * planes + 4 * planes
            else:  # 1x1x1, 3x3x3, 1x1x1 (to 4 x planes), each with its norm
                count += in_planes * planes + 27 * planes * planes + planes * out_planes + 4 * planes + 2 * out_planes
            in_planes = out_planes
    return count


def check_volume_feature_layer(vision_config: Mapping[str, Any], feature_layer: int) -> None:
    """Check ``vision_feature_layer`` against a 3-D tower: the ViT numbers its hidden states like CLIP (``0`` the
    patch embedding .. ``num_layers``, or negative from the end); the ResNet gives its last stage only (``-1``).

    Raises:
        ValueError: a layer the tower does not have.
    """
    if vision_config.get("model_type") == RESNET3D_TOWER_TYPE:
        if feature_layer != -1:
            raise ValueError(f"vision_feature_layer {feature_layer}: the {RESNET3D_TOWER_TYPE} tower gives the "
                             "tokens of its last stage only (vision_feature_layer = -1)")
        return
    layers = int(vision_config.get("num_layers", 12))
    if not -layers - 1 <= feature_layer <= layers:
        raise ValueError(f"vision_feature_layer {feature_layer} is outside the {layers}-layer encoder.")
