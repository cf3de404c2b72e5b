# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The per-answer trust fields: present and sane on every model, equal to probabilities read by hand from the
network's logits, and image reliance that is zero for a model blind to its image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from released_v15_fixture import save_plain_tokenizer, write_released_checkpoint

from monai_llava_med.data.phantom import write_vqa_datalist
from monai_llava_med.engines import LlavaMedPredictor, PrepareVqaItem
from monai_llava_med.trust import REASON_IMAGE_INDEPENDENT, REASONS, Calibration, PlattScaling

DEMO = Path(__file__).resolve().parents[1] / "bundles" / "llava_med" / "models"


def _check_fields(result: dict, with_image: bool = True) -> None:
    assert 0.0 <= result["confidence"] <= 1.0 and isinstance(result["confidence"], float)
    assert isinstance(result["abstained"], bool)
    assert result["reason"] is None if not result["abstained"] else result["reason"] in REASONS
    if with_image:
        assert isinstance(result["image_reliance"], float) and 0.0 <= result["image_reliance"] <= 1.0
    else:
        assert result["image_reliance"] is None
    assert result["gate_distance"] is None  # no calibration with a gate is loaded here


def _vocab_ids(tokenizer, word: str) -> list[int]:
    """Every vocabulary entry that decodes to ``word`` (any case, any surrounding space): found by a scan of the
    vocabulary, not by the library's helper."""
    return sorted(i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip().lower() == word)


@pytest.fixture(scope="module")
def demo():
    """The demo model with raw scores: its shipped calibration left out (the fields' mechanism is checked here)."""
    return LlavaMedPredictor.from_pretrained(DEMO, device="cpu", max_new_tokens=8, calibration=None)


def test_the_shipped_calibration_and_gate_are_loaded_and_used(phantoms):
    folder, datalist = phantoms
    item = json.loads(datalist.read_text())[0]
    calibrated = LlavaMedPredictor.from_pretrained(DEMO, device="cpu", max_new_tokens=8)
    assert calibrated.calibration is not None and calibrated.calibration.gate is not None
    result = calibrated.ask(str(folder / item["image"]), item["question"])
    assert isinstance(result["gate_distance"], float) and result["gate_distance"] >= 0.0
    assert result["gate_distance"] <= calibrated.calibration.gate.threshold  # an in-domain phantom passes the gate


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    return folder, write_vqa_datalist(folder, 3, seed=31, split="test")


def test_fields_on_the_tiny_model(tiny_model, tiny_tokenizer):
    predictor = LlavaMedPredictor(tiny_model, tiny_tokenizer, max_new_tokens=5)
    _check_fields(predictor.ask(get_testdata_file("CT_small.dcm"), "Is there a lesion?"))
    _check_fields(predictor.ask(None, "Is there a lesion?"), with_image=False)
    batch = predictor.ask_batch([{"image": get_testdata_file("MR_small.dcm"), "question": "How many?"},
                                 {"image": None, "question": "What modality?"}])
    _check_fields(batch[0])
    _check_fields(batch[1], with_image=False)
    plain = LlavaMedPredictor(tiny_model, tiny_tokenizer, max_new_tokens=5, trust=False)
    assert "confidence" not in plain.ask(None, "Is there a lesion?")


def test_fields_on_the_tiny_v15_layout_model(tiny_tokenizer, tmp_path):
    folder = tmp_path / "llava-med-v1.5-tiny"
    write_released_checkpoint(folder, lambda f: save_plain_tokenizer(tiny_tokenizer, f),
                              tiny_tokenizer.convert_tokens_to_ids("<image>"))
    predictor = LlavaMedPredictor.from_pretrained(folder, device="cpu", max_new_tokens=6)
    assert predictor.calibration is None
    for question in ("Is there a lesion in the left lung?", "What modality is this image?"):
        _check_fields(predictor.ask(get_testdata_file("CT_small.dcm"), question))
    Calibration(scaling={"closed": PlattScaling(0.5, 0.0, 3), "open": PlattScaling(0.5, 0.0, 3)}).save(folder)
    calibrated = LlavaMedPredictor.from_pretrained(folder, device="cpu", max_new_tokens=6)  # found beside the weights
    assert calibrated.calibration.scaling["open"].a == 0.5
    raw, scaled = (p.ask(get_testdata_file("CT_small.dcm"), "What modality?") for p in (predictor, calibrated))
    assert scaled["answer"] == raw["answer"]  # the released layout still loads the same weights
    assert abs(scaled["confidence"] - 0.5) <= abs(raw["confidence"] - 0.5) + 1e-9  # a = 0.5 pulls towards 0.5


