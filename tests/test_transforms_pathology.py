# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Whole-slide tiles through MONAI WSIReader (tifffile backend) on a generated pyramidal TIFF."""

from __future__ import annotations

import numpy as np
import pytest
from _transforms_fixtures import write_slide

from monai_llava_med.errors import SlideError
from monai_llava_med.transforms import MedicalImageToPixels, SlideTiles, select_level, tissue_mask

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("wsi") / "slide.tif"
    base = write_slide(path, size=1024, levels=3, mpp0=0.25)
    return path, base


def test_select_level_for_mpp():
    mpps = [0.25, 0.5, 1.0]
    assert select_level(mpps, 0.5) == 1 and select_level(mpps, 0.7) == 1 and select_level(mpps, 1.0) == 2
    assert select_level(mpps, 0.1) == 0 and select_level([0.25, None], 0.5) == 0


def test_tissue_mask_finds_the_tissue(slide):
    path, base = slide
    thumb = np.moveaxis(base[::4, ::4], -1, 0)
    mask = tissue_mask(thumb)
    assert mask[64:192, 128:].mean() > 0.95 and mask[:64].mean() == 0 and mask[:, :128].mean() == 0
    assert not tissue_mask(np.full((3, 32, 32), 240, np.uint8)).any()


def test_tiles_coordinates_and_pixels(slide):
    path, base = slide
    tiles = SlideTiles(tile_size=128, target_mpp=0.5, max_tiles=4, min_tissue=0.9)(path)
    assert len(tiles) == 4
    for t in tiles:
        v = t.meta["view"]
        assert v["kind"] == "tile" and v["level"] == 1 and v["size"] == 128 and v["tissue"] >= 0.9
        # tissue covers level-0 rows [256, 768) and columns [512, 1024); tiles are 256 level-0 px wide
        assert 256 <= v["y"] and v["y"] + 256 <= 768 and v["x"] >= 512 and v["x"] % 256 == 0
        expected = np.moveaxis(base[v["y"] : v["y"] + 256 : 2, v["x"] : v["x"] + 256 : 2], -1, 0)
        np.testing.assert_array_equal(t.numpy(), expected)
    assert sorted((t.meta["view"]["y"], t.meta["view"]["x"]) for t in tiles) == [(256, 512), (256, 768), (512, 512),
                                                                              (512, 768)]


def test_thumbnail_and_stain_normalisation(slide):
    path, _ = slide
    tiles = SlideTiles(tile_size=128, target_mpp=0.5, max_tiles=3, thumbnail=True, stain_normalize=True)(path)
    assert tiles[0].meta["view"] == {"kind": "thumbnail", "level": 2} and tuple(tiles[0].shape) == (3, 256, 256)
    assert len(tiles) == 3 and all(t.meta["view"]["kind"] == "tile" for t in tiles[1:])
    raw = SlideTiles(tile_size=128, target_mpp=0.5, max_tiles=2)(path)
    assert tiles[1].meta["view"] == raw[0].meta["view"]
    assert not np.array_equal(tiles[1].numpy(), raw[0].numpy()) and tiles[1].dtype == raw[0].dtype


def test_thumbnail_counts_against_the_view_budget(slide):
    path, _ = slide
    one = SlideTiles(tile_size=128, target_mpp=0.5, max_tiles=1, thumbnail=True)(path)
    assert [t.meta["view"]["kind"] for t in one] == ["thumbnail"]
    two = SlideTiles(tile_size=128, target_mpp=0.5, max_tiles=2, thumbnail=True)(path)
    assert [t.meta["view"]["kind"] for t in two] == ["thumbnail", "tile"]
    out = MedicalImageToPixels(image_size=32, token_budget=576, thumbnail=True, tile_size=128, target_mpp=0.5)(path)
    assert out["pixel_values"].shape == (1, 3, 32, 32) and out["views"] == [{"kind": "thumbnail", "level": 2}]


def test_pipeline_on_slide(slide):
    path, _ = slide
    out = MedicalImageToPixels(image_size=64, max_views=2, tile_size=128, target_mpp=1.0, min_tissue=0.5)(path)
    assert out["modality"] == "PATHOLOGY" and out["pixel_values"].shape == (2, 3, 64, 64)
    assert out["views"][0]["level"] == 2 and out["source"] == "slide.tif" and out["window"] is None


def test_level_too_large_for_tifffile_backend(slide):
    path, _ = slide
    with pytest.raises(SlideError, match="max_level_pixels"):
        SlideTiles(tile_size=128, target_mpp=0.25, max_level_pixels=1000, backend="tifffile")(path)
