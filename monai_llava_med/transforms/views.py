# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Volume -> the 2D views the model sees, under an explicit token budget.

Input: a display-scaled MetaTensor from the radiology transforms. A ``"volume"`` must already be in RAS
(:class:`~monai_llava_med.transforms.radiology.CanonicalOrientation`). Each view is shown the way radiologists
look at it: axial with the patient's right on the image's left and anterior at the top, coronal with superior at
the top and patient's right on the left, sagittal with superior at the top and anterior on the left. Anisotropic
pixels are resampled to square pixels (the longer side keeps its pixel count).

A volume one voxel thick (a single DICOM slice, a one-slice series) gives one view, in the plane it lies in,
whatever the mode. Slice indices are indices along the RAS axis (axial: inferior -> superior, coronal:
posterior -> anterior, sagittal: left -> right), so index 0 of an axial series is its most inferior slice.

Modes (``max_views`` V, after the token budget):

* ``"axial"`` (default): V axial slices evenly spaced at fractions ``(i + 1) / (V + 1)`` of the extent, which
  skips the usually empty first/last slices; all slices when there are at most V.
* ``"central"``: V axial slices evenly spaced over the central half of the volume.
* ``"content"``: V axial slices evenly spaced (as in ``"axial"``) among the slices that show something: a slice
  counts when at least :data:`CONTENT_FRACTION` (2 %) of its pixels are brighter than :data:`CONTENT_LEVEL`
  (12.75 of the display range 0-255, i.e. 5 %) in any channel, so slices of air or empty background before and
  after the body are skipped. When fewer than V slices count, the ``"axial"`` choice is taken.
* ``"triplanar"``: the centre axial, coronal and sagittal slices, then evenly spaced axial slices if V > 3.
* ``"montage"``: one view tiling ``montage_grid**2`` evenly spaced axial slices.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, Transform

from ..constants import VIEW_MODES
from ..errors import VolumeError

__all__ = [
    "ViewMode",
    "TOKENS_PER_VIEW",
    "views_for_budget",
    "evenly_spaced",
    "CONTENT_LEVEL",
    "CONTENT_FRACTION",
    "content_slices",
    "display_section",
    "VolumeToViews",
    "VolumeToViewsd",
    "VolumeToViewsD",
    "VolumeToViewsDict",
]

ViewMode = Literal["axial", "central", "content", "triplanar", "montage"]
#: Image tokens per view for LLaVA-Med v1.5 (CLIP ViT-L/14 at 336 px: 24 x 24 patches).
TOKENS_PER_VIEW = 576
#: Display level (of 0-255) above which a pixel counts as content in ``"content"`` mode (5 % of the range).
CONTENT_LEVEL = 0.05 * 255
#: Least fraction of a slice's pixels above :data:`CONTENT_LEVEL` for the slice to count as content.
CONTENT_FRACTION = 0.02
_PLANE_AXIS = {"sagittal": 1, "coronal": 2, "axial": 3}  # axis of (C, X, Y, Z)


def views_for_budget(max_views: int, token_budget: int | None = None, tokens_per_view: int = TOKENS_PER_VIEW) -> int:
    """Number of views allowed: ``min(max_views, token_budget // tokens_per_view)``.

    Args:
        max_views: upper bound on views.
        token_budget: image tokens the prompt can spend, or None for no budget.
        tokens_per_view: tokens one view costs.

    Raises:
        ValueError: when not even one view fits.
    """
    n = int(max_views)
    if token_budget is not None:
        n = min(n, int(token_budget) // int(tokens_per_view))
    if n < 1:
        raise ValueError(f"no view fits: max_views={max_views}, token_budget={token_budget}, "
                         f"tokens_per_view={tokens_per_view}")
    return n


def evenly_spaced(n: int, k: int, lo: float = 0.0, hi: float = 1.0) -> list[int]:
    """``k`` distinct indices in ``[0, n)`` at fractions ``(i + 1) / (k + 1)`` of ``[lo, hi]`` of the extent.

    Args:
        n: number of slices.
        k: number of indices wanted (all slices if ``k >= n``).
        lo: start of the covered fraction of the extent.
        hi: end of the covered fraction.
    """
    if k >= n:
        return list(range(n))
    fractions = lo + (hi - lo) * (np.arange(1, k + 1) / (k + 1))
    idx = np.clip(np.floor(fractions * n).astype(int), 0, n - 1)
    out: list[int] = []
    for i in idx:  # keep them distinct (tiny n with many views)
        i = int(i)
        while i in out and i + 1 < n:
            i += 1
        out.append(i)
    return sorted(set(out))


def content_slices(vol: torch.Tensor, level: float = CONTENT_LEVEL, fraction: float = CONTENT_FRACTION) -> list[int]:
    """Indices along the last axis of a display-scaled ``(C, ..., Z)`` array whose slice has content.

    Args:
        vol: display-scaled (0-255) volume or frame stack, channel first, slices last.
        level: a pixel counts when any channel is above this display level.
        fraction: a slice counts when at least this fraction of its pixels count.
    """
    bright = _plain(vol).amax(dim=0) > level
    shown = bright.reshape(-1, bright.shape[-1]).float().mean(dim=0)
    return [int(i) for i in torch.nonzero(shown >= fraction).flatten()]


def display_section(vol: torch.Tensor, plane: str, index: int) -> torch.Tensor:
    """Cut one slice of a ``(C, X, Y, Z)`` RAS volume and orient it for display as ``(C, rows, cols)``.

    Args:
        vol: RAS volume, channel first.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        index: slice index along the plane's RAS axis.
    """
    section = vol.select(_PLANE_AXIS[plane], index)  # (C, a, b) with a, b increasing towards R/A/S
    return torch.flip(section, dims=(1, 2)).transpose(1, 2)


def _square_pixels(img: torch.Tensor, row_spacing: float, col_spacing: float) -> torch.Tensor:
    if row_spacing <= 0 or col_spacing <= 0 or abs(row_spacing / col_spacing - 1.0) < 0.01:
        return img
    rows, cols = img.shape[1:]
    height, width = rows * row_spacing, cols * col_spacing
    longest = max(rows, cols)
    scale = longest / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    out = Resize(size, mode="bilinear", anti_aliasing=False)(_plain(img))
    if isinstance(img, MetaTensor):
        out = MetaTensor(torch.as_tensor(out))
        out.meta = dict(img.meta)
    return out


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor) if isinstance(t, MetaTensor) else t


