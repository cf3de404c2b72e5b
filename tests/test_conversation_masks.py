# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Label masks of every built-in template against literal token lists, with a tiny word-level tokenizer.

The tokenizer splits like sentencepiece (a space becomes ``▁`` at the start of the next piece; ``<s>``,
``</s>`` and ``<image>`` are special), so the separators of each template are visible in the tokens: the
``▁USER:`` after ``</s>`` in ``vicuna_v1`` is the space of the reference's ``"</s> "``, the lone ``▁`` before
``</s>`` in ``mistral_instruct`` the space of ``" A1 </s>"``. Each expected sequence is written by hand, one
entry per output id (BOS and every image-token copy included); a ``*`` marks a supervised token (its label
is its id; every other label is -100). The rule: only assistant answers and their end token are supervised.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from monai_llava_med.conversation import (
    IGNORE_INDEX,
    build_generation_inputs,
    list_templates,
    prepare_tokenizer,
    tokenize_conversation,
)

CONV = [
    ("user", "<image>\nIs there a fracture?"),
    ("assistant", "Yes"),
    ("user", "Where?"),
    ("assistant", "Left rib"),
]
# conv_vicuna_v1's system prompt, as sentencepiece-style pieces
VICUNA_SYS = [
    "A", "▁chat", "▁between", "▁a", "▁curious", "▁user", "▁and", "▁an", "▁artificial", "▁intelligence",
    "▁assistant.", "▁The", "▁assistant", "▁gives", "▁helpful,", "▁detailed,", "▁and", "▁polite", "▁answers",
    "▁to", "▁the", "▁user's", "▁questions.",
]  # fmt: skip
IMG = ["<image>", "<image>"]  # num_image_tokens=2

# template -> (turns, expected tokens); "*" = supervised
EXPECTED = {
    "mistral_instruct": (
        CONV,
        ["<s>", "[INST]", "▁", *IMG, "\nIs", "▁there", "▁a", "▁fracture?", "▁[/INST]", "*▁Yes", "*▁", "*</s>",
         "[INST]", "▁Where?", "▁[/INST]", "*▁Left", "*▁rib", "*▁", "*</s>"],
    ),
    "vicuna_v1": (
        CONV,
        ["<s>", *VICUNA_SYS, "▁USER:", "▁", *IMG, "\nIs", "▁there", "▁a", "▁fracture?", "▁ASSISTANT:", "*▁Yes",
         "*</s>", "▁USER:", "▁Where?", "▁ASSISTANT:", "*▁Left", "*▁rib", "*</s>"],
    ),
    "plain": (
        [("user", "Describe the image.\n<image>"), ("assistant", "Left rib")],
        ["<s>", *IMG, "*Left", "*▁rib\n"],
    ),
}  # fmt: skip

GENERATION = {
    "mistral_instruct": ["<s>", "[INST]", "▁", *IMG, "\nIs", "▁there", "▁a", "▁fracture?", "▁[/INST]"],
    "vicuna_v1": ["<s>", *VICUNA_SYS, "▁USER:", "▁", *IMG, "\nIs", "▁there", "▁a", "▁fracture?", "▁ASSISTANT:"],
    "plain": ["<s>", *IMG],
}


@pytest.fixture(scope="module")
def tok():
    # <image> is left out: prepare_tokenizer adds it as a special token
    pieces = [p.lstrip("*") for _, toks in EXPECTED.values() for p in toks if p != "<image>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<unk>", "<s>", "</s>", *pieces]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return prepare_tokenizer(fast)


def _expected(tok, pieces):
    ids, labels = [], []
    for piece in pieces:
        tid = tok.convert_tokens_to_ids(piece.lstrip("*"))
        assert tid != tok.unk_token_id, piece
        ids.append(tid)
        labels.append(tid if piece.startswith("*") else IGNORE_INDEX)
    return ids, labels


def test_every_builtin_template_is_covered():
    assert {n for n in list_templates() if not n.startswith("test_")} == set(EXPECTED) == set(GENERATION)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_label_mask_positions(tok, name):
    turns, pieces = EXPECTED[name]
    out = tokenize_conversation(turns, tok, name, num_images=1, num_image_tokens=2)
    ids, labels = _expected(tok, pieces)
    assert tok.convert_ids_to_tokens(out["input_ids"].tolist()) == [p.lstrip("*") for p in pieces]
    assert out["input_ids"].tolist() == ids
    assert out["labels"].tolist() == labels
    assert out["attention_mask"].tolist() == [1] * len(ids)


@pytest.mark.parametrize("name", sorted(GENERATION))
def test_generation_prompt_tokens(tok, name):
    ids, _ = _expected(tok, GENERATION[name])
    got = build_generation_inputs(EXPECTED[name][0][:1], tok, name, num_images=1, num_image_tokens=2)
    assert got.tolist() == ids
