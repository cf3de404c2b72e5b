# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Composed pipelines: any supported file -> views/tiles -> vision-tower pixels, with metadata.

:class:`MedicalImageToPixels` dispatches by file type and content:

* DICOM file / series folder, NIfTI: radiology -- load, reorient to RAS, modality-aware intensity, views;
* PNG/JPEG, single-page small TIFF: one ``{"kind": "image"}`` view;
* pyramidal (or very large) TIFF, SVS: pathology -- tissue tiles.

For a DICOM series stored as axial slices with the ``"axial"``/``"central"`` view modes and a fixed window (CT,
or any explicit window), only the chosen slices are decoded after a header scan of the whole series; the output
equals the full-volume path. In ``"content"`` mode every slice is decoded and display-scaled once, one at a time,
to find the slices with content, then the chosen ones again: the same answer as the full-volume path with one
slice in memory at a time. The result has no patient identifiers: only the fields listed in
:meth:`MedicalImageToPixels.__call__`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import Transform

from ..errors import VolumeError
from .dicom_file import decode_series_slice
from .io import DEFAULT_MAX_VOXELS, LoadMedicalImage, detect_input_kind, scan_dicom_series
from .pathology import SlideTiles
from .pixels import CLIP_MEAN, CLIP_STD, ImageToClipPixels
from .radiology import CanonicalOrientation, ModalityIntensity, WindowSpec
from .pixels_dict import PathToPixelsd, pixel_record
from .readers import QuietReaders, memory_guard
from .views import TOKENS_PER_VIEW, ViewMode, VolumeToViews, _square_pixels, _view, content_slices
from .volume_pixels import MedicalVolumeToPixels

__all__ = [
    "TEXT_RESERVE",
    "pixels_from_config",
    "RadiologyViews",
    "MedicalImageToPixels",
    "MedicalImageToPixelsd",
    "MedicalImageToPixelsD",
    "MedicalImageToPixelsDict",
]


#: Context tokens :func:`pixels_from_config` keeps free for the question and the answer.
TEXT_RESERVE = 256


def pixels_from_config(
    config: Any, *, text_reserve: int = TEXT_RESERVE, **kwargs: Any
) -> MedicalImageToPixels | MedicalVolumeToPixels:
    """The image pipeline of a network: the one place a ``MedicalImageToPixels`` is built from a model config.

    Training, inference, the bundle and MONAI Label all call this, so a file becomes the same pixels
    everywhere. Image size, normalisation, pad-or-squash (``config.pad_to_square``, i.e.
    ``image_aspect_ratio``) and the cost of one view come from the config, and the number of views of a
    volume (or tiles of a slide) is capped so that their image tokens leave ``text_reserve`` tokens of the
    context for the question and the answer (v1.5: 576 tokens per view, context 2048 -> 3 views; with
    ``token_pool=2``, 144 tokens -> 12 views). ``max_views`` and ``view_mode`` default to the config's.

    Args:
        config: a network config (``LlavaMedConfig``; read by attribute, so this layer does not import the
            network): ``image_size``, ``image_mean``, ``image_std``, ``pad_to_square``, ``num_image_tokens``,
            ``model_max_length``, and ``max_views`` / ``view_mode`` when it has them.
        text_reserve: context tokens kept free for text.
        kwargs: further :class:`MedicalImageToPixels` options (``window``...); ``max_views`` and ``view_mode``
            given here (not ``None``) win over the config's; ``token_budget`` overrides the derived budget.

    Returns:
        The pipeline, ``path -> {"pixel_values", "views", "modality", "source", "window"}``; for a config with
        the native 3-D tower (``config.is_volume``) a :class:`~.volume_pixels.MedicalVolumeToPixels` giving
        ``(1, 1, D, H, W)`` volumes.

    Raises:
        TypeError: an option that belongs to the config (``image_size``, ``image_mean``, ``image_std``,
            ``pad``, ``tokens_per_view``) is passed, since it would make the pixels disagree with the network.
    """
    fixed = {"image_size", "image_mean", "image_std", "pad", "tokens_per_view", "volume_size"} & set(kwargs)
    if fixed:
        raise TypeError(f"{sorted(fixed)} come from the model config; change the config instead")
    if getattr(config, "is_volume", False):
        return MedicalVolumeToPixels.from_config(config, **kwargs)
    for name, default in (("max_views", 4), ("view_mode", "axial")):
        if kwargs.get(name) is None:
            kwargs[name] = getattr(config, name, default)
    tokens = int(config.num_image_tokens)
    kwargs.setdefault("token_budget", max(tokens, int(config.model_max_length) - int(text_reserve)))
    return MedicalImageToPixels(
        image_size=int(config.image_size),
        image_mean=tuple(config.image_mean),
        image_std=tuple(config.image_std),
        tokens_per_view=tokens,
        pad=bool(config.pad_to_square),
        **kwargs,
    )


