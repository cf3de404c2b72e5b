# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The vision towers a :class:`~monai_llava_med.networks.LlavaMedNet` can hold, and their features.

* ``clip_vision_model`` (LLaVA-Med v1.5): ``transformers.CLIPVisionModel`` on ``(N, 3, S, S)`` images;
* ``monai_vit3d``: :class:`MonaiViT3DTower`, MONAI's ``ViT(spatial_dims=3)`` on ``(N, C, D, H, W)`` volumes,
  its patch tokens averaged in ``pool`` blocks so that one volume gives at most 256 tokens;
* ``monai_resnet3d``: :class:`~.resnet3d_tower.MonaiResNet3DTower`, MONAI's 3-D ``ResNet``, its last-stage
  feature map pooled the same way.

:func:`load_vision_weights` starts a 3-D tower from pretrained encoder weights in a local file (the key
mappings are in the docstrings of :func:`map_vision_weights` and :func:`~.resnet3d_tower.map_resnet_weights`
and in ``docs/networks.md``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import ViT
from torch import nn

from ..errors import CheckpointError
from .checkpoint_files import load_state_dict_strict, read_weight_file
from .config_volume import RESNET3D_TOWER_TYPE, is_volume_config, volume_geometry
from .resnet3d_tower import MonaiResNet3DTower, map_resnet_weights
from .volume_tower import PooledVolumeTower, strip_prefixes

__all__ = [
    "MonaiViT3DTower",
    "build_vision_tower",
    "vision_width",
    "tower_features",
    "WEIGHT_PREFIXES",
    "map_vision_weights",
    "load_vision_weights",
]

logger = logging.getLogger(__name__)

#: Prefixes stripped (repeatedly, in any order) from the keys of a pretrained 3-D encoder file.
WEIGHT_PREFIXES = ("module.", "model.", "vit.", "encoder.", "backbone.", "vision_tower.")
#: Keys of a classification ViT that the tower has no use for (it keeps only the patch tokens).
_DROPPED = ("cls_token", "classification_head.")


class MonaiViT3DTower(PooledVolumeTower):
    """MONAI ``ViT(spatial_dims=3, classification=False)`` whose patch tokens are average-pooled on their grid.

    The hidden states are numbered like CLIP's: index 0 is the patch embedding, ``i`` the output of block ``i``;
    the last one goes through the ViT's final ``LayerNorm`` (so ``feature_layer=-1`` is MONAI's ``ViT`` output).

    Args:
        in_channels: channels of the input volume.
        img_size: ``(D, H, W)`` of the input volume.
        patch_size: ``(D, H, W)`` of one patch.
        hidden_size: the ViT's width.
        mlp_dim: width of each block's MLP.
        num_layers: transformer blocks.
        num_heads: attention heads.
        pool: ``(D, H, W)`` of the average-pooling block on the patch grid (``(1, 1, 1)``: no pooling).
        qkv_bias: bias of the attention's qkv projection (MONAI's default ``False``).
        merge: ``(D, H, W)`` of the block of pooled cells concatenated into one token (``(1, 1, 1)``: none).
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int],
        patch_size: Sequence[int],
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        pool: Sequence[int] = (1, 1, 1),
        qkv_bias: bool = False,
        merge: Sequence[int] = (1, 1, 1),
    ) -> None:
        grid = tuple(int(s) // int(p) for s, p in zip(img_size, patch_size))
        super().__init__(in_channels, img_size, grid, pool, hidden_size, merge)
        self.vit = ViT(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=tuple(int(v) for v in patch_size),
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            classification=False,
            spatial_dims=3,
            qkv_bias=qkv_bias,
        )

    @classmethod
    def from_config(cls, vision_config: Mapping[str, Any]) -> MonaiViT3DTower:
        """Build from a checked ``monai_vit3d`` vision config (see :func:`~.config.monai_vit3d_config`)."""
        geometry = volume_geometry(vision_config)
        return cls(
            in_channels=int(vision_config["in_channels"]),
            img_size=geometry["img_size"],
            patch_size=geometry["patch_size"],
            hidden_size=int(vision_config["hidden_size"]),
            mlp_dim=int(vision_config["mlp_dim"]),
            num_layers=int(vision_config["num_layers"]),
            num_heads=int(vision_config["num_heads"]),
            pool=geometry["pool"],
            qkv_bias=bool(vision_config.get("qkv_bias", False)),
            merge=geometry["merge"],
        )

    def forward(self, volumes: torch.Tensor, feature_layer: int = -1) -> torch.Tensor:
        """Pooled patch tokens of hidden state ``feature_layer``.

        Args:
            volumes: ``(N, in_channels, D, H, W)`` with ``(D, H, W) == img_size``.
            feature_layer: which hidden state, ``0`` .. ``num_layers`` or negative from the end.

        Returns:
            ``(N, num_tokens, hidden_size)``, tokens in ``(d, h, w)`` raster order of the pooled grid.

        Raises:
            ValueError: a volume of another shape, or a layer the tower does not have.
        """
        self.check_volumes(volumes)
        blocks = self.vit.blocks
        layer = feature_layer if feature_layer >= 0 else len(blocks) + 1 + feature_layer
        if not 0 <= layer <= len(blocks):
            raise ValueError(f"feature_layer {feature_layer} is outside the {len(blocks)}-block tower")
        x = self.vit.patch_embedding(volumes)
        for block in list(blocks)[:layer]:
            x = self.run_stage(block, x, self.training)
        if layer == len(blocks):
            x = self.vit.norm(x)
        n, _, width = x.shape
        return self.grid_tokens(x.transpose(1, 2).reshape(n, width, *self.grid))


def build_vision_tower(config: Any) -> nn.Module:
    """The vision tower a config names: CLIP (``clip_vision_model``), :class:`MonaiViT3DTower` (``monai_vit3d``) or
    :class:`~.resnet3d_tower.MonaiResNet3DTower` (``monai_resnet3d``).

    Args:
        config: a :class:`~monai_llava_med.networks.LlavaMedConfig`.
    """
    if is_volume_config(config.vision_config):
        if config.vision_config["model_type"] == RESNET3D_TOWER_TYPE:
            return MonaiResNet3DTower.from_config(config.vision_config)
        return MonaiViT3DTower.from_config(config.vision_config)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return CLIPVisionModel(CLIPVisionConfig(**config.vision_config))


def vision_width(tower: nn.Module) -> int:
    """Width of the features a tower gives (the projector's input)."""
    if isinstance(tower, PooledVolumeTower):
        return tower.hidden_size
    return int(tower.config.hidden_size)


def tower_features(tower: nn.Module, pixel_values: torch.Tensor, config: Any) -> torch.Tensor:
    """The features of a tower that the projector takes, under ``no_grad`` when the tower is frozen.

    Args:
        tower: from :func:`build_vision_tower`.
        pixel_values: ``(N, 3, S, S)`` images (CLIP) or ``(N, C, D, H, W)`` volumes (3-D tower).
        config: the network's config (``vision_feature_layer``, ``vision_feature_select_strategy``).

    Returns:
        ``(N, num_image_tokens, width)`` in the tower's dtype.
    """
    params = list(tower.parameters())
    frozen = not any(p.requires_grad for p in params)
    with torch.no_grad() if frozen else contextlib.nullcontext():
        pixel_values = pixel_values.to(params[0].dtype)
        if isinstance(tower, PooledVolumeTower):
            return tower(pixel_values, config.vision_feature_layer)
        out = tower(pixel_values, output_hidden_states=True, return_dict=True)
        features = out.hidden_states[config.vision_feature_layer]
        return features[:, 1:] if config.vision_feature_select_strategy == "patch" else features


def map_vision_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a pretrained 3-D encoder's weights to :class:`MonaiViT3DTower`'s ``vit.*`` names.

    The mapping: when some keys carry a ``vit.`` component (a MONAI ``UNETR``'s ``vit.*``, or ``module.vit.*``
    from a ``DataParallel`` save), only those keys are the encoder and the others (UNETR's decoder) are set
    aside; then the prefixes :data:`WEIGHT_PREFIXES` (``module.``, ``model.``, ``vit.``, ``encoder.``,
    ``backbone.``, ``vision_tower.``) are stripped from the front of each key, repeatedly, and ``vit.`` is put
    back; a classification ViT's ``cls_token`` and ``classification_head.*`` are dropped. What remains must be
    exactly MONAI ``ViT``'s ``patch_embedding.*``, ``blocks.N.*`` and ``norm.*``.

    Args:
        state: the file's tensors.
    """
    keys = list(state)
    encoder = [k for k in keys if k.startswith(("vit.", "module.vit.", "model.vit."))]
    chosen = encoder or keys
    if encoder and len(encoder) < len(keys):
        logger.info("kept the %d vit.* weights of %d (the rest is not the encoder)", len(encoder), len(keys))
    out: dict[str, torch.Tensor] = {}
    for key in chosen:
        name = strip_prefixes(key, WEIGHT_PREFIXES)
        if name.startswith(_DROPPED):
            continue
        out[f"vit.{name}"] = state[key]
    return out


def load_vision_weights(tower: nn.Module, path: str | PathLike) -> nn.Module:
    """Load pretrained 3-D encoder weights from a local ``.pt`` / ``.pth`` / ``.bin`` (``torch.load`` with
    ``weights_only=True``) or ``.safetensors`` file into a 3-D tower, keys mapped by :func:`map_vision_weights`
    (:class:`MonaiViT3DTower`) or :func:`~.resnet3d_tower.map_resnet_weights` (``MonaiResNet3DTower``: MedicalNet's
    and MONAI's ResNet files).

    Args:
        tower: the network's 3-D tower (changed in place; dtype and device kept).
        path: the weights file; a ``{"state_dict": ...}`` wrapper is unwrapped.

    Returns:
        ``tower``.

    Raises:
        CheckpointError: a tower that is not 3-D, an unreadable or unsafe file, or weights whose keys or shapes do
            not fit (every missing and unexpected key after mapping and every shape mismatch is listed).
    """
    path = Path(path)
    if not isinstance(tower, PooledVolumeTower):
        raise CheckpointError("vision weights from a file are for a 3-D tower (model_type 'monai_vit3d' or "
                              "'monai_resnet3d'); a CLIP tower starts from its own folder (assemble_from_parts)", path)
    if not path.is_file():
        raise CheckpointError("vision weights file does not exist", path)
    raw = read_weight_file(path)
    if isinstance(tower, MonaiResNet3DTower):
        state = map_resnet_weights(raw, WEIGHT_PREFIXES)
    else:
        state = map_vision_weights(raw)
    reference = next(tower.parameters())
    state = {k: v.to(dtype=reference.dtype, device=reference.device) if v.is_floating_point()
             else v.to(device=reference.device) for k, v in state.items()}
    load_state_dict_strict(tower, state, path)
    return tower
