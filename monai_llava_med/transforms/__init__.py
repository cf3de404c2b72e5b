# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Radiology and pathology preprocessing as MONAI transforms (see ``docs/transforms.md``).

The entry point most callers need is :class:`MedicalImageToPixels` (file -> CLIP pixels + view metadata) and
its dictionary form :class:`MedicalImageToPixelsd`; :class:`ImageToClipPixels` turns an in-memory image into
LLaVA "pad"-mode pixels.
"""

from __future__ import annotations

from .io import (
    DEFAULT_MAX_VOXELS,
    DicomSeriesInfo,
    LoadMedicalImage,
    LoadMedicalImaged,
    LoadMedicalImageD,
    LoadMedicalImageDict,
    detect_input_kind,
    scan_dicom_series,
)
from .pathology import SlideTiles, SlideTilesd, SlideTilesD, SlideTilesDict, select_level, tissue_mask
from .pipelines import (
    MedicalImageToPixels,
    MedicalImageToPixelsd,
    MedicalImageToPixelsD,
    MedicalImageToPixelsDict,
    RadiologyViews,
)
from .pixels import CLIP_MEAN, CLIP_STD, ImageToClipPixels, ImageToClipPixelsd, ImageToClipPixelsD, ImageToClipPixelsDict
from .radiology import (
    DEFAULT_COMPOSITE,
    WINDOW_PRESETS,
    CanonicalOrientation,
    CanonicalOrientationd,
    CanonicalOrientationD,
    CanonicalOrientationDict,
    CTWindow,
    CTWindowd,
    CTWindowD,
    CTWindowDict,
    InvertMonochrome1,
    InvertMonochrome1d,
    InvertMonochrome1D,
    InvertMonochrome1Dict,
    ModalityIntensity,
    ModalityIntensityd,
    ModalityIntensityD,
    ModalityIntensityDict,
    MultiWindow,
    MultiWindowd,
    MultiWindowD,
    MultiWindowDict,
    resolve_window,
)
from .views import TOKENS_PER_VIEW, VolumeToViews, VolumeToViewsd, VolumeToViewsD, VolumeToViewsDict, views_for_budget

__all__ = [
    "DEFAULT_MAX_VOXELS", "DicomSeriesInfo", "LoadMedicalImage", "LoadMedicalImaged", "LoadMedicalImageD",
    "LoadMedicalImageDict", "detect_input_kind", "scan_dicom_series",
    "SlideTiles", "SlideTilesd", "SlideTilesD", "SlideTilesDict", "select_level", "tissue_mask",
    "MedicalImageToPixels", "MedicalImageToPixelsd", "MedicalImageToPixelsD", "MedicalImageToPixelsDict",
    "RadiologyViews",
    "CLIP_MEAN", "CLIP_STD", "ImageToClipPixels", "ImageToClipPixelsd", "ImageToClipPixelsD", "ImageToClipPixelsDict",
    "DEFAULT_COMPOSITE", "WINDOW_PRESETS", "CanonicalOrientation", "CanonicalOrientationd", "CanonicalOrientationD",
    "CanonicalOrientationDict", "CTWindow", "CTWindowd", "CTWindowD", "CTWindowDict", "InvertMonochrome1",
    "InvertMonochrome1d", "InvertMonochrome1D", "InvertMonochrome1Dict", "ModalityIntensity", "ModalityIntensityd",
    "ModalityIntensityD", "ModalityIntensityDict", "MultiWindow", "MultiWindowd", "MultiWindowD", "MultiWindowDict",
    "resolve_window",
    "TOKENS_PER_VIEW", "VolumeToViews", "VolumeToViewsd", "VolumeToViewsD", "VolumeToViewsDict", "views_for_budget",
]
