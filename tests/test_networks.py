# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""LlavaMedNet: config, factory, forward, generation, freezing, parity with transformers' Llava."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch
from transformers import LlavaForConditionalGeneration

from monai_llava_med.networks import (
    LlavaMedConfig,
    build_llava_med,
    configure_stage,
    default_dtype,
    export_hf_llava,
    resolve_placement,
)


def test_config_round_trip_and_derived_values(tmp_path):
    config = LlavaMedConfig.v1_5()
    assert config.num_image_tokens == 576 and config.image_size == 336 and config.projector_depth == 2
    assert LlavaMedConfig.tiny(vision_feature_select_strategy="cls_patch").num_image_tokens == 17
    path = config.save(tmp_path)
    assert path.name == "llava_med_config.json"
    assert LlavaMedConfig.load(tmp_path) == config
    assert LlavaMedConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"projector_type": "mlp0x_gelu"}, "projector_type"),
        ({"projector_type": "conv"}, "projector_type"),
        ({"vision_feature_select_strategy": "cls"}, "select_strategy"),
        ({"vision_feature_layer": -7}, "vision_feature_layer"),
        ({"text_config": {"model_type": "gpt2"}}, "model_type"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        LlavaMedConfig.tiny(**overrides)


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="feature_outs"):
        LlavaMedConfig.from_dict({"feature_outs": "x"})


@pytest.mark.parametrize("projector, n_linear", [("linear", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)])
def test_factory_builds_projectors_and_llama(projector, n_linear, tiny_config):
    tiny_config.projector_type = projector
    tiny_config.text_config["model_type"] = "llama"
    model = build_llava_med(tiny_config)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == n_linear and linears[0].in_features == 32 and linears[-1].out_features == 64
    assert type(model.language_model).__name__ == "LlamaForCausalLM"
    ids, mask, pixels = make_batch(tiny_config)
    assert model(ids, mask, pixels).logits.shape == (2, ids.shape[1], 1000)


def test_factory_takes_configs_and_presets_but_never_guesses_paths(tmp_path, tiny_config, monkeypatch):
    assert build_llava_med("tiny").config == LlavaMedConfig.tiny()
    assert build_llava_med(tiny_config.to_dict()).config == tiny_config
    path = tiny_config.save(tmp_path)
    assert build_llava_med(LlavaMedConfig.load(path)).config == tiny_config  # a file is read explicitly
    with pytest.raises(ValueError, match=r"Unknown LlavaMedConfig preset .*LlavaMedConfig.load\(path\)"):
        build_llava_med(str(path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a folder named like a preset does not change what "tiny" means
    assert build_llava_med("tiny").config == LlavaMedConfig.tiny()
    with pytest.raises(TypeError, match="not a path"):
        build_llava_med(path)
    assert build_llava_med("tiny", dtype="bfloat16").dtype == torch.bfloat16


def test_one_resolver_for_dtype_and_device():
    assert resolve_placement() == (torch.float32, torch.device("cpu"))
    assert default_dtype("cpu") == torch.float32 and default_dtype(None) == torch.float32
    assert resolve_placement("bf16", "cpu") == (torch.bfloat16, torch.device("cpu"))
    assert resolve_placement("torch.float16")[0] == torch.float16 and resolve_placement(torch.bfloat16)[0] == torch.bfloat16
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_placement(None, "auto")[1] == expected
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_placement("int8")
    with pytest.raises(ValueError, match="floating"):
        resolve_placement(torch.int64)
    with pytest.raises(ValueError, match="not a device"):
        resolve_placement(None, "gpu0")


def test_forward_places_image_features_only_where_image_tokens_are(tiny_model, tiny_config):
    ids, mask, pixels = make_batch(tiny_config)
    labels = ids.masked_fill((ids == tiny_config.image_token_id) | (mask == 0), -100)
    out = tiny_model(ids, mask, pixels, labels=labels)
    assert torch.isfinite(out.loss) and out.logits.shape == (2, ids.shape[1], 1000)
    changed = pixels.clone()
    changed[1] += 1.0  # the second image belongs to sample 0
    with torch.no_grad():
        before = tiny_model(ids, mask, pixels).logits
        after = tiny_model(ids, mask, changed).logits
    first_image_end = 3 + tiny_config.num_image_tokens
    assert torch.equal(before[1], after[1]), "a sample without images must not see other samples' images"
    assert torch.equal(before[0, :first_image_end], after[0, :first_image_end]), "causality before image 2"
    assert not torch.allclose(before[0, -1], after[0, -1])


def test_forward_text_only_batch_and_count_mismatch(tiny_model, tiny_config):
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    assert tiny_model(ids).logits.shape == (2, 4, 1000)
    ids_with_image, mask, pixels = make_batch(tiny_config)
    with pytest.raises(ValueError, match=r"32 image tokens but 1 image"):
        tiny_model(ids_with_image, mask, pixels[:1])
    with pytest.raises(ValueError, match=r"0 image\(s\)"):
        tiny_model(ids_with_image, mask, None)


def _hf_twin(model, tokenizer, tmp_path):
    """The same weights as transformers' LlavaForConditionalGeneration (through the export path)."""
    export_hf_llava(model, tokenizer, tmp_path / "hf")
    return LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()


def test_logit_parity_with_transformers_llava(tiny_model, tiny_tokenizer, tiny_config, tmp_path):
    hf = _hf_twin(tiny_model, tiny_tokenizer, tmp_path)
    ids, mask, pixels = make_batch(tiny_config)
    with torch.no_grad():
        ours = tiny_model(ids, mask, pixels).logits
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert theirs.shape == ours.shape
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-5


def test_bf16_cast_keeps_rotary_frequencies_fp32_like_transformers(tiny_model, tiny_tokenizer, tiny_config, tmp_path):
    export_hf_llava(tiny_model, tiny_tokenizer, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16).eval()
    ours = build_llava_med(tiny_config, dtype=torch.bfloat16)
    ours.load_state_dict(tiny_model.state_dict())
    ours.eval()
    rotary, hf_rotary = ours.language_model.model.rotary_emb, hf.model.language_model.rotary_emb
    assert ours.projector[0].weight.dtype == torch.bfloat16
    assert rotary.inv_freq.dtype == torch.float32 and torch.equal(rotary.inv_freq, hf_rotary.inv_freq)
    assert ours.float().bfloat16().language_model.model.rotary_emb.inv_freq.dtype == torch.float32
    ids, mask, pixels = make_batch(tiny_config)
    with torch.no_grad():
        a = ours(ids, mask, pixels.bfloat16()).logits.float()
        b = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels.bfloat16()).logits.float()
    assert (a[mask.bool()] - b[mask.bool()]).abs().max().item() <= 1e-2


def test_greedy_generation_matches_transformers_and_is_batch_invariant(tiny_model, tiny_tokenizer, tiny_config, tmp_path):
    hf = _hf_twin(tiny_model, tiny_tokenizer, tmp_path)
    ids, mask, pixels = make_batch(tiny_config)
    ours = tiny_model.generate(ids, mask, pixels, max_new_tokens=8, eos_token_id=-1)
    theirs = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8, do_sample=False)
    assert ours.shape == (2, 8)
    assert torch.equal(ours, theirs[:, ids.shape[1] :])
    alone = tiny_model.generate(ids[1:, mask[1].argmax() :], None, None, max_new_tokens=8, eos_token_id=-1)
    assert torch.equal(alone[0], ours[1])


