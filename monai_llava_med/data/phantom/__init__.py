# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Synthetic phantom VQA: seeded 2-D/3-D phantoms, questions with answers from the label map, DICOM/NIfTI
export, and an in-memory data set. ``python -m monai_llava_med.data.phantom --out DIR --n N --seed S``
writes a data set to disk.
"""

from __future__ import annotations

from .dataset import PhantomVQADataset, phantom_sample, phantom_to_pixels
from .export import split_sizes, write_phantom_dataset
from .generator import MODALITIES, SPLIT_CODES, Lesion, PhantomCase, case_rng, generate_phantom
from .questions import FAMILIES, LesionFinding, PhantomQA, findings_from_label_map, make_questions, sample_question
from .writers import nifti_affine, window_to_uint8, write_dicom, write_nifti, write_png

__all__ = [
    "MODALITIES",
    "SPLIT_CODES",
    "FAMILIES",
    "Lesion",
    "PhantomCase",
    "LesionFinding",
    "PhantomQA",
    "PhantomVQADataset",
    "case_rng",
    "generate_phantom",
    "findings_from_label_map",
    "make_questions",
    "sample_question",
    "phantom_sample",
    "phantom_to_pixels",
    "split_sizes",
    "write_phantom_dataset",
    "nifti_affine",
    "window_to_uint8",
    "write_dicom",
    "write_nifti",
    "write_png",
]
