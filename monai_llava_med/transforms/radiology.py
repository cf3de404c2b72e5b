# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Modality-aware intensity for radiology images: CT windows, MR percentiles, MONOCHROME1, orientation.

All intensity transforms map to display values in ``[0, 255]`` (float), the range the vision tower's PNG
training images had. They read ``modality`` / ``photometric`` / ``window_center`` / ``window_width`` from the
MetaTensor's ``meta`` (as written by :class:`~monai_llava_med.transforms.io.LoadMedicalImage`) and record what
they did in ``meta["window"]``.

CT windows use the plain linear form: ``[L - W/2, L + W/2] -> [0, 255]`` clipped (MONAI
``ScaleIntensityRange``); the DICOM standard's ``W - 1`` variant differs by under half a grey level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Orientation, ScaleIntensityRange, ScaleIntensityRangePercentiles, Transform

from ..errors import VolumeError

__all__ = [
    "WINDOW_PRESETS",
    "DEFAULT_COMPOSITE",
    "resolve_window",
    "CTWindow",
    "CTWindowd",
    "CTWindowD",
    "CTWindowDict",
    "MultiWindow",
    "MultiWindowd",
    "MultiWindowD",
    "MultiWindowDict",
    "InvertMonochrome1",
    "InvertMonochrome1d",
    "InvertMonochrome1D",
    "InvertMonochrome1Dict",
    "ModalityIntensity",
    "ModalityIntensityd",
    "ModalityIntensityD",
    "ModalityIntensityDict",
    "CanonicalOrientation",
    "CanonicalOrientationd",
    "CanonicalOrientationD",
    "CanonicalOrientationDict",
]

#: Window presets as (level/centre, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (50.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
}
#: Default three windows of the composite (packed as R, G, B).
DEFAULT_COMPOSITE: tuple[str, str, str] = ("lung", "mediastinum", "bone")
#: Modalities displayed through the file's own window when it has one (projection radiography).
_PROJECTION = {"CR", "DX", "MG", "RF", "XA", "IO", "PX"}

WindowSpec = str | tuple[float, float] | None


def resolve_window(window: WindowSpec, meta: dict[str, Any] | None = None) -> tuple[float, float, str]:
    """Turn a window spec into ``(centre, width, label)``.

    Args:
        window: a preset name (see :data:`WINDOW_PRESETS`), ``"dicom"`` (the file's WindowCenter/Width) or an
            explicit ``(centre, width)``.
        meta: image metadata with ``window_center`` / ``window_width`` (for ``"dicom"``).

    Raises:
        ValueError: unknown preset, non-positive width.
        VolumeError: ``"dicom"`` when the file has no window (names ``meta["source"]``).
    """
    if isinstance(window, str):
        key = window.lower()
        if key == "dicom":
            meta = meta or {}
            c, w = meta.get("window_center"), meta.get("window_width")
            if c is None or w is None or w <= 0:
                raise VolumeError("window='dicom' but the file has no usable WindowCenter/WindowWidth",
                                  meta.get("source"))
            return float(c), float(w), "dicom"  # the file's own window; header values never reach outputs
        if key not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; choose from {sorted(WINDOW_PRESETS)} or 'dicom'")
        c, w = WINDOW_PRESETS[key]
        return c, w, key
    if window is None or len(window) != 2:
        raise ValueError(f"window must be a preset name, 'dicom' or (centre, width), got {window!r}")
    c, w = float(window[0]), float(window[1])
    if w <= 0:
        raise ValueError(f"window width must be positive, got {w}")
    return c, w, f"L{c:g} W{w:g}"


def _meta(img: torch.Tensor) -> dict[str, Any]:
    return img.meta if isinstance(img, MetaTensor) else {}


def _plain(img: torch.Tensor) -> torch.Tensor:
    """Compute on a plain tensor (MetaTensor dispatch costs more than the arithmetic here); float32."""
    t = img.as_subclass(torch.Tensor) if isinstance(img, MetaTensor) else torch.as_tensor(img)
    return t.float()


def _with_meta(out: torch.Tensor, like: torch.Tensor, **updates: Any) -> torch.Tensor:
    if isinstance(like, MetaTensor):
        out = out if isinstance(out, MetaTensor) else MetaTensor(out)
        out.meta = {**like.meta, **updates}
        out.affine = like.affine
    return out


class CTWindow(Transform):
    """Window an image in Hounsfield units to ``[0, 255]``.

    Args:
        window: preset name, ``"dicom"`` or ``(centre, width)``; see :func:`resolve_window`.
    """

    def __init__(self, window: WindowSpec = "soft_tissue") -> None:
        self.window = window

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Apply the window; ``meta["window"]`` gets the window's label."""
        c, w, label = resolve_window(self.window, _meta(img))
        out = ScaleIntensityRange(a_min=c - w / 2, a_max=c + w / 2, b_min=0.0, b_max=255.0, clip=True)(_plain(img))
        return _with_meta(out, img, window=label)


