# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The views the model saw, as PNG: the vision tower's input pixels with the CLIP normalisation undone.

The pixels come from the product's pipeline (:func:`~monai_llava_med.engines.build_preprocess`, the same call
:class:`~monai_llava_med.engines.PrepareVqaItem` makes), so what is shown is exactly what the model is given,
padding included. A 3-D input (``(1, C, D, H, W)``) is shown by its middle axial slice.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["views_to_uint8", "png_bytes", "render_views", "save_views"]


def views_to_uint8(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> list[np.ndarray]:
    """Undo the normalisation of ``(V, C, S, S)`` (or ``(1, C, D, H, W)``) pixels: one ``(S, S, 3)`` uint8 per view.

    Args:
        pixel_values: the tower input.
        mean: per-channel mean the pipeline subtracted.
        std: per-channel std the pipeline divided by.
    """
    px = torch.as_tensor(pixel_values).detach().float().cpu()
    if px.ndim == 3:
        px = px.unsqueeze(0)
    if px.ndim == 5:  # a volume: its middle slice along depth
        px = px[:, :, px.shape[2] // 2]
    c = px.shape[1]
    m = torch.tensor(list(mean)[:c]).view(1, c, 1, 1) if len(mean) >= c else torch.full((1, c, 1, 1), float(mean[0]))
    s = torch.tensor(list(std)[:c]).view(1, c, 1, 1) if len(std) >= c else torch.full((1, c, 1, 1), float(std[0]))
    img = ((px * s + m).clamp(0, 1) * 255.0).round().to(torch.uint8)
    if c == 1:
        img = img.expand(-1, 3, -1, -1)
    return [v.permute(1, 2, 0).contiguous().numpy() for v in img]


def png_bytes(view: np.ndarray) -> bytes:
    """One ``(H, W, 3)`` uint8 array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(view).save(buf, format="PNG")
    return buf.getvalue()


def render_views(preprocessed: dict[str, Any], config: Any) -> list[dict[str, Any]]:
    """The views of one preprocessed image, each with its description and a ``data:image/png`` URL.

    Args:
        preprocessed: the pipeline's output (``pixel_values``, ``views``).
        config: the network config (``image_mean``, ``image_std``).

    Returns:
        ``[{"kind", "plane"?, "index"?, "png": "data:image/png;base64,..."}]`` in the model's order.
    """
    arrays = views_to_uint8(preprocessed["pixel_values"], config.image_mean, config.image_std)
    described = list(preprocessed.get("views") or [])
    out = []
    for i, arr in enumerate(arrays):
        meta = dict(described[i]) if i < len(described) and isinstance(described[i], dict) else {"kind": "view"}
        meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None}
        meta["png"] = "data:image/png;base64," + base64.b64encode(png_bytes(arr)).decode("ascii")
        out.append(meta)
    return out


def save_views(preprocessed: dict[str, Any], config: Any, folder: str | PathLike) -> list[Path]:
    """Write the views of one preprocessed image as ``view_00.png``, ``view_01.png``... in ``folder``.

    Returns:
        the written files, in the model's order.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(views_to_uint8(preprocessed["pixel_values"], config.image_mean, config.image_std)):
        path = out / f"view_{i:02d}.png"
        path.write_bytes(png_bytes(arr))
        paths.append(path)
    return paths
