# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Radiology volume -> the input of the native 3-D vision tower: ``(1, C, D, H, W)`` in RAS, display-scaled.

:class:`MedicalVolumeToPixels` takes every radiology input the project loads (DICOM series, enhanced multi-frame
DICOM, NIfTI, a DICOM slice with patient geometry) through the same steps as the 2-D views
(:class:`~monai_llava_med.transforms.io.LoadMedicalImage`, :class:`~.radiology.ModalityIntensity`,
:class:`~.radiology.CanonicalOrientation`), then:

1. block means: each array axis is averaged in blocks of ``max(1, n // max(D, H, W))`` voxels (a partial last
   block is averaged over what it holds), the affine scaled to match, so no axis is more than twice the largest
   target side;
2. reorientation to RAS (MONAI ``Orientation``, as everywhere in the project);
3. trilinear resampling to the tower's ``(D, H, W)`` and the axis order ``(C, S, A, R)``: ``d`` grows toward
   the patient's head (superior), ``h`` toward anterior, ``w`` toward the patient's right;
4. display values ``[0, 255]`` scaled to ``[0, 1]`` (the range MONAI's 3-D pretraining recipes feed).

A DICOM series with a fixed window (CT, or any explicit window) is read slice by slice: each slice is decoded,
windowed and block-averaged in plane before the next one is read, so the whole volume is never held (peak
memory of a 512 x 512 x 300 CT: ``docs/limits.md``); the result equals the whole-volume path up to float
rounding. Other inputs (MR series with percentile scaling, NIfTI) are loaded whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Transform

from ..errors import VolumeError
from .dicom_file import decode_series_slice
from .dicom_geometry import patient_affine
from .dicom_header import read_dicom_header, tag_floats
from .io import DEFAULT_MAX_VOXELS, DicomSeriesInfo, LoadMedicalImage, detect_input_kind, scan_dicom_series
from .radiology import CanonicalOrientation, ModalityIntensity, WindowSpec
from .pixels_dict import PathToPixelsd, pixel_record
from .readers import QuietReaders, memory_guard

__all__ = [
    "block_factors",
    "block_mean",
    "block_affine",
    "MedicalVolumeToPixels",
    "MedicalVolumeToPixelsd",
    "MedicalVolumeToPixelsD",
    "MedicalVolumeToPixelsDict",
]


def block_factors(shape: Sequence[int], target: int) -> tuple[int, ...]:
    """Block size per axis: ``max(1, n // target)``, so each reduced axis keeps at least ``target`` voxels."""
    return tuple(max(1, int(n) // int(target)) for n in shape)


def block_mean(img: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Average a ``(C, *spatial)`` tensor (2 or 3 spatial axes) in blocks of ``factors``, on plain tensors.

    A partial last block is the mean of the voxels it holds. A :class:`MetaTensor` keeps its meta and gets the
    affine of the reduced grid (each block's centre).

    Args:
        img: the image.
        factors: block size per spatial axis.
    """
    factors = tuple(int(f) for f in factors)
    plain = img.as_subclass(torch.Tensor) if isinstance(img, MetaTensor) else img
    if any(f > 1 for f in factors):
        pool = F.avg_pool3d if len(factors) == 3 else F.avg_pool2d
        plain = pool(plain[None].float(), kernel_size=factors, stride=factors, ceil_mode=True)[0]
    if not isinstance(img, MetaTensor):
        return plain
    meta = {k: v for k, v in img.meta.items() if k not in ("affine", "original_affine", "spatial_shape")}
    return MetaTensor(plain, affine=block_affine(img.affine, factors), meta=meta)


def block_affine(affine: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """The affine of a grid averaged in blocks of ``factors``: axes scaled, origin at the first block's centre."""
    out = torch.as_tensor(affine, dtype=torch.float64).clone()
    n = len(factors)
    scale = torch.tensor([float(f) for f in factors], dtype=torch.float64)
    out[:3, 3] += out[:3, :n] @ ((scale - 1) / 2)
    out[:, :n] *= scale
    return out


class MedicalVolumeToPixels(Transform):
    """Radiology file or DICOM folder -> ``{"pixel_values": (1, C, D, H, W) float32, ...}`` for the 3-D tower.

    Args:
        volume_size: ``(D, H, W)`` of the tower's input.
        in_channels: channels the tower takes (1: grey; 3 for a composite window).
        window: see :class:`~monai_llava_med.transforms.radiology.ModalityIntensity`.
        percentiles: see :class:`~monai_llava_med.transforms.radiology.ModalityIntensity`.
        modality: override the file's modality.
        max_voxels: size limit of an input.
        lazy_series: read a DICOM series with a fixed window slice by slice (same result, bounded memory).
    """

    def __init__(
        self,
        volume_size: Sequence[int] = (32, 64, 64),
        in_channels: int = 1,
        window: WindowSpec | Sequence[WindowSpec] = "auto",
        percentiles: tuple[float, float] = (0.5, 99.5),
        modality: str | None = None,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        lazy_series: bool = True,
    ) -> None:
        size = tuple(int(v) for v in volume_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"volume_size must be 3 positive integers (D, H, W), got {volume_size!r}")
        self.volume_size = size
        self.in_channels = int(in_channels)
        self.loader = LoadMedicalImage(max_voxels=max_voxels, modality=modality)
        self.orient = CanonicalOrientation("RAS")
        self.intensity = ModalityIntensity(window, percentiles)
        self.window = window
        self.modality = modality
        self.max_voxels = max_voxels
        self.lazy_series = lazy_series

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> MedicalVolumeToPixels:
        """The pipeline of a 3-D network config (``volume_size``, ``vision_config["in_channels"]``).

        Args:
            config: a ``LlavaMedConfig`` whose ``is_volume`` is true (read by attribute).
            kwargs: ``window``, ``percentiles``, ``modality``, ``max_voxels``, ``lazy_series``; the 2-D view
                options ``max_views``, ``view_mode``, ``token_budget`` and ``montage_grid`` do not apply (a
                volume is one input of the 3-D tower) and are set aside.
        """
        for name in ("max_views", "view_mode", "token_budget", "montage_grid"):
            kwargs.pop(name, None)
        return cls(tuple(config.volume_size), int(config.vision_config.get("in_channels", 1)), **kwargs)

    # ------------------------------------------------------------------------------------------------ volumes
    def display_volume(self, path: str | PathLike) -> MetaTensor:
        """The display-scaled, block-averaged volume of ``path`` before reorientation (array axes as loaded)."""
        kind = detect_input_kind(path)
        if kind == "slide":
            raise VolumeError("a whole-slide image is no radiology volume for the 3-D tower", path)
        target = max(self.volume_size)
        if kind == "dicom_series" and self.lazy_series:
            info = scan_dicom_series(path, self.max_voxels)
            modality = (self.modality or info.meta["modality"]).upper()
            fixed_window = self.window not in ("auto", "percentile", None) or modality == "CT"
            if len(info.files) > 1 and info.instance_order_matches and fixed_window:
                return self._series_by_slice(info, Path(path).name, modality, target)
        img = self.loader(path, kind=kind)  # type: ignore[arg-type]
        layout = img.meta.get("layout")
        if layout == "image" and img.meta.get("patient_geometry"):
            img = self.orient(img)  # a slice with geometry becomes a one-slice volume (already RAS)
        elif layout != "volume":
            raise VolumeError(f"the 3-D tower needs a volume with patient geometry; this input is a {layout!r} "
                              "image (use a 2-D model for photos and frames without geometry)", path)
        shown = self.intensity(img)
        return block_mean(shown, block_factors(shown.shape[1:], target))

    def _series_by_slice(self, info: DicomSeriesInfo, source: str, modality: str, target: int) -> MetaTensor:
        """A series decoded, windowed and block-averaged one slice at a time, as a ``(C, column, row, slice)``
        volume with :func:`~.dicom_geometry.patient_affine`'s affine."""
        rows, cols = info.shape
        in_plane = block_factors((cols, rows), target)
        stack: torch.Tensor | None = None
        window = None
        for k, file in enumerate(info.files):
            sl = MetaTensor(decode_series_slice(file, self.max_voxels))
            sl.meta = {"modality": modality, "source": source, "window_center": info.meta["window_center"],
                       "window_width": info.meta["window_width"], "photometric": info.meta["photometric"]}
            shown = self.intensity(sl)
            window = shown.meta.get("window") if isinstance(shown, MetaTensor) else None
            reduced = block_mean(shown.as_subclass(torch.Tensor).transpose(1, 2), in_plane)  # (C, column, row)
            if stack is None:
                stack = torch.empty((*reduced.shape, len(info.files)), dtype=torch.float32)
            stack[..., k] = reduced
        if stack is None:
            raise VolumeError("the series holds no slices", source)
        first, last = (tag_floats(read_dicom_header(f, scan=True), "ImagePositionPatient", 3, f)
                       for f in (info.files[0], info.files[-1]))
        step = (np.asarray(last) - np.asarray(first)) / (len(info.files) - 1)
        affine = block_affine(torch.as_tensor(patient_affine(info.orientation, first, info.spacing[:2], step)),
                              (*in_plane, 1))
        vol = MetaTensor(stack, affine=affine, meta={"layout": "volume", "modality": modality, "source": source,
                                                     "window": window, "photometric": "MONOCHROME2"})
        return block_mean(vol, (1, 1, block_factors((len(info.files),), target)[0]))

    def __call__(self, path: str | PathLike) -> dict[str, Any]:  # type: ignore[override]
        """Return ``{"pixel_values": (1, C, D, H, W) float32 in [0, 1], "views", "modality", "source", "window"}``.

        ``views`` holds one entry, ``{"kind": "volume", "axes": "SAR", "size": [D, H, W]}``.

        Raises:
            VolumeError: an input that is no volume, a channel count the tower does not take, NaN/inf after scaling.
            ImageReadError: see :class:`~monai_llava_med.transforms.io.LoadMedicalImage`.
        """
        with memory_guard(path), QuietReaders():
            vol = self.display_volume(path)
            meta = dict(vol.meta)
            ras = self.orient(vol)
            d, h, w = self.volume_size
            plain = ras.as_subclass(torch.Tensor).float()
            resized = F.interpolate(plain[None], size=(w, h, d), mode="trilinear", align_corners=False)[0]
            pixels = (resized.permute(0, 3, 2, 1) / 255.0).clamp_(0.0, 1.0).contiguous()[None]
        if pixels.shape[1] != self.in_channels:
            raise VolumeError(f"the volume has {pixels.shape[1]} channel(s) but the 3-D tower takes "
                              f"{self.in_channels}", path)
        if not bool(torch.isfinite(pixels).all()):
            raise VolumeError("the volume holds NaN/inf values after display scaling", path)
        return pixel_record(pixels, [{"kind": "volume", "axes": "SAR", "size": [d, h, w]}], meta, path)


class MedicalVolumeToPixelsd(PathToPixelsd):
    """Dictionary wrapper of :class:`MedicalVolumeToPixels` (:class:`~.pixels_dict.PathToPixelsd`): for each
    path under ``keys`` it writes ``{prefix}pixel_values``, ``{prefix}views``, ``{prefix}modality``,
    ``{prefix}source`` and ``{prefix}window``; ``kwargs`` are :class:`MedicalVolumeToPixels`'s arguments."""

    pipeline_class = MedicalVolumeToPixels


MedicalVolumeToPixelsD = MedicalVolumeToPixelsDict = MedicalVolumeToPixelsd