class MultiWindow(Transform):
    """Pack three windows of a single-channel CT image into three channels (an RGB composite).

    Args:
        windows: three window specs (presets, ``"dicom"`` or ``(centre, width)``).
    """

    def __init__(self, windows: Sequence[WindowSpec] = DEFAULT_COMPOSITE) -> None:
        if len(windows) != 3:
            raise ValueError(f"a composite needs exactly three windows, got {len(windows)}")
        self.windows = tuple(windows)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Return a ``(3, ...)`` image; the input must have one channel."""
        if img.shape[0] != 1:
            raise ValueError(f"composite windowing needs a single-channel image, got {img.shape[0]} channels")
        labels, chans = [], []
        for spec in self.windows:
            c, w, label = resolve_window(spec, _meta(img))
            labels.append(label)
            chans.append(ScaleIntensityRange(c - w / 2, c + w / 2, 0.0, 255.0, clip=True)(_plain(img)))
        out = torch.cat([torch.as_tensor(ch) for ch in chans], dim=0)
        return _with_meta(out, img, window="composite:" + "+".join(labels))


class InvertMonochrome1(Transform):
    """Invert a display-scaled ``[0, 255]`` image when its photometric interpretation is MONOCHROME1.

    In MONOCHROME1 the lowest value is white; after inversion air is dark, as in MONOCHROME2 images.

    Args:
        max_value: the top of the display range.
        force: invert regardless of ``meta["photometric"]``.
    """

    def __init__(self, max_value: float = 255.0, force: bool = False) -> None:
        self.max_value = max_value
        self.force = force

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Invert if needed; ``meta["photometric"]`` becomes ``MONOCHROME2`` after inversion."""
        meta = _meta(img)
        if not (self.force or str(meta.get("photometric", "")).upper() == "MONOCHROME1"):
            return img
        out = self.max_value - _plain(img)
        return _with_meta(out, img, photometric="MONOCHROME2", inverted=True)


class ModalityIntensity(Transform):
    """Display scaling chosen by modality, to ``[0, 255]``.

    * ``CT``: ``window`` (``"auto"``: the file's own window when present, else ``"soft_tissue"``);
      ``"composite"`` packs :data:`DEFAULT_COMPOSITE` as RGB.
    * ``CR``/``DX``/``MG``/...: the file's window when present and ``window`` is ``"auto"``, else percentiles;
      MONOCHROME1 is inverted so that air is dark.
    * other grey-level modalities (``MR``, ``PT``, ``NM``, ``US`` grey...): percentiles ``percentiles`` of the
      whole image/volume mapped to ``[0, 255]``.
    * colour images (3 channels, 8-bit): unchanged; other colour depths: min-max scaled.
    * 8-bit grey photos (``modality`` ``"OT"``, ``meta["bit_depth"] == 8``): unchanged, like colour ones.
    * composites and windows alike: MONOCHROME1 is inverted after display scaling.

    Args:
        window: ``"auto"``, ``"composite"``, a preset, ``"dicom"``, ``(centre, width)`` or a sequence of three
            specs for a composite. Explicit windows apply to any grey-level modality.
        percentiles: lower/upper percentile for percentile scaling.
    """

    def __init__(self, window: WindowSpec | Sequence[WindowSpec] = "auto",
                 percentiles: tuple[float, float] = (0.5, 99.5)) -> None:
        self.window = window
        self.percentiles = percentiles

    def _percentile(self, img: torch.Tensor) -> torch.Tensor:
        lo, hi = self.percentiles
        x = _plain(img)
        out = ScaleIntensityRangePercentiles(lower=lo, upper=hi, b_min=0.0, b_max=255.0, clip=True)(x)
        if float(out.max()) == float(out.min()):  # constant image: mid-grey would invent contrast; keep black
            out = torch.zeros_like(x)
        return _with_meta(out, img, window=f"percentile {lo:g}-{hi:g}")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Scale ``img`` for display according to its ``meta``."""
        meta = _meta(img)
        modality = str(meta.get("modality", "OT")).upper()
        channels = img.shape[0]
        if channels not in (1, 3):
            raise VolumeError(f"expected 1 or 3 channels, got {channels}", meta.get("source"))
        if channels == 3:
            if float(img.min()) >= 0 and float(img.max()) <= 255:  # already 8-bit colour
                return _with_meta(img.float(), img, window=None)
            out = ScaleIntensityRange(float(img.min()), max(float(img.max()), float(img.min()) + 1e-6), 0.0, 255.0)(
                img.float()
            )
            return _with_meta(out, img, window="minmax")
        window = self.window
        if isinstance(window, (list, tuple)) and len(window) == 3:
            return InvertMonochrome1()(MultiWindow(window)(img))
        if window == "composite":
            return InvertMonochrome1()(MultiWindow(DEFAULT_COMPOSITE)(img))
        has_file_window = meta.get("window_center") is not None and (meta.get("window_width") or 0) > 0
        if window == "auto":
            if modality == "CT":
                out = CTWindow("dicom" if has_file_window else "soft_tissue")(img)
            elif modality in _PROJECTION and has_file_window:
                out = CTWindow("dicom")(img)
            elif modality == "OT" and (meta.get("bit_depth") == 8 or img.dtype == torch.uint8):
                out = _with_meta(img.float(), img, window=None)
            else:
                out = self._percentile(img)
        elif window == "percentile":
            out = self._percentile(img)
        elif window is None:
            out = _with_meta(img.float().clamp(0, 255), img, window=None)
        else:
            out = CTWindow(window)(img)  # type: ignore[arg-type]
        return InvertMonochrome1()(out)


class CanonicalOrientation(Transform):
    """Reorient a volume (``meta["layout"] == "volume"``) to RAS with MONAI ``Orientation``.

    A 2D image with patient geometry (``meta["patient_geometry"]``: a DICOM slice whose affine maps its
    ``(row, column)`` array and slice normal to RAS) becomes a one-slice ``(C, X, Y, Z)`` volume first, so that
    it is reoriented exactly like the same slice in a series. Other images pass through.

    Args:
        axcodes: target axis codes.
    """

    def __init__(self, axcodes: str = "RAS") -> None:
        self.orientation = Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Reorient when the image is a volume or a slice with geometry."""
        meta = _meta(img)
        if meta.get("layout") == "image" and meta.get("patient_geometry") and img.ndim == 3:
            img = MetaTensor(img.as_subclass(torch.Tensor)[..., None],
                             meta={**meta, "layout": "volume", "patient_geometry": False})
        elif meta.get("layout") != "volume":
            return img
        return self.orientation(img)


