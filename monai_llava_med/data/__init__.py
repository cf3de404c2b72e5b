# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Data: LLaVA-Med JSON and VQA benchmark records, a lazy MONAI data set, synthetic phantoms, collation,
length-grouped sampling and packing."""

from __future__ import annotations

from .collate import LlavaMedCollator
from .datasets import ImageLoader, LlavaMedDataset, estimate_lengths, pixels_from_loader_output
from .image_loading import PILImageToPixels, read_rgb
from .llava_json import load_llava_med_json, parse_llava_record, read_json_records, resolve_image_path
from .packing import pack_indices, pack_samples
from .phantom import PhantomVQADataset, generate_phantom, write_phantom_dataset
from .records import (
    ANSWER_TYPES,
    ID_KEYS,
    YES_NO,
    ConversationRecord,
    VQARecord,
    answer_to_text,
    closed_answer_type,
    question_id_of,
)
from .samplers import LengthGroupedBatchSampler
from .vqa_benchmarks import load_pathvqa, load_slake, load_vqa_rad, safe_load_pickle

__all__ = [
    "ANSWER_TYPES",
    "ConversationRecord",
    "VQARecord",
    "closed_answer_type",
    "ID_KEYS",
    "YES_NO",
    "answer_to_text",
    "question_id_of",
    "ImageLoader",
    "LlavaMedDataset",
    "estimate_lengths",
    "pixels_from_loader_output",
    "PILImageToPixels",
    "read_rgb",
    "load_llava_med_json",
    "parse_llava_record",
    "read_json_records",
    "resolve_image_path",
    "load_vqa_rad",
    "load_slake",
    "load_pathvqa",
    "safe_load_pickle",
    "PhantomVQADataset",
    "generate_phantom",
    "write_phantom_dataset",
    "LlavaMedCollator",
    "LengthGroupedBatchSampler",
    "pack_indices",
    "pack_samples",
]
