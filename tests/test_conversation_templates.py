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

# LLaVA-Med's conv_vicuna_v1 system prompt (v1, "curious user"; v0 said "curious human")
VICUNA_SYS = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# Every built-in template, each with literal renderings written by hand from the reference code
# (REFERENCE.md and issue 10): (turns, kwargs, expected string).
LITERAL_RENDERINGS = {
    "mistral_instruct": [
        ([("user", "<image>\nWhat is shown?")], {}, "[INST] <image>\nWhat is shown? [/INST]"),
        (
            [("user", "<image>\nWhat is shown?"), ("assistant", "A chest X-ray.")],
            {},
            "[INST] <image>\nWhat is shown? [/INST] A chest X-ray. </s>",
        ),
        (
            [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"}],
            {},
            "[INST] <image>\nQ1 [/INST] A1 </s>[INST] Q2 [/INST]",
        ),
        (
            [("user", "<image>\nQ1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")],
            {},
            "[INST] <image>\nQ1 [/INST] A1 </s>[INST] Q2 [/INST] A2 </s>",
        ),
        ([("user", "Q")], {"system": "Be brief."}, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nQ [/INST]"),
    ],
    "vicuna_v1": [
        (
            [("user", "<image>\nIs there a fracture?")],
            {},
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions. USER: <image>\nIs there a fracture? ASSISTANT:",
        ),
        (
            [
                ("user", "<image>\nWhat modality is this?"),
                ("assistant", "CT"),
                ("user", "Is there a lesion?"),
                ("assistant", "Yes"),
            ],
            {},
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions. USER: <image>\nWhat modality is this? "
            "ASSISTANT: CT</s> USER: Is there a lesion? ASSISTANT: Yes</s>",
        ),
        (
            [("user", "<image>\nQ1"), ("assistant", "A1"), ("user", "Q2")],
            {"system": "S"},
            "S USER: <image>\nQ1 ASSISTANT: A1</s> USER: Q2 ASSISTANT:",
        ),
        # the reference strips every message (separator style TWO)
        (
            [("user", "  <image>\nQ1  "), ("assistant", " A1 \n"), ("user", " Q2 ")],
            {"system": "S"},
            "S USER: <image>\nQ1 ASSISTANT: A1</s> USER: Q2 ASSISTANT:",
        ),
        # an empty system prompt leaves no leading space (the reference strips the string)
        ([("user", "Q")], {"system": ""}, "USER: Q ASSISTANT:"),
    ],
    "plain": [
        (
            [("user", "Describe the figure.\n<image>"), ("assistant", "Axial CT of the abdomen.")],
            {"num_images": 1},
            "<image>Axial CT of the abdomen.\n",
        ),
        ([("user", "<image>"), ("assistant", "A")], {}, "<image>A\n"),
    ],
}


@pytest.mark.parametrize(
    "name, turns, kwargs, expected",
    [(name, *case) for name, cases in LITERAL_RENDERINGS.items() for case in cases],
)
def test_template_renders_reference_string(name, turns, kwargs, expected):
    assert render_conversation(turns, name, **kwargs) == expected


def test_every_builtin_template_has_literal_renderings():
    builtin = {n for n in list_templates() if not n.startswith("test_")}
    assert builtin == set(LITERAL_RENDERINGS)


def test_vicuna_system_is_v1_text():
    assert get_template("vicuna_v1").system == VICUNA_SYS


def test_generation_prompt_flag_checks_last_turn():
    with pytest.raises(TemplateError, match="ends with a user turn"):
        render_conversation([("user", "Q"), ("assistant", "A")], "vicuna_v1", add_generation_prompt=True)
    s = render_conversation(
        [("user", "Q"), ("assistant", "A"), ("user", "R")], "vicuna_v1", system="S", add_generation_prompt=True
    )
    assert s == "S USER: Q ASSISTANT: A</s> USER: R ASSISTANT:"


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