def test_closed_and_open_fields_on_the_demo_model(demo, phantoms):
    folder, datalist = phantoms
    results = demo.ask_batch([{**it, "image": str(folder / it["image"])} for it in json.loads(datalist.read_text())])
    kinds = {"closed": 0, "open": 0}
    for result in results:
        _check_fields(result)
        kinds["closed" if result["answer"].split()[0].lower() in ("yes", "no") else "open"] += 1
    assert kinds["closed"] >= 8 and kinds["open"] >= 4, kinds
    reliance = torch.tensor([r["image_reliance"] for r in results])
    assert float(reliance.mean()) > 0.1 and float(reliance.max()) > 0.5  # the demo model looks at its phantoms


def _prepared(predictor, image, question):
    prepare = PrepareVqaItem(predictor.tokenizer, predictor.model, raise_errors=True)
    item = prepare({"image": image, "question": question})
    return item["input_ids"][None], item["pixel_values"]


def _pad_colour_png(folder: Path) -> str:
    """An 8-bit PNG of LLaVA's pad colour: the CLIP mean (0.4815, 0.4578, 0.4082) x 255, truncated."""
    path = folder / "pad_colour.png"
    Image.new("RGB", (40, 40), (122, 116, 104)).save(path)
    return str(path)


def test_closed_confidence_and_reliance_equal_a_hand_computed_softmax(demo, phantoms):
    folder, _ = phantoms
    tok, model = demo.tokenizer, demo.model
    image = str(folder / "case000.dcm")
    result = demo.ask(image, "Is there a lesion in this image?")
    word = result["answer"].split()[0].lower()
    assert word in ("yes", "no")
    ids, pixels = _prepared(demo, image, "Is there a lesion in this image?")
    _, neutral = _prepared(demo, _pad_colour_png(folder), "Is there a lesion in this image?")
    yes, no = _vocab_ids(tok, "yes"), _vocab_ids(tok, "no")
    with torch.no_grad():
        probs = [torch.softmax(model(ids, None, p).logits[0, -1].double(), -1)
                 for p in (pixels, neutral)]  # the image, then the neutral image (the pad colour read from a PNG)
    chosen = [float(p[yes if word == "yes" else no].sum() / (p[yes].sum() + p[no].sum())) for p in probs]
    assert result["confidence"] == pytest.approx(chosen[0], abs=1e-5)
    assert result["image_reliance"] == pytest.approx(abs(chosen[0] - chosen[1]), abs=1e-5)


def test_a_blank_image_of_the_pad_colour_has_zero_reliance(demo, phantoms):
    folder, _ = phantoms
    blank = demo.ask(_pad_colour_png(folder), "Is there a lesion in this image?")
    assert blank["image_reliance"] == pytest.approx(0.0, abs=1e-5)  # it is the neutral image
    assert blank["abstained"] and blank["reason"] == REASON_IMAGE_INDEPENDENT


def test_reliance_in_a_mixed_batch_equals_one_full_forward_per_row(demo, phantoms):
    # rows of one batch that share (2-D slices) and do not share (a 4-view volume, other questions) a neutral
    # prefix, and a text-only row: each row's neutral probability as one plain forward of its own prompt
    folder, _ = phantoms
    series = str(DEMO.parent / "sample" / "ct_series")
    items = [{"image": str(folder / "case000.dcm"), "question": "Is there a lesion in this image?"},
             {"image": None, "question": "Is a lesion round?"},
             {"image": series, "question": "Is there a lesion anywhere in the scan?"},
             {"image": str(folder / "case001.dcm"), "question": "Is there a lesion on the left side of the image?"}]
    results = demo.ask_batch(items, batch_size=len(items))
    assert results[1]["image_reliance"] is None
    _, neutral = _prepared(demo, _pad_colour_png(folder), "Is there a lesion?")
    yes, no = _vocab_ids(demo.tokenizer, "yes"), _vocab_ids(demo.tokenizer, "no")
    for item, result in zip(items, results):
        if item["image"] is None:
            continue
        word = result["answer"].split()[0].lower()
        assert word in ("yes", "no")
        ids, pixels = _prepared(demo, item["image"], item["question"])
        with torch.no_grad():
            p = torch.softmax(demo.model(ids, None, neutral.expand_as(pixels)).logits[0, -1].double(), -1)
        chosen = float(p[yes if word == "yes" else no].sum() / (p[yes].sum() + p[no].sum()))
        assert result["image_reliance"] == pytest.approx(abs(result["confidence"] - chosen), abs=1e-4)


