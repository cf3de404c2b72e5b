# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Data: LLaVA-Med JSON and VQA benchmark records, a lazy MONAI data set, synthetic phantoms, collation and
length-grouped sampling.

Names are imported on first use (PEP 562 ``__getattr__`` via ``lazy_loader``), so importing the package
costs nothing until one of them is needed.
"""

from __future__ import annotations

import lazy_loader as _lazy

_SUBMODULE_ATTRS = {
    "collate": ["LlavaMedCollator"],
    "datasets": ["ImageLoader", "LlavaMedDataset", "estimate_lengths", "pixels_from_loader_output"],
    "image_loading": ["PILImageToPixels", "read_rgb"],
    "llava_json": ["load_llava_med_json", "parse_llava_record", "read_json_records", "resolve_image_path"],
    "phantom": ["PhantomVQADataset", "generate_phantom", "write_phantom_dataset"],
    "records": [
        "ANSWER_TYPES", "ID_KEYS", "YES_NO", "ConversationRecord", "VQARecord", "answer_to_text", "closed_answer_type",
        "question_id_of",
    ],
    "samplers": ["LengthGroupedBatchSampler"],
    "vqa_benchmarks": ["load_pathvqa", "load_slake", "load_vqa_rad", "safe_load_pickle"],
}

__getattr__, __dir__, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = list(_lazy_all)
