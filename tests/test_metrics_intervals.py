# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Binomial intervals: Wilson score intervals and the acceptance band of a documented accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from monai_llava_med.metrics import binomial_acceptance_interval, wilson_interval


def test_wilson_interval_matches_the_closed_form_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(20, 20)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_acceptance_interval_covers_95_percent_of_draws_and_rejects_an_8_point_drop():
    p, n = 0.916, 170
    low, high = binomial_acceptance_interval(p, n)
    draws = np.random.default_rng(0).binomial(n, p, size=20000) / n
    inside = float(np.mean((draws >= low) & (draws <= high)))
    assert 0.95 <= inside <= 0.99, inside
    worse = np.random.default_rng(1).binomial(n, p - 0.08, size=20000) / n
    assert float(np.mean((worse >= low) & (worse <= high))) < 0.2