def test_neutral_logits_of_prefixes_of_different_lengths_in_one_pass_equal_plain_forwards(demo, phantoms):
    """Rows about a 2-D slice and about a 4-view volume (neutral prefixes of different lengths, run in one pass
    left-padded to one span) get, at every answer token, the logits of one plain forward of their own prompt and
    answer with every image replaced by the neutral one."""
    from monai_llava_med.engines.inference import collate_vqa, prepare_vqa_batch
    from monai_llava_med.trust.neutral import neutral_answer_logits, neutral_pixels

    folder, _ = phantoms
    items = [(str(folder / "case000.dcm"), "Is there a lesion in this image?"),
             (str(DEMO.parent / "sample" / "ct_series"), "Is there a lesion anywhere in the scan?"),
             (str(folder / "case001.dcm"), "Is there a lesion on the left side of the image?")]
    prepare = PrepareVqaItem(demo.tokenizer, demo.model, raise_errors=True)
    batch = collate_vqa([prepare({"image": i, "question": q}) for i, q in items], pad_token_id=0)
    batch, _, _, _ = prepare_vqa_batch(batch, "cpu")
    answer = torch.tensor([[11, 12, 2], [13, 2, 0], [14, 15, 2]])
    answer_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    out = neutral_answer_logits(demo.model, batch["input_ids"], batch["attention_mask"], answer, answer_mask,
                                batch["pixel_values"], [0, 1, 2])
    lengths = set()
    for row, (image, question) in enumerate(items):
        ids, pixels = _prepared(demo, image, question)
        lengths.add(ids.shape[1])
        tokens = answer[row][answer_mask[row]]
        with torch.no_grad():
            logits = demo.model(torch.cat([ids, tokens[None]], 1), None,
                                neutral_pixels(demo.model.config, pixels).expand_as(pixels)).logits[0]
        plain = logits[ids.shape[1] - 1 : ids.shape[1] - 1 + len(tokens)]
        assert torch.allclose(out[row, : len(tokens)], plain, atol=1e-4), row
        assert not out[row, len(tokens) :].any()
    assert max(lengths) - min(lengths) > 100  # the volume's prompt holds 4 views' image tokens, a slice's one


