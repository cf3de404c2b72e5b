# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The ``"content"`` view mode (slices of air skipped) and the view defaults a model config gives the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _transforms_fixtures import write_ct_series
from monai.data import MetaTensor

from monai_llava_med.networks import LlavaMedConfig
from monai_llava_med.transforms import (
    MedicalImageToPixels,
    RadiologyViews,
    VolumeToViews,
    VolumeToViewsd,
    content_slices,
    pixels_from_config,
)


def _phantom(depth: int = 20, body: range = range(5, 15), value: float = 200.0) -> MetaTensor:
    """A display-scaled RAS volume (1, 16, 16, depth): a bright square on the slices in ``body``, air elsewhere."""
    vol = torch.zeros((1, 16, 16, depth))
    for k in body:
        vol[0, 4:12, 4:12, k] = value  # 64 of 256 pixels: 25 %
    out = MetaTensor(vol, affine=torch.eye(4))
    out.meta.update({"layout": "volume", "modality": "CT", "source": "phantom"})
    return out


def _indices(views) -> list[int]:
    return [v.meta["view"]["index"] for v in views]


def test_content_mode_skips_air_slices_at_both_ends():
    vol = _phantom()
    # slices 5..14 have content; 4 views evenly spaced among those 10 at fractions 1/5..4/5: positions 2, 4, 6, 8
    assert _indices(VolumeToViews(max_views=4, mode="content")(vol)) == [7, 9, 11, 13]
    # the "axial" mode spaces them over all 20 slices and lands on air at 4 and 16
    assert _indices(VolumeToViews(max_views=4, mode="axial")(vol)) == [4, 8, 12, 16]
    views = VolumeToViews(max_views=4, mode="content")(vol)
    assert all(float(v.max()) == 200.0 for v in views)


def test_content_thresholds_ignore_faint_haze_and_specks():
    vol = _phantom()
    vol[0, :, :, :5] = 10.0  # below the 5 % display level (12.75) everywhere: still air
    vol[0, 0, 0, 15] = 255.0  # one bright pixel of 256 (0.4 % < 2 %): still air
    vol[0, :3, :2, 16] = 255.0  # 6 of 256 pixels (2.3 %): counts
    assert content_slices(vol) == [*range(5, 15), 16]
    assert content_slices(vol, level=5.0)[:5] == [0, 1, 2, 3, 4]
    assert content_slices(vol, fraction=0.1) == list(range(5, 15))


def test_content_mode_falls_back_to_axial_when_too_few_slices_have_content():
    vol = _phantom(body=range(9, 11))  # 2 slices with content, 4 views asked
    assert _indices(VolumeToViews(max_views=4, mode="content")(vol)) == [4, 8, 12, 16]
    blank = _phantom(body=range(0))
    assert _indices(VolumeToViews(max_views=3, mode="content")(blank)) == [5, 10, 15]


def test_content_mode_in_the_dictionary_wrapper_and_frames():
    out = VolumeToViewsd(keys="image", max_views=2, mode="content")({"image": _phantom()})["image"]
    # 10 content slices, 2 views at fractions 1/3, 2/3: positions 3, 6
    assert _indices(out) == [8, 11]
    frames = _phantom()
    frames.meta["layout"] = "frames"
    assert _indices(VolumeToViews(max_views=2, mode="content")(frames)) == [8, 11]
    with pytest.raises(ValueError, match="content_fraction"):
        VolumeToViews(mode="content", content_fraction=0.0)


def _no_volume_load(*args, **kwargs):
    raise AssertionError("the series was loaded as a whole volume")


def test_content_mode_on_a_ct_series_slice_by_slice_equals_the_full_volume(tmp_path):
    hu = np.full((12, 12, 16), -1000.0, np.float32)  # air (shown as 0 in the soft-tissue window)
    hu[3:9, 3:9, 4:12] = 60.0  # soft tissue on slices 4..11
    write_ct_series(tmp_path / "s", hu, instance_order="descending")
    lazy = RadiologyViews(max_views=2, view_mode="content")
    lazy.loader = _no_volume_load  # the slice-by-slice path: the whole volume is never loaded
    content = lazy(tmp_path / "s")
    # 8 content slices at fractions 1/3, 2/3: positions 2, 5 -> slices 6, 9
    assert _indices(content) == [6, 9]
    full = RadiologyViews(max_views=2, view_mode="content", lazy_series=False)(tmp_path / "s")
    assert _indices(full) == [6, 9]
    for a, b in zip(content, full):
        np.testing.assert_allclose(a.numpy(), b.numpy())
    assert all(float(v.max()) > 0 for v in content)
    # the lazy axial path (same series, "axial" mode) picks by position only: slices 5 and 10
    assert _indices(RadiologyViews(max_views=2, view_mode="axial")(tmp_path / "s")) == [5, 10]
    pixels = MedicalImageToPixels(image_size=32, max_views=2, view_mode="content")(tmp_path / "s")
    assert [v["index"] for v in pixels["views"]] == [6, 9]


def test_pixels_from_config_takes_view_defaults_from_the_config():
    config = LlavaMedConfig.tiny(max_views=2, view_mode="content")
    pipeline = pixels_from_config(config)
    assert pipeline.radiology.to_views.mode == "content" and pipeline.radiology.to_views.n_views == 2
    explicit = pixels_from_config(config, max_views=3, view_mode="triplanar")
    assert explicit.radiology.to_views.mode == "triplanar" and explicit.radiology.to_views.n_views == 3
    none_given = pixels_from_config(config, max_views=None, view_mode=None)  # None: the config's (bundle default)
    assert none_given.radiology.to_views.mode == "content" and none_given.radiology.to_views.n_views == 2
    defaults = pixels_from_config(LlavaMedConfig.tiny())
    assert defaults.radiology.to_views.mode == "axial" and defaults.radiology.to_views.n_views == 4


@pytest.mark.parametrize("token_pool, views", [(1, 3), (2, 12), (3, 28)])
def test_the_context_caps_the_views_of_v15_by_its_pooled_token_count(token_pool, views):
    # (2048 - 256) // 576 = 3, // 144 = 12, // 64 = 28
    config = LlavaMedConfig.v1_5(token_pool=token_pool, max_views=100)
    assert pixels_from_config(config).radiology.to_views.n_views == views
    assert pixels_from_config(LlavaMedConfig.v1_5(token_pool=token_pool)).radiology.to_views.n_views == min(4, views)