def _view(img: torch.Tensor, view: dict[str, Any], meta: dict[str, Any]) -> MetaTensor:
    out = MetaTensor(_plain(img).contiguous())
    out.meta = {k: meta[k] for k in ("modality", "window", "source") if k in meta}
    out.meta["view"] = view
    return out


class VolumeToViews(Transform):
    """Turn a display-scaled image or volume into a list of 2D ``(C, H, W)`` views with ``meta["view"]``.

    Args:
        max_views: most views to produce.
        mode: ``"axial"``, ``"central"``, ``"content"``, ``"triplanar"`` or ``"montage"`` (see the module
            docstring).
        token_budget: image-token budget; caps the number of views at ``token_budget // tokens_per_view``.
        tokens_per_view: tokens one view costs in the model.
        montage_grid: slices per montage side.
        square_pixels: resample views with anisotropic spacing to square pixels.
        content_level: ``"content"`` mode: display level above which a pixel counts.
        content_fraction: ``"content"`` mode: least fraction of counting pixels of a slice with content.
    """

    def __init__(
        self,
        max_views: int = 4,
        mode: ViewMode = "axial",
        token_budget: int | None = None,
        tokens_per_view: int = TOKENS_PER_VIEW,
        montage_grid: int = 3,
        square_pixels: bool = True,
        content_level: float = CONTENT_LEVEL,
        content_fraction: float = CONTENT_FRACTION,
    ) -> None:
        if mode not in VIEW_MODES:
            raise ValueError(f"unknown view mode {mode!r}; choose from {VIEW_MODES}")
        if montage_grid < 1:
            raise ValueError("montage_grid must be >= 1")
        if not 0.0 < content_fraction <= 1.0:
            raise ValueError(f"content_fraction must be in (0, 1], got {content_fraction}")
        self.n_views = views_for_budget(max_views, token_budget, tokens_per_view)
        self.mode = mode
        self.montage_grid = montage_grid
        self.square_pixels = square_pixels
        self.content_level = float(content_level)
        self.content_fraction = float(content_fraction)

    def select(self, depth: int, content: list[int] | None = None) -> list[int]:
        """Axial indices that the ``"axial"``/``"central"``/``"content"`` modes take from ``depth`` slices.

        Args:
            depth: number of slices.
            content: ``"content"`` mode: the indices of the slices with content (:func:`content_slices`); with
                fewer than ``n_views`` of them (or ``None``) the ``"axial"`` choice is returned.
        """
        if self.mode == "central":
            return evenly_spaced(depth, self.n_views, 0.25, 0.75) if depth > self.n_views else list(range(depth))
        if self.mode == "content" and content is not None and len(content) >= self.n_views:
            return [content[i] for i in evenly_spaced(len(content), self.n_views)]
        return evenly_spaced(depth, self.n_views)

    def _select_in(self, stack: torch.Tensor) -> list[int]:
        """:meth:`select` for a ``(C, ..., Z)`` stack, measuring content only in ``"content"`` mode."""
        content = content_slices(stack, self.content_level, self.content_fraction) if self.mode == "content" else None
        return self.select(stack.shape[-1], content)

    def __call__(self, img: torch.Tensor) -> list[MetaTensor]:  # type: ignore[override]
        """Return the views of ``img`` (a list, even for one view)."""
        meta = img.meta if isinstance(img, MetaTensor) else {}
        layout = meta.get("layout", "image" if img.ndim == 3 else "volume")
        if layout == "image":
            if img.ndim != 3:
                raise VolumeError(f"2D image expected as (C, H, W), got {tuple(img.shape)}", meta.get("source"))
            return [_view(img, {"kind": "image"}, meta)]
        if img.ndim != 4:
            raise VolumeError(f"volume expected as (C, X, Y, Z), got {tuple(img.shape)}", meta.get("source"))
        if layout == "frames":
            frames = _plain(img)
            if self.mode == "montage":
                idx = evenly_spaced(frames.shape[-1], self.montage_grid**2)
                canvas = self._tile([frames[..., i].transpose(1, 2) for i in idx])
                view = {"kind": "montage", "plane": "frame", "indices": idx, "grid": [self.montage_grid] * 2}
                return [_view(canvas, view, meta)]
            idx = self._select_in(frames)
            return [_view(frames[..., i].transpose(1, 2), {"kind": "frame", "index": i}, meta) for i in idx]
        spacing = self._spacing(img)
        vol = _plain(img)
        depth = vol.shape[3]
        flat = [plane for plane in ("axial", "coronal", "sagittal") if vol.shape[_PLANE_AXIS[plane]] == 1]
        if flat and max(vol.shape[1:]) > 1:  # one slice (e.g. a single DICOM file)
            return [self._section(vol, flat[0], 0, spacing, meta)]
        if self.mode == "montage":
            return [self._montage(vol, spacing, meta)]
        if self.mode == "triplanar":
            planes = [("axial", depth // 2), ("coronal", vol.shape[2] // 2), ("sagittal", vol.shape[1] // 2)]
            planes = planes[: self.n_views]
            extra = self.n_views - len(planes)
            if extra > 0:
                more = [i for i in evenly_spaced(depth, extra + 1) if i != depth // 2]
                planes += [("axial", i) for i in more[:extra]]
        else:
            planes = [("axial", i) for i in self._select_in(vol)]
        return [self._section(vol, plane, i, spacing, meta) for plane, i in planes]

    @staticmethod
    def _spacing(img: torch.Tensor) -> tuple[float, float, float]:
        if isinstance(img, MetaTensor):
            sp = torch.linalg.norm(img.affine[:3, :3].double(), dim=0).tolist()
            return float(sp[0]), float(sp[1]), float(sp[2])
        return 1.0, 1.0, 1.0

    def _section(self, vol: torch.Tensor, plane: str, index: int, spacing: tuple[float, float, float],
                 meta: dict[str, Any]) -> MetaTensor:
        img = display_section(vol, plane, index)
        if self.square_pixels:
            sx, sy, sz = spacing
            rows_cols = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]
            img = _square_pixels(img, *rows_cols)
        return _view(img, {"kind": "slice", "plane": plane, "index": int(index)}, meta)

    def _montage(self, vol: torch.Tensor, spacing: tuple[float, float, float], meta: dict[str, Any]) -> MetaTensor:
        g = self.montage_grid
        idx = evenly_spaced(vol.shape[3], g * g)
        canvas = self._tile([_plain(self._section(vol, "axial", i, spacing, meta)) for i in idx])
        return _view(canvas, {"kind": "montage", "plane": "axial", "indices": idx, "grid": [g, g]}, meta)

    def _tile(self, tiles: list[torch.Tensor]) -> torch.Tensor:
        """Row-major grid of ``montage_grid`` x ``montage_grid`` equal-size images (unused cells black)."""
        g = self.montage_grid
        c, h, w = tiles[0].shape
        canvas = torch.zeros((c, g * h, g * w), dtype=tiles[0].dtype)
        for n, tile in enumerate(tiles):
            r, q = divmod(n, g)
            canvas[:, r * h : (r + 1) * h, q * w : (q + 1) * w] = tile
        return canvas


class VolumeToViewsd(MapTransform):
    """Dictionary wrapper of :class:`VolumeToViews`: replaces each image by its list of views.

    Args:
        keys: image keys.
        max_views: see :class:`VolumeToViews`.
        mode: see :class:`VolumeToViews`.
        token_budget: see :class:`VolumeToViews`.
        tokens_per_view: see :class:`VolumeToViews`.
        montage_grid: see :class:`VolumeToViews`.
        square_pixels: see :class:`VolumeToViews`.
        allow_missing_keys: do not raise for missing keys.
        content_level: see :class:`VolumeToViews`.
        content_fraction: see :class:`VolumeToViews`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_views: int = 4,
        mode: ViewMode = "axial",
        token_budget: int | None = None,
        tokens_per_view: int = TOKENS_PER_VIEW,
        montage_grid: int = 3,
        square_pixels: bool = True,
        allow_missing_keys: bool = False,
        content_level: float = CONTENT_LEVEL,
        content_fraction: float = CONTENT_FRACTION,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = VolumeToViews(max_views, mode, token_budget, tokens_per_view, montage_grid, square_pixels,
                                       content_level, content_fraction)

    def __call__(self, data: dict) -> dict:  # type: ignore[override]
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


VolumeToViewsD = VolumeToViewsDict = VolumeToViewsd