class RadiologyViews(Transform):
    """Radiology input (DICOM file/series, NIfTI, photo) -> display-scaled 2D views with ``meta["view"]``.

    Args:
        max_views: see :class:`~monai_llava_med.transforms.views.VolumeToViews`.
        view_mode: see :class:`~monai_llava_med.transforms.views.VolumeToViews`.
        token_budget: see :class:`~monai_llava_med.transforms.views.VolumeToViews`.
        tokens_per_view: see :class:`~monai_llava_med.transforms.views.VolumeToViews`.
        montage_grid: see :class:`~monai_llava_med.transforms.views.VolumeToViews`.
        window: see :class:`~monai_llava_med.transforms.radiology.ModalityIntensity`.
        percentiles: see :class:`~monai_llava_med.transforms.radiology.ModalityIntensity`.
        modality: override the file's modality.
        max_voxels: size limit of an input.
        lazy_series: decode only the chosen slices of an axial DICOM series when the result is the same
            (``"axial"``/``"central"``/``"content"`` modes; ``"content"`` decodes every slice once to find those
            with content).
    """

    def __init__(
        self,
        max_views: int = 4,
        view_mode: ViewMode = "axial",
        token_budget: int | None = None,
        tokens_per_view: int = TOKENS_PER_VIEW,
        montage_grid: int = 3,
        window: WindowSpec | Sequence[WindowSpec] = "auto",
        percentiles: tuple[float, float] = (0.5, 99.5),
        modality: str | None = None,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        lazy_series: bool = True,
    ) -> None:
        self.loader = LoadMedicalImage(max_voxels=max_voxels, modality=modality)
        self.orient = CanonicalOrientation("RAS")
        self.intensity = ModalityIntensity(window, percentiles)
        self.to_views = VolumeToViews(max_views, view_mode, token_budget, tokens_per_view, montage_grid)
        self.window = window
        self.modality = modality
        self.max_voxels = max_voxels
        self.lazy_series = lazy_series

    def __call__(self, path: str | PathLike, kind: str | None = None) -> list[MetaTensor]:  # type: ignore[override]
        """Return the views of ``path``."""
        with QuietReaders():  # once for the whole input, not again for each file of a series
            return list(self.stream(path, kind)[1])

    def stream(self, path: str | PathLike, kind: str | None = None) -> tuple[int, Iterator[MetaTensor]]:
        """The number of views of ``path`` and an iterator over them, in order.

        An axial series read slice by slice (see ``lazy_series``) decodes each slice only when its view is taken,
        so a caller that converts the views one by one holds one decoded slice at a time.

        Args:
            path: the input.
            kind: its kind, as :func:`~.input_kind.detect_input_kind` names it (detected when None).
        """
        kind = kind or detect_input_kind(path)
        if kind == "dicom_series" and self.lazy_series and self.to_views.mode in ("axial", "central", "content"):
            with QuietReaders():
                info = scan_dicom_series(path, self.max_voxels)
            modality = (self.modality or info.meta["modality"]).upper()
            fixed_window = self.window not in ("auto", "percentile", None) or modality == "CT"
            if len(info.files) > 1 and info.is_standard_axial and fixed_window:
                source = Path(path).name
                content = self._lazy_content(info, source, modality) if self.to_views.mode == "content" else None
                indices = self.to_views.select(len(info.files), content)
                return len(indices), self._lazy_axial(info, indices, source, modality)
        img = self.loader(path, kind=kind)  # type: ignore[arg-type]
        img = self.orient(img)
        img = self.intensity(img)
        views = self.to_views(img)
        return len(views), iter(views)

    def _display_slice(self, info: Any, index: int, source: str, modality: str) -> torch.Tensor:
        """Slice ``index`` of a scanned axial series, decoded alone and display-scaled (before square pixels)."""
        with QuietReaders():
            sl = MetaTensor(decode_series_slice(info.files[index], self.max_voxels))
        sl.meta = {"modality": modality, "source": source, "window_center": info.meta["window_center"],
                   "window_width": info.meta["window_width"], "photometric": info.meta["photometric"]}
        return self.intensity(sl)

    def _lazy_content(self, info: Any, source: str, modality: str) -> list[int]:
        """The slices with content (:func:`~.views.content_slices`), decoding one slice at a time."""
        views = self.to_views
        return [index for index in range(len(info.files))
                if content_slices(self._display_slice(info, index, source, modality).unsqueeze(-1),
                                  views.content_level, views.content_fraction)]

    def _lazy_axial(self, info: Any, indices: list[int], source: str, modality: str) -> Iterator[MetaTensor]:
        for index in indices:
            shown = self._display_slice(info, index, source, modality)
            shown = _square_pixels(shown, info.spacing[0], info.spacing[1])
            meta = shown.meta if isinstance(shown, MetaTensor) else {"modality": modality, "source": source}
            yield _view(shown, {"kind": "slice", "plane": "axial", "index": int(index)}, meta)


