# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Label masks of every built-in template against literal token lists, with a tiny word-level tokenizer.

Each expected sequence is written by hand: one entry per token id of the output (BOS and every image-token
copy included), and a ``*`` in front of a token marks it supervised (its label is its id; every other label is
-100). The rule being checked is the reference's: only assistant answers and their end token are supervised.
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

WORDS = (
    "A chat between a curious user and an artificial intelligence assistant . The gives helpful , detailed "
    "polite answers to the ' s questions USER : ASSISTANT Is there fracture ? Where Yes Left rib [ INST ] [/ "
    "Describe S"
).split()

CONV = [
    ("user", "<image>\nIs there a fracture?"),
    ("assistant", "Yes"),
    ("user", "Where?"),
    ("assistant", "Left rib"),
]
VICUNA_SYS_TOKENS = (
    "A chat between a curious user and an artificial intelligence assistant . The assistant gives helpful , "
    "detailed , and polite answers to the user ' s questions ."
)

# template -> (turns, tokenize kwargs, expected tokens); <image> stands for one copy of the image id
EXPECTED = {
    "mistral_instruct": (
        CONV,
        {},
        "<s> [ INST ] <image> <image> Is there a fracture ? [/ INST ] *Yes *</s> "
        "[ INST ] Where ? [/ INST ] *Left *rib *</s>",
    ),
    "vicuna_v1": (
        CONV,
        {},
        f"<s> {VICUNA_SYS_TOKENS} USER : <image> <image> Is there a fracture ? ASSISTANT : *Yes *</s> "
        "USER : Where ? ASSISTANT : *Left *rib *</s>",
    ),
    "plain": (
        [("user", "Describe .\n<image>"), ("assistant", "Left rib")],
        {},
        "<s> <image> <image> *Left *rib",
    ),
}

GENERATION = {
    "mistral_instruct": "<s> [ INST ] <image> <image> Is there a fracture ? [/ INST ]",
    "vicuna_v1": f"<s> {VICUNA_SYS_TOKENS} USER : <image> <image> Is there a fracture ? ASSISTANT :",
    "plain": "<s> <image> <image>",
}


@pytest.fixture(scope="module")
def tok():
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<unk>", "<s>", "</s>", *WORDS]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return prepare_tokenizer(fast)


def _expected(tok, spec):
    ids, labels = [], []
    for piece in spec.split():
        sup = piece.startswith("*")
        tid = tok.convert_tokens_to_ids(piece.lstrip("*"))
        assert tid != tok.unk_token_id, piece
        ids.append(tid)
        labels.append(tid if sup else IGNORE_INDEX)
    return ids, labels


def test_every_builtin_template_is_covered():
    assert {n for n in list_templates() if not n.startswith("test_")} == set(EXPECTED) == set(GENERATION)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_label_mask_positions(tok, name):
    turns, kwargs, spec = EXPECTED[name]
    out = tokenize_conversation(turns, tok, name, num_images=1, num_image_tokens=2, **kwargs)
    ids, labels = _expected(tok, spec)
    assert out["input_ids"].tolist() == ids
    assert out["labels"].tolist() == labels
    assert out["attention_mask"].tolist() == [1] * len(ids)


@pytest.mark.parametrize("name", sorted(GENERATION))
def test_generation_prompt_tokens(tok, name):
    ids, _ = _expected(tok, GENERATION[name])
    got = build_generation_inputs(EXPECTED[name][0][:1], tok, name, num_images=1, num_image_tokens=2)
    assert got.tolist() == ids
