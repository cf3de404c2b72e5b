# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Paired probes: the negation rule on many question shapes, refusals, and the predictor's paired answers (same
generate call, contradiction abstains, probes off changes nothing) on the demo model and on tiny models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from monai_llava_med.conversation import (
    AUXILIARIES,
    PROBE_PREFIX,
    negate_question,
    negation_refusal,
    paired_conversation,
    probed_question,
)
from monai_llava_med.data.phantom import write_vqa_datalist
from monai_llava_med.engines import LlavaMedPredictor, PrepareVqaItem, collate_vqa
from monai_llava_med.trust import REASON_CONTRADICTION, REASON_IMAGE_INDEPENDENT, yes_no_token_ids

DEMO = Path(__file__).resolve().parents[1] / "bundles" / "llava_med" / "models"

SUBJECTS = ["there", "the left kidney", "this", "it", "the lesion in segment 4", "the patient's heart",
            "these findings", "a 5.5 cm mass", "the image", "both lungs"]
PREDICATES = ["a lesion in this image", "enlarged", "show a fracture", "been resected", "visible on the CT scan",
              "consistent with pneumonia", "larger than 3 cm", "abnormal", "present", "in the upper lobe"]
_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=9).filter(
    lambda w: w not in {"no", "not", "or", "nor", "none", "never", "nothing", "nobody", "nowhere", "neither",
                        "cannot"} and not w.endswith("nt"))
_aux = st.sampled_from(AUXILIARIES).flatmap(lambda a: st.sampled_from([a, a.capitalize(), a.upper()]))
_subject = st.one_of(st.sampled_from(SUBJECTS), st.lists(_words, min_size=1, max_size=4).map(" ".join))
_predicate = st.one_of(st.sampled_from(PREDICATES), st.lists(_words, min_size=1, max_size=6).map(" ".join))


def _yes_no(text: str | None) -> str | None:
    first = re.findall(r"[a-z]+", (text or "").lower())[:1]
    return first[0] if first and first[0] in ("yes", "no") else None


@settings(max_examples=300, deadline=None)
@given(_aux, _subject, _predicate, st.sampled_from(["?", "", " ?", "??"]))
def test_every_auxiliary_question_gets_one_grammatical_probe(aux, subject, predicate, end):
    question = f"{aux} {subject} {predicate}{end}"
    probe = negate_question(question)
    assert probe is not None, negation_refusal(question)
    body = f"{aux} {subject} {predicate}"
    assert probe == f'Is "no" the correct answer to this question: {body}?'
    assert probe.count("?") == 1 and probe.endswith("?")
    assert probed_question(probe) == body + "?"  # the question is kept verbatim after the colon
    assert negate_question(probe) is None and negation_refusal(probe) == "already negative"  # never probed twice


@settings(max_examples=100, deadline=None)
@given(_aux, _subject, _predicate, st.sampled_from(["not", "no", "never", "nor", "n't"]))
def test_a_question_that_is_already_negative_is_refused(aux, subject, predicate, negation):
    question = f"{aux}{negation} {subject} {predicate}?" if negation == "n't" else f"{aux} {subject} {negation} {predicate}?"
    assert negate_question(question) is None
    assert negation_refusal(question) == "already negative"


@pytest.mark.parametrize("question, why", [
    ("What imaging modality is this image?", "not a yes/no question"),
    ("How many lesions are there?", "not a yes/no question"),
    ("Describe the image.", "not a yes/no question"),
    ("In this image, is there a lesion?", "not a yes/no question"),
    ("<image>\nIs there a lesion?", "not a yes/no question"),
    ("", "not a yes/no question"),
    ("Isn't the kidney enlarged?", "already negative"),
    ("Is there no lesion?", "already negative"),
    ("Is this a CT or an MR image?", "an alternative question"),
    ("Is the lesion on the left or the right side?", "an alternative question"),
    ("Is there a lesion? Where is it?", "more than one sentence"),
    ("Is there a lesion. Is it large?", "more than one sentence"),
    ("Is there a lesion; is it large?", "more than one sentence"),
])
def test_questions_whose_negation_would_be_ambiguous_are_refused(question, why):
    assert negation_refusal(question) == why
    assert negate_question(question) is None


def test_the_last_user_turn_is_negated_in_its_conversation():
    turns = [("user", "Describe the image."), ("assistant", "A phantom."), ("user", "Is there a lesion?")]
    negated, text = paired_conversation(turns)
    assert text == PROBE_PREFIX + "Is there a lesion?"
    assert [(t.role, t.text) for t in negated] == [*turns[:2], ("user", text)]
    assert paired_conversation([("user", "Is there a lesion?"), ("assistant", "No.")])[1] == text
    assert paired_conversation("What is shown?") is None


def _fields(result: dict) -> dict:
    return {k: result[k] for k in ("answer", "confidence", "image_reliance", "abstained", "reason", "gate_distance")}


@pytest.fixture(scope="module")
def demo_items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe_phantoms")
    datalist = write_vqa_datalist(folder, 2, seed=31, split="test")
    return [{**it, "image": str(folder / it["image"])} for it in json.loads(datalist.read_text())]


