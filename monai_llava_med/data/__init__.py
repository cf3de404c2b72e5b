# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Data: LLaVA-Med JSON and VQA benchmark records, a lazy MONAI data set, synthetic phantoms, collation and
length-grouped sampling."""

from __future__ import annotations

from .collate import LlavaMedCollator
from .datasets import ImageLoader, LlavaMedDataset, estimate_lengths, pixels_from_loader_output
from .image_loading import PILImageToPixels, read_rgb
from .llava_json import load_llava_med_json, parse_llava_record, read_json_records, resolve_image_path
from .phantom import PhantomVQADataset, generate_phantom, write_phantom_dataset
from .records import ANSWER_TYPES, ConversationRecord, VQARecord, closed_answer_type
from .samplers import LengthGroupedBatchSampler
from .vqa_benchmarks import answer_to_str, load_pathvqa, load_slake, load_vqa_rad, safe_load_pickle

__all__ = [
    "ANSWER_TYPES",
    "ConversationRecord",
    "VQARecord",
    "closed_answer_type",
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
    "answer_to_str",
    "safe_load_pickle",
    "PhantomVQADataset",
    "generate_phantom",
    "write_phantom_dataset",
    "LlavaMedCollator",
    "LengthGroupedBatchSampler",
]