def test_generation_stops_on_eos_and_pads(tiny_model, tiny_config):
    ids, mask, pixels = make_batch(tiny_config)
    free = tiny_model.generate(ids, mask, pixels, max_new_tokens=6, eos_token_id=-1)
    stop = int(free[0, 2])
    out = tiny_model.generate(ids, mask, pixels, max_new_tokens=6, eos_token_id=stop, pad_token_id=0)
    first_stop = int((free[0] == stop).nonzero()[0])
    assert out[0, first_stop] == stop
    assert torch.all(out[0, first_stop + 1 :] == 0)


def test_sampling_is_seeded(tiny_model, tiny_config):
    ids, mask, pixels = make_batch(tiny_config)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(tiny_model.generate(ids, mask, pixels, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9))
    assert torch.equal(runs[0], runs[1])


def test_generation_refuses_right_padding(tiny_model, tiny_config):
    ids, mask, pixels = make_batch(tiny_config, padding_side="right")
    with pytest.raises(ValueError, match="left-padded"):
        tiny_model.generate(ids, mask, pixels)


def test_stage1_trains_only_the_projector(tiny_model, tiny_config):
    configure_stage(tiny_model, "stage1")
    ids, mask, pixels = make_batch(tiny_config)
    tiny_model(ids, mask, pixels, labels=ids.masked_fill(ids == tiny_config.image_token_id, -100)).loss.backward()
    grads = {name: p.grad is not None for name, p in tiny_model.named_parameters()}
    assert all(v for k, v in grads.items() if k.startswith("projector."))
    assert not any(v for k, v in grads.items() if not k.startswith("projector."))
    configure_stage(tiny_model, "stage2")
    assert all(p.requires_grad for p in tiny_model.language_model.parameters())
    assert not any(p.requires_grad for p in tiny_model.vision_tower.parameters())
    with pytest.raises(ValueError, match="Unknown stage"):
        configure_stage(tiny_model, "stage3")


def test_gradient_checkpointing_gives_same_gradients(tiny_config):
    ids, mask, pixels = make_batch(tiny_config)
    labels = ids.masked_fill(ids == tiny_config.image_token_id, -100)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_llava_med(tiny_config, stage="stage2", gradient_checkpointing=checkpointing).train()
        model.language_model.config.use_cache = False
        model(ids, mask, pixels, labels=labels).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.projector.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
