# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Tokenisation: label masks, image-token expansion, truncation, generation prompts, tokenizer loading."""

from __future__ import annotations

import io
import json
import logging

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from monai_llava_med.conversation import (
    IGNORE_INDEX,
    build_bpe_tokenizer,
    build_generation_inputs,
    image_token_id_of,
    load_tokenizer,
    prepare_tokenizer,
    tokenize_conversation,
)
from monai_llava_med.errors import CheckpointError, TemplateError

CORPUS = ["Is there a lesion on the left side? yes no", "The chest radiograph shows no acute findings."] * 20
CONV = [
    ("user", "<image>\nIs there a lesion?"),
    ("assistant", "yes"),
    ("user", "Which side?"),
    ("assistant", "the left side"),
]


@pytest.fixture(scope="module")
def bpe():
    return build_bpe_tokenizer(CORPUS, vocab_size=400, min_frequency=1)


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    """A folder in the released LLaVA-Med layout: sentencepiece tokenizer.model + LlamaTokenizer config."""
    d = tmp_path_factory.mktemp("sp")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS + ["[INST] What [/INST]"] * 5), model_writer=buf, vocab_size=300,
        model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
        minloglevel=2, hard_vocab_limit=False,
    )
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    cfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "add_bos_token": True, "add_eos_token": False, "legacy": False, "model_max_length": 2048}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def _groups(labels):
    """Contiguous runs of supervised positions."""
    runs, cur = [], []
    for i, lab in enumerate(labels):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def test_labels_supervise_exactly_answers_and_eos(bpe):
    out = tokenize_conversation(CONV, bpe, num_images=1, num_image_tokens=5)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    assert out["attention_mask"].tolist() == [1] * len(ids)
    runs = _groups(labels)
    assert len(runs) == 2
    texts = [bpe.decode([ids[i] for i in r]) for r in runs]
    assert texts == [" yes </s>", " the left side </s>"]
    for r in runs:
        assert [labels[i] for i in r] == [ids[i] for i in r]
        assert ids[r[-1]] == bpe.eos_token_id
    # the unsupervised part is the prompt, with BOS first and EOS never as text pieces
    assert ids[0] == bpe.bos_token_id
    assert ids.count(bpe.eos_token_id) == 2
    n_sup = sum(len(bpe(f" {a} ", add_special_tokens=False)["input_ids"]) + 1 for a in ("yes", "the left side"))
    assert sum(lab != IGNORE_INDEX for lab in labels) == n_sup


def test_vicuna_and_plain_masks(bpe):
    out = tokenize_conversation(CONV, bpe, "vicuna_v1", num_images=1, num_image_tokens=2)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    assert [bpe.decode([ids[i] for i in r]) for r in _groups(labels)] == [" yes</s>", " the left side</s>"]
    plain = [("user", "<image>"), ("assistant", "A CT scan.")]
    out = tokenize_conversation(plain, bpe, "plain", num_images=1, num_image_tokens=3)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    img = image_token_id_of(bpe)
    assert ids[:4] == [bpe.bos_token_id, img, img, img]
    assert [bpe.decode([ids[i] for i in r]) for r in _groups(labels)] == ["A CT scan.\n"]


@pytest.mark.parametrize("placeholders", [1, 3])
def test_image_token_expansion(bpe, placeholders):
    q = "<image>" * placeholders + "\nCompare the views."
    out = tokenize_conversation([("user", q), ("assistant", "same")], bpe, num_images=3, num_image_tokens=7)
    ids, labels = out["input_ids"], out["labels"]
    img = image_token_id_of(bpe)
    pos = (ids == img).nonzero().flatten()
    assert len(pos) == 21
    assert (pos[1:] - pos[:-1] == 1).all()  # 3 consecutive blocks of 7
    assert (labels[pos] == IGNORE_INDEX).all()
    # an override id from the model config replaces the tokenizer's id
    turns = [("user", q), ("assistant", "same")]
    out2 = tokenize_conversation(turns, bpe, num_images=3, num_image_tokens=7, image_token_id=-200)
    assert int((out2["input_ids"] == -200).sum()) == 21 and int((out2["input_ids"] == img).sum()) == 0


def test_zero_images_text_only(bpe):
    out = tokenize_conversation([("user", "Hi"), ("assistant", "no")], bpe, num_images=0)
    assert int((out["input_ids"] == image_token_id_of(bpe)).sum()) == 0
    with pytest.raises(TemplateError, match="no image"):
        tokenize_conversation([("user", "<image>\nHi"), ("assistant", "no")], bpe, num_images=0)


