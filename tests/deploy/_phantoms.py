# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Inputs of the MONAI Deploy tests: phantom DICOM series, the shipped demo model, the questions asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monai_llava_med.data.phantom import generate_phantom, write_dicom

__all__ = ["MODEL_DIR", "QUESTIONS", "phantom_series"]

MODEL_DIR = Path(__file__).resolve().parents[2] / "bundles" / "llava_med" / "models"
QUESTIONS = ["Is there a lesion anywhere in the scan?", "How many lesions are there?", "Is this an MRI image?"]


def phantom_series(out: Path, seed: int, modality: str) -> list[Path]:
    """Write a small 3-D phantom as a conformant DICOM series in ``out`` and return its files."""
    case = generate_phantom(np.random.default_rng(seed), size=48, ndim=3, depth=12, modality=modality,
                            num_lesions=1, case_id=f"deploy-{seed}")
    return write_dicom(case, out, seed=seed)
