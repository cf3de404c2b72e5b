# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Spatial pooling of a 2D vision tower's patch tokens, so that more views of a volume fit in the context.

A CLIP ViT gives one token per patch on a ``g x g`` grid, row by row (v1.5: 24 x 24 = 576 tokens at 336 px).
:func:`pool_patch_tokens` averages each ``k x k`` block of that grid (``LlavaMedConfig.token_pool``), so one view
costs ``(g / k) ** 2`` tokens: 144 for k = 2, 64 for k = 3. The pooling has no parameters: it runs between the
feature select and the projector, which then trains on pooled features. A CLS token
(``vision_feature_select_strategy="cls_patch"``) is kept as it is, in front of the pooled patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pooled_token_count", "pool_patch_tokens"]


def pooled_token_count(grid: int, pool: int, cls_token: bool = False) -> int:
    """Tokens one image gives after pooling: ``(grid // pool) ** 2`` patches, plus one for a kept CLS token.

    Args:
        grid: patches per side of the vision tower (``image_size // patch_size``).
        pool: side of the pooling window (1: no pooling).
        cls_token: whether a CLS token is kept in front of the patches.

    Raises:
        ValueError: when ``pool`` is not an integer in ``[1, grid]`` dividing ``grid``.
    """
    if isinstance(pool, bool) or not isinstance(pool, int) or not 1 <= pool <= grid or grid % pool:
        raise ValueError(f"token_pool must be an integer in [1, {grid}] dividing the {grid} x {grid} patch grid, "
                         f"got {pool!r:.40}")
    return (grid // pool) ** 2 + int(cls_token)


def pool_patch_tokens(features: torch.Tensor, grid: int, pool: int, cls_token: bool = False) -> torch.Tensor:
    """Average ``pool x pool`` blocks of a row-major ``grid x grid`` patch-token grid.

    Args:
        features: ``(N, T, C)`` vision features, ``T = grid ** 2`` (``+ 1`` with a leading CLS token).
        grid: patches per side.
        pool: side of the pooling window; 1 returns ``features`` unchanged.
        cls_token: the first token is a CLS token, kept unpooled in front.

    Returns:
        ``(N, pooled_token_count(grid, pool, cls_token), C)`` in the dtype of ``features``; pooled token
        ``r * (grid // pool) + c`` is the mean of the patches ``(pool * r + i) * grid + pool * c + j`` for
        ``0 <= i, j < pool``.

    Raises:
        ValueError: for a pool that does not divide the grid, or features that do not hold ``grid ** 2`` patches.
    """
    pooled_token_count(grid, pool, cls_token)
    head = int(cls_token)
    if features.ndim != 3 or features.shape[1] != grid * grid + head:
        raise ValueError(f"expected (N, {grid * grid + head}, C) vision features for a {grid} x {grid} grid"
                         f"{' with CLS' if cls_token else ''}, got {tuple(features.shape)}")
    if pool == 1:
        return features
    patches = features[:, head:]
    n, _, channels = patches.shape
    image = patches.transpose(1, 2).reshape(n, channels, grid, grid)
    pooled = F.avg_pool2d(image, kernel_size=pool, stride=pool).flatten(2).transpose(1, 2)
    return torch.cat([features[:, :head], pooled], dim=1) if head else pooled.contiguous()