class _KeyWise(MapTransform):
    """Apply one array transform to every key."""

    transform: Transform

    def __call__(self, data: dict) -> dict:  # type: ignore[override]
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class CTWindowd(_KeyWise):
    """Dictionary wrapper of :class:`CTWindow`.

    Args:
        keys: image keys.
        window: see :class:`CTWindow`.
        allow_missing_keys: do not raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, window: WindowSpec = "soft_tissue", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = CTWindow(window)


class MultiWindowd(_KeyWise):
    """Dictionary wrapper of :class:`MultiWindow`.

    Args:
        keys: image keys.
        windows: see :class:`MultiWindow`.
        allow_missing_keys: do not raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, windows: Sequence[WindowSpec] = DEFAULT_COMPOSITE,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = MultiWindow(windows)


class InvertMonochrome1d(_KeyWise):
    """Dictionary wrapper of :class:`InvertMonochrome1`.

    Args:
        keys: image keys.
        max_value: see :class:`InvertMonochrome1`.
        force: see :class:`InvertMonochrome1`.
        allow_missing_keys: do not raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, max_value: float = 255.0, force: bool = False,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = InvertMonochrome1(max_value, force)


class ModalityIntensityd(_KeyWise):
    """Dictionary wrapper of :class:`ModalityIntensity`.

    Args:
        keys: image keys.
        window: see :class:`ModalityIntensity`.
        percentiles: see :class:`ModalityIntensity`.
        allow_missing_keys: do not raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, window: WindowSpec | Sequence[WindowSpec] = "auto",
                 percentiles: tuple[float, float] = (0.5, 99.5), allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = ModalityIntensity(window, percentiles)


class CanonicalOrientationd(_KeyWise):
    """Dictionary wrapper of :class:`CanonicalOrientation`.

    Args:
        keys: image keys.
        axcodes: see :class:`CanonicalOrientation`.
        allow_missing_keys: do not raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, axcodes: str = "RAS", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = CanonicalOrientation(axcodes)


CTWindowD = CTWindowDict = CTWindowd
MultiWindowD = MultiWindowDict = MultiWindowd
InvertMonochrome1D = InvertMonochrome1Dict = InvertMonochrome1d
ModalityIntensityD = ModalityIntensityDict = ModalityIntensityd
CanonicalOrientationD = CanonicalOrientationDict = CanonicalOrientationd
