# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Exact template strings (REFERENCE.md) and template registry/validation."""

from __future__ import annotations

import pytest

from monai_llava_med.conversation import (
    ConversationTemplate,
    get_template,
    list_templates,
    register_template,
    render_conversation,
)
from monai_llava_med.errors import TemplateError

VICUNA_SYS = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def test_mistral_single_and_multi_turn_exact():
    assert render_conversation("<image>\nWhat is shown?") == "[INST] <image>\nWhat is shown? [/INST]"
    single = [("user", "<image>\nWhat is shown?"), ("assistant", "A chest X-ray.")]
    assert render_conversation(single) == "[INST] <image>\nWhat is shown? [/INST] A chest X-ray. </s>"
    multi = [
        {"from": "human", "value": "<image>\nQ1"},
        {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2"},
    ]
    assert render_conversation(multi, "mistral_instruct") == "[INST] <image>\nQ1 [/INST] A1 </s>[INST] Q2 [/INST]"


def test_vicuna_exact():
    turns = [("user", "<image>\nQ1"), ("assistant", "A1"), ("user", "Q2")]
    expected = f"{VICUNA_SYS} USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"
    assert render_conversation(turns, "vicuna_v1") == expected
    assert render_conversation(turns, "vicuna_v1", system="S") == expected.replace(VICUNA_SYS, "S")


def test_plain_drops_question_keeps_image():
    turns = [("user", "Describe the figure.\n<image>"), ("assistant", "Axial CT of the abdomen.")]
    assert render_conversation(turns, "plain", num_images=1) == "<image>Axial CT of the abdomen.\n"


def test_mistral_system_prompt_goes_inside_first_inst():
    s = render_conversation([("user", "Q")], "mistral_instruct", system="Be brief.")
    assert s == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nQ [/INST]"


def test_image_placeholder_placement():
    # trailing placeholder moved to the front, as LLaVA does
    assert render_conversation("What is this?\n<image>", num_images=1) == "[INST] <image>\nWhat is this? [/INST]"
    # missing placeholder inserted
    assert render_conversation("What is this?", num_images=3) == "[INST] <image>\nWhat is this? [/INST]"
    # one per image kept in place
    s = render_conversation("<image> then <image> compare", num_images=2)
    assert s == "[INST] <image> then <image> compare [/INST]"
    with pytest.raises(TemplateError, match="3 <image> placeholders for 2 images"):
        render_conversation("<image><image><image>", num_images=2)
    with pytest.raises(TemplateError, match="no image"):
        render_conversation("<image>\nQ", num_images=0)


@pytest.mark.parametrize(
    "turns, msg",
    [
        ([("assistant", "A")], "expected a user turn"),
        ([("user", "Q"), ("user", "Q")], "expected a assistant turn"),
        ([("robot", "Q")], "unknown role"),
        ([{"from": "human", "value": 3}], "must be strings"),
        ([], "empty conversation"),
    ],
)
def test_bad_turns_raise_template_error(turns, msg):
    with pytest.raises(TemplateError, match=msg):
        render_conversation(turns)


def test_register_and_lookup():
    assert {"mistral_instruct", "vicuna_v1", "plain"} <= set(list_templates())
    tpl = ConversationTemplate(
        name="test_chatml_like", user_format="<|user|>{content}<|end|>", assistant_prefix="<|assistant|>",
        answer_format="{content}{eos}",
    )
    register_template(tpl)
    assert get_template("test_chatml_like") is tpl
    rendered = render_conversation([("user", "Q"), ("assistant", "A")], "test_chatml_like")
    assert rendered == "<|user|>Q<|end|><|assistant|>A</s>"
    with pytest.raises(TemplateError, match="already registered"):
        register_template(tpl)
    with pytest.raises(TemplateError, match="content"):
        register_template(ConversationTemplate(name="bad_tpl", user_format="no slot"))
    with pytest.raises(TemplateError, match="unknown conversation template"):
        get_template("nope")
