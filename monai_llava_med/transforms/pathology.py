# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Whole-slide images -> tissue tiles, through MONAI ``WSIReader``.

:class:`SlideTiles` opens a slide with ``WSIReader`` (``tifffile`` backend always available; ``openslide`` or
``cucim`` when installed), picks the pyramid level closest to a target microns-per-pixel (the finest level
whose mpp is at most the target), builds a tissue mask on the lowest-resolution level with MONAI
``ForegroundMask`` (Otsu on RGB and on HSV saturation, with a saturation floor), lays a grid of
``tile_size`` tiles over the slide, keeps the top-k tiles by tissue fraction and reads them. Optionally it adds
the low-resolution thumbnail as a view and normalises H&E stains with MONAI ``NormalizeHEStains``.

Each tile is a uint8 ``(3, tile_size, tile_size)`` MetaTensor with ``meta["view"] = {"kind": "tile", "level",
"x", "y", "size", "tissue"}``; ``x``/``y`` are the tile's top-left corner in level-0 pixels and ``size`` its
side in pixels of ``level``.

The tifffile backend decodes a whole level per read; :class:`SlideTiles` therefore reads the chosen level once
and crops the tiles from it, refusing levels above ``max_level_pixels`` (use a coarser ``target_mpp`` or
install openslide for gigapixel level 0 reads).
"""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, WSIReader
from monai.transforms import ForegroundMask, MapTransform, Transform
from monai.utils import optional_import

from ..errors import SlideError
from .readers import redact_text

tifffile, _ = optional_import("tifffile")
threshold_otsu, has_skimage = optional_import("skimage.filters", name="threshold_otsu")
_, has_openslide = optional_import("openslide")
NormalizeHEStains, _ = optional_import("monai.apps.pathology.transforms", name="NormalizeHEStains")

__all__ = [
    "tiff_level_shapes",
    "select_level",
    "tissue_mask",
    "SlideTiles",
    "SlideTilesd",
    "SlideTilesD",
    "SlideTilesDict",
]


def tiff_level_shapes(path: str | PathLike) -> list[tuple[int, ...]]:
    """Shapes of the top-level pages of a TIFF (the levels WSIReader's tifffile backend sees).

    Raises:
        SlideError: the file is not a readable TIFF or holds no image.
    """
    try:
        with tifffile.TiffFile(str(path)) as tif:
            shapes = [tuple(int(s) for s in page.shape) for page in tif.pages]
    except Exception as e:
        raise SlideError(f"unreadable TIFF ({type(e).__name__}: {redact_text(e, limit=160)})", path) from e
    if not shapes or any(len(s) < 2 or min(s[:2]) <= 0 for s in shapes):  # a page may have no shape at all
        raise SlideError("TIFF holds no image (no pages or a zero-size page)", path)
    return shapes


def select_level(mpps: list[float | None], target_mpp: float | None) -> int:
    """Finest-to-coarsest levels: pick the coarsest level whose mpp is at most ``target_mpp`` (5 % slack).

    Args:
        mpps: microns per pixel of each level (None when unknown).
        target_mpp: wanted resolution; None -> level 0.

    Returns:
        level index (0 when the target is finer than every level or mpp is unknown).
    """
    if target_mpp is None or any(m is None for m in mpps):
        return 0
    ok = [lvl for lvl, m in enumerate(mpps) if m is not None and m <= target_mpp * 1.05]
    return max(ok) if ok else 0


def tissue_mask(thumbnail: np.ndarray | torch.Tensor, min_saturation: float = 0.05) -> np.ndarray:
    """Tissue mask of an RGB ``(3, H, W)`` uint8 image: Otsu on RGB and on HSV saturation (MONAI ForegroundMask).

    Args:
        thumbnail: low-resolution slide image.
        min_saturation: saturation floor, so a blank slide (grey or white) has no tissue.

    Returns:
        boolean ``(H, W)`` mask.
    """
    if not has_skimage:
        raise SlideError("the tissue mask needs scikit-image (pip install scikit-image)")

    def sat_threshold(s: np.ndarray) -> float:
        return max(float(threshold_otsu(s)) if float(s.max()) > float(s.min()) else 0.0, min_saturation)

    def rgb_threshold(c: np.ndarray) -> float:
        return float(threshold_otsu(c)) if float(c.max()) > float(c.min()) else float(c.min()) - 1

    fg = ForegroundMask(threshold={"R": rgb_threshold, "G": rgb_threshold, "B": rgb_threshold},
                        hsv_threshold={"S": sat_threshold})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = fg(np.asarray(thumbnail))
    return np.asarray(mask)[0].astype(bool)


class SlideTiles(Transform):
    """Slide path -> list of tissue tiles (uint8 ``(3, S, S)`` MetaTensors with ``meta["view"]``).

    Args:
        tile_size: tile side in pixels at the chosen level.
        target_mpp: wanted microns per pixel (0.5 ~ 20x); None, or no mpp in the file -> ``level`` is used.
        level: level used when ``target_mpp`` is None or unusable.
        max_tiles: return at most this many views, the thumbnail included (top tissue fraction first); with
            ``thumbnail`` and ``max_tiles=1`` only the thumbnail is returned.
        min_tissue: smallest tissue fraction of a kept tile.
        thumbnail: add the lowest-resolution level as a first view ``{"kind": "thumbnail", "level": L}``.
        stain_normalize: normalise H&E stains of each tile (MONAI ``NormalizeHEStains``).
        backend: WSIReader backend; ``"auto"`` = openslide when installed, else tifffile.
        max_level_pixels: refuse reading a whole level larger than this with the tifffile backend.
    """

    def __init__(
        self,
        tile_size: int = 512,
        target_mpp: float | None = 0.5,
        level: int = 0,
        max_tiles: int = 4,
        min_tissue: float = 0.5,
        thumbnail: bool = False,
        stain_normalize: bool = False,
        backend: str = "auto",
        max_level_pixels: int = 1 << 28,
    ) -> None:
        if tile_size <= 0 or max_tiles < 1 or not 0.0 <= min_tissue <= 1.0:
            raise ValueError("tile_size > 0, max_tiles >= 1 and 0 <= min_tissue <= 1 are required")
        self.tile_size = int(tile_size)
        self.target_mpp = target_mpp
        self.level = int(level)
        self.max_tiles = int(max_tiles)
        self.min_tissue = float(min_tissue)
        self.thumbnail = thumbnail
        self.stain_normalize = stain_normalize
        self.auto = backend == "auto"
        self.backend = ("openslide" if has_openslide else "tifffile") if self.auto else backend
        self.max_level_pixels = int(max_level_pixels)

    def _open(self, path: str | PathLike) -> tuple[WSIReader, Any, str]:
        if str(path).lower().endswith((".tif", ".tiff", ".svs")):
            shapes = tiff_level_shapes(path)
            sizes = [s[0] * s[1] for s in shapes]
            if any(b >= a for a, b in zip(sizes, sizes[1:])):
                raise SlideError("pyramid levels are not successively smaller", path)  # sizes come from the header
        backends = [self.backend] + (["tifffile"] if self.auto and self.backend != "tifffile" else [])
        for n, backend in enumerate(backends):
            reader = WSIReader(backend=backend)
            try:
                return reader, reader.read(str(path)), backend
            except Exception as e:  # auto: openslide refuses some generic TIFF pyramids, tifffile reads them
                if n + 1 == len(backends):
                    raise SlideError(f"unreadable slide ({type(e).__name__}: {redact_text(e, limit=160)})", path) from e
        raise SlideError("no WSIReader backend", path)

    def _read(self, reader: WSIReader, wsi: Any, path: str | PathLike, **kwargs: Any) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data, _ = reader.get_data(wsi, **kwargs)
        except Exception as e:
            raise SlideError(f"cannot read slide region {kwargs} ({type(e).__name__}: {redact_text(e)})", path) from e
        return np.asarray(data)

    def __call__(self, path: str | PathLike) -> list[MetaTensor]:  # type: ignore[override]
        """Return the tiles (thumbnail first when asked)."""
        reader, wsi, backend = self._open(path)
        try:
            return self._tiles(reader, wsi, path, backend)
        finally:
            close = getattr(wsi, "close", None)
            if callable(close):
                close()

    def _tiles(self, reader: WSIReader, wsi: Any, path: str | PathLike, backend: str) -> list[MetaTensor]:
        n_levels = reader.get_level_count(wsi)
        mpps: list[float | None] = []
        for lvl in range(n_levels):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mpps.append(float(np.mean(reader.get_mpp(wsi, lvl))))
            except Exception:
                mpps.append(None)
        level = select_level(mpps, self.target_mpp) if self.target_mpp is not None else self.level
        if self.target_mpp is not None and any(m is None for m in mpps):
            level = self.level
        if not 0 <= level < n_levels:
            raise SlideError(f"level {level} out of range (slide has {n_levels} levels)", path)
        h0, w0 = reader.get_size(wsi, 0)
        down = float(reader.get_downsample_ratio(wsi, level))
        low = n_levels - 1
        low_down = float(reader.get_downsample_ratio(wsi, low))
        thumb = self._read(reader, wsi, path, level=low)
        mask = tissue_mask(thumb)
        step0 = self.tile_size * down  # tile side in level-0 pixels
        if step0 > min(h0, w0):
            raise SlideError(f"tile of {self.tile_size} px at level {level} is larger than the slide", path)
        candidates = []
        for gy in range(int(h0 // step0)):
            for gx in range(int(w0 // step0)):
                y0, x0 = gy * step0, gx * step0
                ys, xs = int(y0 / low_down), int(x0 / low_down)
                ye, xe = max(ys + 1, int(round((y0 + step0) / low_down))), max(xs + 1, int(round((x0 + step0) / low_down)))
                frac = float(mask[ys:ye, xs:xe].mean()) if mask[ys:ye, xs:xe].size else 0.0
                candidates.append((frac, int(round(y0)), int(round(x0))))
        kept = [c for c in candidates if c[0] >= self.min_tissue and c[0] > 0]
        if not kept:
            best = max((c[0] for c in candidates), default=0.0)
            raise SlideError(f"no tissue found (best tile tissue fraction {best:.2f} < {self.min_tissue})", path)
        n_tiles = self.max_tiles - (1 if self.thumbnail else 0)  # the thumbnail counts against the budget
        kept = sorted(kept, key=lambda c: (-c[0], c[1], c[2]))[:n_tiles]
        views: list[MetaTensor] = []
        meta = {"modality": "PATHOLOGY", "window": None, "source": Path(path).name}
        if self.thumbnail:
            views.append(self._view(thumb, {"kind": "thumbnail", "level": low}, meta))
        region = None
        if backend == "tifffile" and kept:
            lh, lw = reader.get_size(wsi, level)
            if lh * lw > self.max_level_pixels:
                raise SlideError(
                    f"level {level} has {lh}x{lw} pixels, above max_level_pixels={self.max_level_pixels} for the "
                    "tifffile backend; choose a coarser target_mpp or install openslide", path)
            region = self._read(reader, wsi, path, level=level)
        for frac, y, x in kept:
            if region is not None:
                ty, tx = int(round(y / down)), int(round(x / down))
                tile = region[:, ty : ty + self.tile_size, tx : tx + self.tile_size]
            else:
                tile = self._read(reader, wsi, path, location=(y, x), size=(self.tile_size, self.tile_size),
                                  level=level)
            if tile.shape[1:] != (self.tile_size, self.tile_size):
                raise SlideError(f"tile at level-0 ({x}, {y}) came back with shape {tile.shape}", path)
            if self.stain_normalize:
                tile = self._normalize(tile, path)
            view = {"kind": "tile", "level": level, "x": x, "y": y, "size": self.tile_size,
                    "tissue": round(frac, 4)}
            views.append(self._view(tile, view, meta))
        return views

    @staticmethod
    def _normalize(tile: np.ndarray, path: str | PathLike) -> np.ndarray:
        try:
            out = NormalizeHEStains()(np.ascontiguousarray(np.moveaxis(tile, 0, -1)))
        except Exception as e:
            raise SlideError(f"H&E stain normalisation failed on a tile ({type(e).__name__}: {e})", path) from e
        return np.ascontiguousarray(np.moveaxis(np.asarray(out), -1, 0)).astype(np.uint8)

    @staticmethod
    def _view(img: np.ndarray, view: dict[str, Any], meta: dict[str, Any]) -> MetaTensor:
        out = MetaTensor(torch.as_tensor(np.ascontiguousarray(img)))
        out.meta = {**meta, "view": view}
        return out


class SlideTilesd(MapTransform):
    """Dictionary wrapper of :class:`SlideTiles`: replaces each slide path by its list of tiles.

    Args:
        keys: keys holding slide paths.
        allow_missing_keys: do not raise for missing keys.
        kwargs: arguments of :class:`SlideTiles`.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = SlideTiles(**kwargs)

    def __call__(self, data: dict) -> dict:  # type: ignore[override]
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


SlideTilesD = SlideTilesDict = SlideTilesd