class MedicalImageToPixels(Transform):
    """File or DICOM folder -> CLIP pixels of its views/tiles plus metadata, for LLaVA-Med.

    Args:
        image_size: vision tower input size.
        image_mean: CLIP mean (also the pad colour).
        image_std: CLIP std.
        max_views: most views (radiology) or tiles (pathology, thumbnail included).
        token_budget: cap on image tokens; views = ``min(max_views, token_budget // tokens_per_view)``.
        tokens_per_view: image tokens per view.
        window: ``"auto"``, ``"composite"``, ``"percentile"``, a preset, ``"dicom"`` or ``(centre, width)``.
        view_mode: ``"axial"`` (default: evenly spaced axial slices), ``"central"``, ``"content"`` (evenly spaced
            among slices that are not air/background), ``"triplanar"``, ``"montage"``.
        montage_grid: slices per montage side.
        percentiles: percentile range for MR and other non-CT grey images.
        modality: override the modality (NIfTI has none; it is guessed from the value range).
        tile_size: pathology tile side at the chosen level.
        target_mpp: pathology target microns per pixel.
        slide_level: pathology level when mpp is unknown or ``target_mpp`` is None.
        min_tissue: smallest tissue fraction of a kept tile.
        thumbnail: add the slide thumbnail as the first view.
        stain_normalize: H&E stain normalisation of tiles.
        max_voxels: size limit of a radiology input.
        pad: LLaVA "pad" mode (paste onto a mean-coloured square before resizing); ``False`` squashes each view
            to the square (``image_aspect_ratio="resize"``).
    """

    def __init__(
        self,
        image_size: int = 336,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        max_views: int = 4,
        token_budget: int | None = None,
        tokens_per_view: int = TOKENS_PER_VIEW,
        window: WindowSpec | Sequence[WindowSpec] = "auto",
        view_mode: ViewMode = "axial",
        montage_grid: int = 3,
        percentiles: tuple[float, float] = (0.5, 99.5),
        modality: str | None = None,
        tile_size: int = 512,
        target_mpp: float | None = 0.5,
        slide_level: int = 0,
        min_tissue: float = 0.5,
        thumbnail: bool = False,
        stain_normalize: bool = False,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        pad: bool = True,
    ) -> None:
        self.radiology = RadiologyViews(max_views, view_mode, token_budget, tokens_per_view, montage_grid, window,
                                        percentiles, modality, max_voxels)
        n = self.radiology.to_views.n_views
        self.pathology = SlideTiles(tile_size, target_mpp, slide_level, n, min_tissue, thumbnail, stain_normalize)
        self.pixels = ImageToClipPixels(image_size, image_mean, image_std, pad)

    def views(self, path: str | PathLike) -> list[MetaTensor]:
        """The display images (before CLIP pixels) of ``path``, each with ``meta["view"]``."""
        with QuietReaders():
            return list(self._stream(path)[1])

    def _stream(self, path: str | PathLike) -> tuple[int, Iterator[MetaTensor]]:
        """Number of views/tiles of ``path`` and an iterator over them (see :meth:`RadiologyViews.stream`)."""
        kind = detect_input_kind(path)
        if kind == "slide":
            tiles = self.pathology(path)
            return len(tiles), iter(tiles)
        return self.radiology.stream(path, kind=kind)

    def __call__(self, path: str | PathLike) -> dict[str, Any]:  # type: ignore[override]
        """Return ``{"pixel_values": (V, 3, S, S) float32, "views": [...], "modality", "source", "window"}``.

        Views are converted as they come (:meth:`RadiologyViews.stream`) into one preallocated batch, so a series
        read slice by slice never holds all its display images at once.
        """
        with memory_guard(path), QuietReaders():
            count, views = self._stream(path)
            metas: list[dict[str, Any]] = []
            pixels = torch.empty(0)
            for i, view in enumerate(views):  # errors while making a view propagate as they are
                try:
                    if i == 0:
                        head = self.pixels(view)
                        pixels = torch.empty((count, *head.shape), dtype=head.dtype)  # filled in place: no stack
                        pixels[0] = head
                    else:
                        self.pixels(view, out=pixels[i])
                except ValueError as e:  # NaN/inf after intensity scaling, or a shape the vision tower cannot take
                    raise VolumeError(f"the views cannot become vision-tower pixels: {e}", path) from e
                metas.append(view.meta)
        return pixel_record(pixels, [dict(m["view"]) for m in metas], metas[0], path)


class MedicalImageToPixelsd(PathToPixelsd):
    """Dictionary wrapper of :class:`MedicalImageToPixels` (:class:`~.pixels_dict.PathToPixelsd`): for each
    path under ``keys`` it writes ``{prefix}pixel_values``, ``{prefix}views``, ``{prefix}modality``,
    ``{prefix}source`` and ``{prefix}window``; ``kwargs`` are :class:`MedicalImageToPixels`'s arguments."""

    pipeline_class = MedicalImageToPixels


MedicalImageToPixelsD = MedicalImageToPixelsDict = MedicalImageToPixelsd