def test_demo_model_probes_share_the_generate_call_and_abstain_on_contradictions(demo_items):
    plain = LlavaMedPredictor.from_pretrained(DEMO, device="cpu", max_new_tokens=6)
    probed = LlavaMedPredictor.from_pretrained(DEMO, device="cpu", max_new_tokens=6, paired_probes=True)
    rows = []  # batch rows of every multi-token pass of the language model (prefills and the neutral-image pass)

    def record(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            rows.append(embeds.shape[0])

    hook = probed.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with_probes = probed.ask_batch(demo_items, batch_size=len(demo_items))
    finally:
        hook.remove()
    without = plain.ask_batch(demo_items, batch_size=len(demo_items))
    n_closed = sum(negate_question(it["question"]) is not None for it in demo_items)
    assert n_closed >= 10
    # one generate (probes as extra rows): each phantom's prompt part up to its image once (one pass, a row per
    # phantom), then every row's question on top; then the neutral-image pass: the shared part up to the image once
    # (with neutral images every question follows the same image block), each row's question and answer on top of it
    n_images = len({it["image"] for it in demo_items})
    assert n_images == 2
    assert rows == [n_images, len(demo_items) + n_closed, 1, len(demo_items) + n_closed]
    contradictions = 0
    for item, got, want in zip(demo_items, with_probes, without):
        assert "paired_answer" not in want and "paired_question" not in want  # probes off: the fields of before
        assert got["paired_question"] == negate_question(item["question"])
        if got["paired_question"] is None:
            assert got["paired_answer"] is None and _fields(got) == pytest.approx(_fields(want), abs=1e-5)
            continue
        assert isinstance(got["paired_answer"], str) and got["paired_answer"]
        same = {k: v for k, v in _fields(got).items() if k not in ("abstained", "reason")}
        assert same == pytest.approx({k: v for k, v in _fields(want).items() if k not in ("abstained", "reason")},
                                     abs=1e-5)
        clash = _yes_no(got["answer"]) is not None and _yes_no(got["answer"]) == _yes_no(got["paired_answer"])
        if want["reason"] is not None:  # an earlier reason stands
            assert got["reason"] == want["reason"]
        else:
            assert got["reason"] == (REASON_CONTRADICTION if clash else None)
            contradictions += clash
        assert got["abstained"] == (got["reason"] is not None)
    assert contradictions >= 1  # the demo model answers some phantoms' question and its negation alike
    first = next(r for r in with_probes if r["paired_question"])
    alone = plain.ask(first["image"], first["paired_question"])
    assert alone["answer"] == first["paired_answer"]  # the extra row answers like a separate question


def _answers_yes_to_everything(model, tokenizer):
    """Zero every layer's output projections, so the last position's hidden state is the embedding of the prompt's
    last token (the template's assistant marker, the same for every question), then point the "yes" row of the
    output head at that state: the model then says "yes" to any question about any image."""
    lm = model.language_model
    prompt = PrepareVqaItem(tokenizer, model, raise_errors=True)({"image": None, "question": "Is it?"})["input_ids"]
    with torch.no_grad():
        for layer in lm.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hidden = lm.model(input_ids=prompt[None]).last_hidden_state[0, -1]
        yes = yes_no_token_ids(tokenizer)[0][0]
        lm.lm_head.weight[yes] = 50 * hidden / hidden.norm()
    return model


@pytest.fixture()
def yes_no_tokenizer():
    """A tiny byte-level BPE whose vocabulary has "yes" and "no" as whole tokens (the shared tiny one does not)."""
    from monai_llava_med.conversation import build_bpe_tokenizer

    corpus = ["Is there a lesion? yes", "Is it enlarged? no", "yes no Yes No", "What is shown? A phantom."]
    return build_bpe_tokenizer(corpus * 20, vocab_size=300)


def test_a_model_that_ignores_its_input_contradicts_itself(yes_no_tokenizer):
    from monai_llava_med.networks import LlavaMedConfig, build_llava_med

    tiny_tokenizer = yes_no_tokenizer
    assert all(yes_no_token_ids(tiny_tokenizer))
    torch.manual_seed(0)
    config = LlavaMedConfig.tiny(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    model = _answers_yes_to_everything(build_llava_med(config).eval(), tiny_tokenizer)
    probed = LlavaMedPredictor(model, tiny_tokenizer, max_new_tokens=1, paired_probes=True)
    plain = LlavaMedPredictor(model, tiny_tokenizer, max_new_tokens=1)
    text = probed.ask(None, "Is there a lesion?")
    assert _yes_no(text["answer"]) == "yes" and _yes_no(text["paired_answer"]) == "yes"
    assert text["abstained"] and text["reason"] == REASON_CONTRADICTION
    assert plain.ask(None, "Is there a lesion?")["reason"] is None
    image = probed.ask(get_testdata_file("CT_small.dcm"), "Does the image show a lesion?")
    assert _yes_no(image["paired_answer"]) == "yes"
    assert image["reason"] == REASON_IMAGE_INDEPENDENT  # the earlier check names the reason
    open_question = probed.ask(None, "What is shown?")
    assert open_question["paired_question"] is None and open_question["paired_answer"] is None
    assert open_question["reason"] is None


def test_probe_rows_follow_the_item_rows_with_the_same_images(tiny_model, tiny_tokenizer):
    prepare = PrepareVqaItem(tiny_tokenizer, tiny_model, paired_probes=True)
    items = [prepare({"image": get_testdata_file("CT_small.dcm"), "question": q})
             for q in ("What is shown?", "Is there a lesion?")]
    batch = collate_vqa(items, pad_token_id=tiny_tokenizer.pad_token_id)
    assert batch["probe_of"] == [1] and batch["input_ids"].shape[0] == 3
    assert torch.equal(batch["pixel_values"][2], batch["pixel_values"][1])
    plain = collate_vqa([PrepareVqaItem(tiny_tokenizer, tiny_model)(it) for it in
                         ({"image": get_testdata_file("CT_small.dcm"), "question": "Is there a lesion?"},)])
    assert "probe_of" not in plain and plain["input_ids"].shape[0] == 1


def test_probes_need_the_trust_fields(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="trust"):
        LlavaMedPredictor(tiny_model, tiny_tokenizer, trust=False, paired_probes=True)
