# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The native 3-D ResNet tower (``monai_resnet3d``): MONAI's ``ResNet(spatial_dims=3)``, the feature map of its last
stage average-pooled on its grid and read out as tokens; and the key mapping of pretrained ResNet encoder files
(MedicalNet's, MONAI's own)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets.resnet import ResNet

from .config_volume import resnet3d_fields, volume_geometry
from .volume_tower import PooledVolumeTower, strip_prefixes

__all__ = ["MonaiResNet3DTower", "RESNET_DROPPED", "map_resnet_weights"]

#: Keys of a pretrained ResNet file that the tower has no use for: MedicalNet's segmentation head
#: (``conv_seg.*``) and a classifier (``fc.*``).
RESNET_DROPPED = ("conv_seg.", "fc.")


class MonaiResNet3DTower(PooledVolumeTower):
    """MONAI ``ResNet(spatial_dims=3, feed_forward=False)`` whose last-stage feature map is average-pooled in
    ``pool`` blocks, its cells concatenated in ``merge`` blocks, and flattened to tokens in ``(d, h, w)`` raster
    order.

    A frozen tower (no parameter requires grad) runs its BatchNorm layers in eval mode even while the network
    trains, so that training the projector alone never changes the tower's statistics.

    Args:
        vision_config: a ``monai_resnet3d`` vision config (:func:`~.config.monai_resnet3d_config`).
    """

    def __init__(self, vision_config: Mapping[str, Any]) -> None:
        geometry, fields = volume_geometry(vision_config), resnet3d_fields(vision_config)
        super().__init__(fields["in_channels"], geometry["img_size"], geometry["grid"], geometry["pool"],
                         geometry["channels"], geometry["merge"])
        self.resnet = ResNet(
            block=fields["block"],
            layers=list(fields["layers"]),
            block_inplanes=list(fields["block_inplanes"]),
            spatial_dims=3,
            n_input_channels=self.in_channels,
            conv1_t_size=fields["conv1_t_size"],
            conv1_t_stride=fields["conv1_t_stride"],
            no_max_pool=fields["no_max_pool"],
            shortcut_type=fields["shortcut_type"],
            bias_downsample=fields["bias_downsample"],
            feed_forward=False,
        )

    @classmethod
    def from_config(cls, vision_config: Mapping[str, Any]) -> MonaiResNet3DTower:
        """Build from a checked ``monai_resnet3d`` vision config."""
        return cls(vision_config)

    def forward(self, volumes: torch.Tensor, feature_layer: int = -1) -> torch.Tensor:
        """Pooled tokens of the last stage.

        Args:
            volumes: ``(N, in_channels, D, H, W)`` with ``(D, H, W) == img_size``.
            feature_layer: must be ``-1`` (the config check refuses others).

        Returns:
            ``(N, num_tokens, hidden_size)``, tokens in ``(d, h, w)`` raster order of the pooled grid.

        Raises:
            ValueError: a volume of another shape, or another feature layer.
        """
        self.check_volumes(volumes)
        if feature_layer != -1:
            raise ValueError(f"feature_layer {feature_layer}: the ResNet tower gives its last stage only (-1)")
        net = self.resnet
        trains = self.training and any(p.requires_grad for p in self.parameters())
        if net.training != trains:
            net.train(trains)
        x = net.act(net.bn1(net.conv1(volumes)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = self.run_stage(stage, x, trains)
        return self.grid_tokens(x)


def map_resnet_weights(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Rename a pretrained 3-D ResNet's weights to :class:`MonaiResNet3DTower`'s ``resnet.*`` names.

    ``prefixes`` (``module.`` from a ``DataParallel`` save, as in MedicalNet's files, ``model.``, ...) are stripped
    from the front of each key, repeatedly; MedicalNet's ``conv_seg.*`` and a classifier's ``fc.*`` are dropped;
    ``resnet.`` is put in front. MONAI's ``ResNet`` and MedicalNet name their layers alike (``conv1``, ``bn1``,
    ``layerN.M.conv1``, ``layerN.M.downsample.0``), so what remains must be exactly the tower's weights and
    BatchNorm statistics.

    Args:
        state: the file's tensors.
        prefixes: the prefixes to strip.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = strip_prefixes(key, prefixes)
        if not name.startswith(RESNET_DROPPED):
            out[f"resnet.{name}"] = value
    return out
