# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Synthetic phantom VQA: seeded 2-D/3-D phantoms, questions with answers from the label map (and, for
volumes, questions only the whole scan answers), balanced evaluation sets, DICOM/NIfTI export, and an
in-memory data set. ``python -m monai_llava_med.data.phantom --out DIR --n N --seed S``
writes a data set to disk.

Names are imported on first use (PEP 562 ``__getattr__`` via ``lazy_loader``), so importing the package
costs nothing until one of them is needed.
"""

from __future__ import annotations

import lazy_loader as _lazy

_SUBMODULE_ATTRS = {
    "balance": ["balanced_question_set"],
    "dataset": ["PhantomVQADataset", "phantom_sample", "phantom_to_pixels"],
    "export": ["split_sizes", "write_phantom_dataset", "write_volume_vqa_datalist", "write_vqa_datalist"],
    "generator": [
        "LESION_Z_MODES", "MODALITIES", "SPLIT_CODES", "Lesion", "PhantomCase", "case_rng", "central_slices",
        "generate_phantom",
    ],
    "probe_sets": ["OUT_OF_DOMAIN_SETS", "PROBE_SETS", "write_probe_datalist"],
    "questions": [
        "FAMILIES", "LesionFinding", "PhantomQA", "findings_from_label_map", "make_questions", "sample_question",
    ],
    "sampling": [
        "DEFAULT_FAMILY_WEIGHTS", "DEFAULT_VOLUME_FAMILY_WEIGHTS", "family_probabilities", "presence_agreement",
        "weighted_questions", "weighted_volume_questions",
    ],
    "volume_questions": [
        "LARGEST_MARGIN", "VOLUME_FAMILIES", "VolumeFinding", "clear_largest", "index_to_lps",
        "make_volume_questions", "volume_findings",
    ],
    "writers": [
        "INSTANCE_ORDERS", "lps_affine", "nifti_affine", "window_to_uint8", "write_dicom", "write_nifti", "write_png",
    ],
}

__getattr__, __dir__, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = list(_lazy_all)