def test_the_neutral_prefix_is_kept_between_calls_until_a_weight_changes(phantoms):
    folder, _ = phantoms
    predictor = LlavaMedPredictor.from_pretrained(DEMO, device="cpu", max_new_tokens=4, calibration=None)
    passes = []  # tokens of every language-model pass longer than one token

    def record(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            passes.append(tuple(embeds.shape[:2]))

    image, question = str(folder / "case002.dcm"), "Is there a lesion in this image?"
    prompt_length = _prepared(predictor, image, question)[0].shape[1]
    hook = predictor.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        first = predictor.ask(image, question)
        second = predictor.ask(image, question)
        with torch.no_grad():
            predictor.model.projector[0].weight.mul_(1.5)  # a weight changed in place: the kept prefix is stale
        third = predictor.ask(image, question)
    finally:
        hook.remove()
    prefills = [p for p in passes if p[1] == prompt_length]  # generate's prefill of the whole prompt
    prefixes = [p for p in passes if p[1] < prompt_length - 1 and p[0] == 1 and p[1] > 16]
    assert len(prefills) == 3 and len(prefixes) == 2  # the first and the third call ran the neutral prefix
    assert second["image_reliance"] == pytest.approx(first["image_reliance"], abs=1e-6)
    ids, pixels = _prepared(predictor, image, question)
    _, neutral = _prepared(predictor, _pad_colour_png(folder), question)
    yes, no = _vocab_ids(predictor.tokenizer, "yes"), _vocab_ids(predictor.tokenizer, "no")
    word = third["answer"].split()[0].lower()
    with torch.no_grad():
        p = torch.softmax(predictor.model(ids, None, neutral).logits[0, -1].double(), -1)
    chosen = float(p[yes if word == "yes" else no].sum() / (p[yes].sum() + p[no].sum()))
    assert third["image_reliance"] == pytest.approx(abs(third["confidence"] - chosen), abs=1e-5)


def test_open_confidence_equals_the_hand_computed_sequence_probability(demo, phantoms):
    folder, _ = phantoms
    tok, model = demo.tokenizer, demo.model
    image, question = str(folder / "case001.dcm"), "How many lesions are there?"
    result = demo.ask(image, question)
    ids, pixels = _prepared(demo, image, question)
    with torch.no_grad():
        generated = model.generate(ids, None, pixels, max_new_tokens=8, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id)[0].tolist()
    answer = generated[: generated.index(tok.eos_token_id) + 1]  # every token the model wrote, its end included
    assert tok.decode(answer, skip_special_tokens=True).strip() == result["answer"]
    assert tok.decode(answer[0]).strip().lower() not in ("yes", "no")
    full = torch.cat([ids, torch.tensor([answer])], 1)
    with torch.no_grad():
        log_p = torch.log_softmax(model(full, None, pixels).logits[0].double(), -1)
    steps = [float(log_p[ids.shape[1] - 1 + t, token]) for t, token in enumerate(answer)]
    assert result["confidence"] == pytest.approx(float(torch.tensor(steps).mean().exp()), abs=1e-5)


def test_reliance_is_zero_when_the_image_cannot_reach_the_answer(tiny_model, tiny_tokenizer):
    with torch.no_grad():
        tiny_model.projector[-1].weight.zero_()
        tiny_model.projector[-1].bias.zero_()
    predictor = LlavaMedPredictor(tiny_model, tiny_tokenizer, max_new_tokens=5)
    for image in ("CT_small.dcm", "MR_small.dcm"):
        result = predictor.ask(get_testdata_file(image), "Is there a lesion?")
        assert result["image_reliance"] <= 1e-6
        assert result["abstained"] and result["reason"] == REASON_IMAGE_INDEPENDENT
        assert result["answer"] == predictor.ask(get_testdata_file(image), "Is there a lesion?")["answer"]


def test_batched_trust_fields_equal_single_ones(demo, phantoms):
    folder, _ = phantoms
    items = [{"image": str(folder / "case000.dcm"), "question": "Is there a lesion in this image?"},
             {"image": str(folder / "case001.dcm"), "question": "How many lesions are there?"},
             {"image": None, "question": "What modality is this?"},
             {"image": str(folder / "case002.dcm"), "question": "Is the lesion on the left side of the patient?"}]
    batched = demo.ask_batch(items, batch_size=4)  # prompts of different lengths: left padding in both passes
    for item, got in zip(items, batched):
        want = demo.ask(item["image"], item["question"])
        assert got["answer"] == want["answer"] and got["reason"] == want["reason"]
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
        if item["image"] is None:
            assert got["image_reliance"] is None
        else:
            assert got["image_reliance"] == pytest.approx(want["image_reliance"], abs=1e-5)


def test_yes_no_ids_are_found_again_when_the_vocabulary_grows():
    """The ids are kept per tokenizer, and a tokenizer given whole-word "yes" / "no" tokens later gets them."""
    from monai_llava_med.conversation import build_bpe_tokenizer
    from monai_llava_med.trust import yes_no_token_ids

    tokenizer = build_bpe_tokenizer(["a lesion is round", "the left lung"] * 4, vocab_size=120)
    before = yes_no_token_ids(tokenizer)
    assert yes_no_token_ids(tokenizer) == before
    tokenizer.add_tokens(["yes", "no"])
    yes, no = yes_no_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("yes") in yes and tokenizer.convert_tokens_to_ids("no") in no
    assert (yes, no) != before
