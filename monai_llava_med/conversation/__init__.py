# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Conversation templates, tokenisation with label masks, and tokenizer loading/building."""

from __future__ import annotations

from .templates import (
    IMAGE_PLACEHOLDER,
    ConversationTemplate,
    Segment,
    Turn,
    get_template,
    list_templates,
    normalize_turns,
    place_image_placeholders,
    register_template,
    render_conversation,
    render_segments,
)
from .tokenization import IGNORE_INDEX, build_generation_inputs, tokenize_conversation
from .tokenizer import IMAGE_TOKEN, PAD_TOKEN, build_bpe_tokenizer, image_token_id_of, load_tokenizer, prepare_tokenizer

__all__ = [
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN",
    "PAD_TOKEN",
    "IGNORE_INDEX",
    "ConversationTemplate",
    "Segment",
    "Turn",
    "get_template",
    "list_templates",
    "normalize_turns",
    "place_image_placeholders",
    "register_template",
    "render_conversation",
    "render_segments",
    "tokenize_conversation",
    "build_generation_inputs",
    "build_bpe_tokenizer",
    "image_token_id_of",
    "load_tokenizer",
    "prepare_tokenizer",
]
