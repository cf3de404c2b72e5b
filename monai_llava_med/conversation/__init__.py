# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Conversation templates, tokenisation with label masks, and tokenizer loading/building.

Names are imported on first use (PEP 562 ``__getattr__`` via ``lazy_loader``), so importing the package
costs nothing until one of them is needed.
"""

from __future__ import annotations

import lazy_loader as _lazy

from monai_llava_med.constants import IGNORE_INDEX

_SUBMODULE_ATTRS = {
    "negation": [
        "AUXILIARIES", "NEGATION_WORDS", "PROBE_PREFIX", "negate_question", "negation_refusal", "paired_conversation",
        "probed_question",
    ],
    "templates": [
        "IMAGE_PLACEHOLDER", "ConversationTemplate", "Segment", "Turn", "get_template", "list_templates",
        "normalize_turns", "place_image_placeholders", "register_template", "render_conversation", "render_segments",
    ],
    "tokenization": ["MAX_QUESTION_CHARS", "build_generation_inputs", "build_prompt", "tokenize_conversation"],
    "tokenizer": [
        "IMAGE_TOKEN", "PAD_TOKEN", "build_bpe_tokenizer", "image_token_id_of", "load_tokenizer", "prepare_tokenizer",
    ],
}

__getattr__, _lazy_dir, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = ["IGNORE_INDEX", *_lazy_all]


def __dir__() -> list[str]:
    """The public names, eager and lazy."""
    return list(__all__)