@pytest.mark.parametrize("template", ["mistral_instruct", "vicuna_v1"])
def test_generation_prompt_is_training_prefix(bpe, template):
    full = tokenize_conversation(CONV, bpe, template, num_images=1, num_image_tokens=4)
    ids, labels = full["input_ids"].tolist(), full["labels"].tolist()
    first_answer = _groups(labels)[0][0]
    gen = build_generation_inputs(CONV[:1], bpe, template, num_images=1, num_image_tokens=4).tolist()
    assert gen == ids[:first_answer]
    second = _groups(labels)[1][0]
    gen2 = build_generation_inputs(CONV[:3], bpe, template, num_images=1, num_image_tokens=4).tolist()
    assert gen2 == ids[:second]
    with pytest.raises(TemplateError, match="ends with a user turn"):
        build_generation_inputs(CONV[:2], bpe, template)


def test_truncation_drops_rounds_then_cuts_text(bpe, caplog):
    full = tokenize_conversation(CONV, bpe, num_images=1, num_image_tokens=10, max_length=None)
    first_round_len = _groups(full["labels"].tolist())[0][-1] + 1
    with caplog.at_level(logging.WARNING):
        short = len(full["input_ids"]) - 1
        out = tokenize_conversation(CONV, bpe, num_images=1, num_image_tokens=10, max_length=short, record_id="r1")
    assert out["input_ids"].tolist() == full["input_ids"][:first_round_len].tolist()
    assert "r1: dropped 1 of 2 conversation rounds" in caplog.text
    # a single round too long: its answer text is cut, image tokens all kept
    long = [("user", "<image>\nDescribe."), ("assistant", "word " * 50)]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = tokenize_conversation(long, bpe, num_images=2, num_image_tokens=10, max_length=40)
    assert len(out["input_ids"]) == 40
    assert int((out["input_ids"] == image_token_id_of(bpe)).sum()) == 20
    assert (out["labels"] != IGNORE_INDEX).any()
    assert "cut the text of the last kept round" in caplog.text


def test_truncation_never_cuts_images(bpe):
    with pytest.raises(TemplateError, match="image tokens alone need"):
        tokenize_conversation(CONV, bpe, num_images=2, num_image_tokens=30, max_length=50, record_id="r2")
    with pytest.raises(TemplateError, match="no answer token would be left"):
        tokenize_conversation(CONV, bpe, num_images=1, num_image_tokens=30, max_length=37)
    with pytest.raises(TemplateError, match="more than max_length"):
        build_generation_inputs("<image>\nQ", bpe, num_images=1, num_image_tokens=30, max_length=20)


def test_tokenizer_without_image_token_is_rejected():
    core = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    with pytest.raises(CheckpointError, match="prepare_tokenizer"):
        tokenize_conversation([("user", "<image> a"), ("assistant", "a")], tok, num_images=1)


def test_prepare_tokenizer_pad_rules():
    core = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, unk_token="<unk>"))
    with_unk = prepare_tokenizer(PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>"))
    assert with_unk.pad_token == "<unk>" and with_unk.pad_token_id == 0
    assert image_token_id_of(with_unk) == 4 and len(with_unk) == 5
    assert len(prepare_tokenizer(with_unk)) == 5  # idempotent
    core2 = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "a": 2}, unk_token="a"))
    no_unk = prepare_tokenizer(PreTrainedTokenizerFast(tokenizer_object=core2, eos_token="</s>"))
    assert no_unk.pad_token == "<pad>" and no_unk.pad_token_id == 4 and image_token_id_of(no_unk) == 3


def test_released_layout_sentencepiece(sp_dir):
    tok = load_tokenizer(sp_dir)
    assert tok.is_fast and tok.pad_token == "<unk>"
    assert image_token_id_of(tok) == 300  # = sentencepiece vocab size, like 32000 for the release
    out = tokenize_conversation(CONV, tok, num_images=1, num_image_tokens=3)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    runs = _groups(labels)
    assert len(runs) == 2 and all(ids[r[-1]] == tok.eos_token_id for r in runs)
    assert ids.count(tok.eos_token_id) == 2 and ids[0] == tok.bos_token_id
    assert tok.decode([ids[i] for i in runs[1]], skip_special_tokens=True).strip() == "the left side"
    gen = build_generation_inputs(CONV[:1], tok, num_images=1, num_image_tokens=3).tolist()
    assert gen == ids[: runs[0][0]]


def test_bpe_save_load_roundtrip(bpe, tmp_path):
    bpe.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    text = "[INST] <image>\nIs there a lesion? [/INST] yes </s>"
    assert again(text)["input_ids"] == bpe(text)["input_ids"]
    assert image_token_id_of(again) == image_token_id_of(bpe)
    assert again.pad_token_id == bpe.pad_token_id == 0
    assert (again.bos_token_id, again.eos_token_id, again.unk_token_id) == (1, 2, 0)
    text = "Any text, even émojis ✓"
    assert again.decode(again(text, add_special_tokens=False)["input_ids"]) == text


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot load"):
        load_tokenizer(tmp_path)
