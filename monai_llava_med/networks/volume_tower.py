# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What the native 3-D towers share: a feature grid over the volume, averaged in ``pool`` blocks, the cells of each
``merge`` block concatenated into one token, read out in raster order; the input check; activation checkpointing
of their stages; the prefix stripping of their pretrained weight files' keys."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["PooledVolumeTower", "strip_prefixes"]


class PooledVolumeTower(nn.Module):
    """Base of :class:`~.vision_towers.MonaiViT3DTower` and :class:`~.resnet3d_tower.MonaiResNet3DTower`.

    Args:
        in_channels: channels of the input volume.
        img_size: ``(D, H, W)`` of the input volume.
        grid: ``(D, H, W)`` of the feature grid the network gives.
        pool: ``(D, H, W)`` of the average-pooling block on that grid (``(1, 1, 1)``: no pooling).
        channels: width of the network's features (one grid cell).
        merge: ``(D, H, W)`` of the block of pooled cells concatenated into one token (``(1, 1, 1)``: one cell per
            token).

    Attributes:
        hidden_size: token width, ``channels`` times the cells of a ``merge`` block (the projector's input).
    """

    def __init__(self, in_channels: int, img_size: Sequence[int], grid: Sequence[int], pool: Sequence[int],
                 channels: int, merge: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.img_size = tuple(int(v) for v in img_size)
        self.grid = tuple(int(v) for v in grid)
        self.pool = tuple(int(v) for v in pool)
        self.merge = tuple(int(v) for v in merge)
        self.hidden_size = int(channels) * math.prod(self.merge)
        self._checkpoint_kwargs: dict[str, Any] | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens per volume after pooling and merging."""
        return math.prod(g // k // m for g, k, m in zip(self.grid, self.pool, self.merge))

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute each stage's (block's) activations in backward while the tower trains."""
        self._checkpoint_kwargs = dict(activation_checkpointing_kwargs or {"use_reentrant": False})

    def activation_checkpointing_disable(self) -> None:
        """Keep every stage's activations (the default)."""
        self._checkpoint_kwargs = None

    def check_volumes(self, volumes: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``volumes`` is ``(N, in_channels, *img_size)``."""
        expected = (self.in_channels, *self.img_size)
        if volumes.ndim != 5 or tuple(volumes.shape[1:]) != expected:
            raise ValueError(f"the 3-D tower takes (N, {', '.join(map(str, expected))}) volumes, "
                             f"got {tuple(volumes.shape)}")

    def run_stage(self, stage: nn.Module, x: torch.Tensor, trains: bool) -> torch.Tensor:
        """``stage(x)``, checkpointed when enabled and the tower trains with grad."""
        if self._checkpoint_kwargs is not None and trains and torch.is_grad_enabled():
            return checkpoint(stage, x, **self._checkpoint_kwargs)
        return stage(x)

    def grid_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, C, *grid)`` features averaged in ``pool`` blocks, as ``(N, num_tokens, hidden_size)`` tokens in
        raster order of the merged grid; a token is the ``C`` features of each cell of its ``merge`` block, the
        cells in raster order."""
        if self.pool != (1, 1, 1):
            features = F.avg_pool3d(features, kernel_size=self.pool, stride=self.pool)
        n, c, d, h, w = features.shape
        md, mh, mw = self.merge
        blocks = features.reshape(n, c, d // md, md, h // mh, mh, w // mw, mw)
        return blocks.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(n, self.num_tokens, self.hidden_size)


def strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` with any of ``prefixes`` removed from its front, repeatedly and in any order."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key
