# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Inputs the fuzz harness found, replayed from their seed and operations: each must now be a typed error."""

from __future__ import annotations

import pytest

from fuzz.campaign import make_pipeline
from fuzz.mutations import apply_case
from fuzz.seeds import build_seeds
from monai_llava_med.errors import LlavaMedInputError

CASES = {
    # tifffile gave a page without a shape: tiff_level_shapes raised a bare ValueError (min() of nothing)
    "tiff-page-without-shape": ("scan.tif", 0, [("insert", 0.2616627221828152, b"Z", True),
                                                ("insert", 0.017157946740384847, b"\x00", True),
                                                ("truncate", 0.2616627221828152, False)]),
    # a NaN RescaleIntercept on one slice of an axial CT series: the lazy path skipped the NaN/inf check
    "series-nan-rescale": ("series", 1, [("tag", "RescaleIntercept", "NaN")]),
}


@pytest.fixture(scope="module")
def seeds():
    return {s.name: s for s in build_seeds(0)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_found_input_is_a_typed_error_naming_the_file(tmp_path, seeds, name):
    seed_name, index, ops = CASES[name]
    seed = seeds[seed_name]
    target = seed.write(tmp_path, apply_case(seed, index, ops))
    with pytest.raises(LlavaMedInputError) as info:
        make_pipeline()(target)
    names = [target.name, *(p.name for p in target.iterdir())] if target.is_dir() else [target.name]
    assert any(n in str(info.value) for n in names)
