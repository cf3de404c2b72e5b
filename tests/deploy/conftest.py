# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Fixtures of the MONAI Deploy tests (run in .venv-deploy by ``make test-deploy``): phantom DICOM series, the
shipped demo model and one predictor loaded from it. Without the SDK (the main .venv) nothing here is collected."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from deploy._phantoms import MODEL_DIR, phantom_series

if importlib.util.find_spec("monai.deploy") is None:  # the main .venv: these tests run in .venv-deploy only
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory) -> Path:
    """A folder holding one CT phantom series (12 slices)."""
    folder = tmp_path_factory.mktemp("ct_input") / "study"
    phantom_series(folder / "ct", seed=3, modality="CT")
    return folder


@pytest.fixture(scope="session")
def predictor():
    """The demo model, loaded once on the CPU."""
    from monai_llava_med.engines import LlavaMedPredictor

    return LlavaMedPredictor.from_pretrained(MODEL_DIR, device="cpu", max_new_tokens=64)
