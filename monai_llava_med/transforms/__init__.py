# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Radiology and pathology preprocessing as MONAI transforms (see ``docs/transforms.md``).

The entry point most callers need is :class:`MedicalImageToPixels` (file -> CLIP pixels + view metadata) and
its dictionary form :class:`MedicalImageToPixelsd`; :class:`ImageToClipPixels` turns an in-memory image into
LLaVA "pad"-mode pixels.

Names are imported on first use (PEP 562 ``__getattr__`` via ``lazy_loader``), so importing the package
costs nothing until one of them is needed.
"""

from __future__ import annotations

import lazy_loader as _lazy

from monai_llava_med.constants import CLIP_MEAN, CLIP_STD

_SUBMODULE_ATTRS = {
    "io": [
        "DEFAULT_MAX_VOXELS", "DicomSeriesInfo", "LoadMedicalImage", "LoadMedicalImaged", "LoadMedicalImageD",
        "LoadMedicalImageDict", "detect_input_kind", "scan_dicom_series",
    ],
    "limits": ["MAX_ASPECT_RATIO", "MAX_DECODE_SIDE", "MAX_IMAGE_PIXELS", "MAX_INFLATED_BYTES"],
    "pathology": ["SlideTiles", "SlideTilesd", "SlideTilesD", "SlideTilesDict", "select_level", "tissue_mask"],
    "pipelines": [
        "MedicalImageToPixels", "MedicalImageToPixelsd", "MedicalImageToPixelsD", "MedicalImageToPixelsDict",
        "RadiologyViews", "TEXT_RESERVE", "pixels_from_config",
    ],
    "pixels": ["PAD_FIRST_MAX_SIDE", "ImageToClipPixels", "ImageToClipPixelsd", "ImageToClipPixelsD", "ImageToClipPixelsDict"],
    "sitk_reader": ["SimpleITKImageReader", "load_sitk_volume"],
    "radiology": [
        "DEFAULT_COMPOSITE", "WINDOW_PRESETS", "CanonicalOrientation", "CanonicalOrientationd", "CanonicalOrientationD",
        "CanonicalOrientationDict", "CTWindow", "CTWindowd", "CTWindowD", "CTWindowDict", "InvertMonochrome1",
        "InvertMonochrome1d", "InvertMonochrome1D", "InvertMonochrome1Dict", "ModalityIntensity", "ModalityIntensityd",
        "ModalityIntensityD", "ModalityIntensityDict", "MultiWindow", "MultiWindowd", "MultiWindowD", "MultiWindowDict",
        "resolve_window",
    ],
    "volume_pixels": [
        "MedicalVolumeToPixels", "MedicalVolumeToPixelsd", "MedicalVolumeToPixelsD", "MedicalVolumeToPixelsDict",
        "block_mean",
    ],
    "views": [
        "TOKENS_PER_VIEW", "VolumeToViews", "VolumeToViewsd", "VolumeToViewsD", "VolumeToViewsDict", "views_for_budget",
        "CONTENT_FRACTION", "CONTENT_LEVEL", "content_slices",
    ],
}

__getattr__, _lazy_dir, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = ["CLIP_MEAN", "CLIP_STD", *_lazy_all]


def __dir__() -> list[str]:
    """The public names, eager and lazy."""
    return list(__all__)
