# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Absurd model configs are refused before anything is built, naming the field (and the file); index shards
must stay inside the model folder."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from monai_llava_med.errors import CheckpointError
from monai_llava_med.networks import (
    LlavaMedConfig,
    build_llava_med,
    estimate_parameters,
    load_pretrained,
    save_pretrained,
)
from monai_llava_med.networks import config_checks

ABSURD = [
    ({"text_config": {"vocab_size": 10**12}}, r"text_config\.vocab_size = 1000000000000 is outside"),
    ({"vision_config": {"image_size": 10**6, "patch_size": 1}}, r"vision_config\.image_size = 1000000 is outside"),
    ({"text_config": {"hidden_size": 10**7}}, r"text_config\.hidden_size = 10000000 is outside"),
    ({"vision_config": {"hidden_size": 10**7}}, r"vision_config\.hidden_size = 10000000 is outside"),
    ({"text_config": {"num_hidden_layers": 10**6}}, r"text_config\.num_hidden_layers = 1000000 is outside"),
    ({"text_config": {"intermediate_size": -5}}, r"text_config\.intermediate_size = -5 is outside"),
    ({"text_config": {"num_attention_heads": 0}}, r"text_config\.num_attention_heads = 0 is outside"),
    ({"vision_config": {"num_attention_heads": 0}}, r"vision_config\.num_attention_heads = 0 is outside"),
    ({"text_config": {"vocab_size": "many"}}, r"text_config\.vocab_size must be an integer, got 'many'"),
    ({"text_config": {"vocab_size": True}}, r"text_config\.vocab_size must be an integer"),
    ({"text_config": {"max_position_embeddings": 10**12}}, r"text_config\.max_position_embeddings = 10+ is outside"),
    ({"text_config": {"rope_theta": math.nan}}, r"text_config\.rope_theta must be a finite number"),
    ({"text_config": {"num_key_value_heads": 3}}, r"num_attention_heads = 4 is not a multiple of num_key_value_heads"),
    ({"text_config": {"hidden_size": 66}}, r"text_config\.hidden_size = 66 is not a multiple of num_attention_heads"),
    ({"vision_config": {"image_size": 4096, "patch_size": 1}}, r"16777216 patches per image"),
    ({"projector_type": "mlp1000000x_gelu"}, r"projector_type must be"),
    ({"image_token_id": 2**40}, r"image_token_id = \d+ is outside"),
    ({"model_max_length": 0}, r"model_max_length = 0 is outside"),
    ({"image_mean": ("a", 0, 0)}, r"image_mean must be 3 numbers"),
    ({"image_std": (0.5, 0.5, 0.0)}, r"image_std must be > 0"),
]


def _tiny_values(overrides):
    values = LlavaMedConfig.tiny().to_dict()
    for key, value in overrides.items():
        if key in ("text_config", "vision_config"):
            values[key].update(value)
        else:
            values[key] = value
    return values


@pytest.mark.parametrize("overrides, message", ABSURD)
def test_absurd_values_are_refused_naming_the_field(overrides, message):
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as info:
        LlavaMedConfig.from_dict(_tiny_values(overrides))
    assert isinstance(info.value, ValueError) and time.perf_counter() - start < 1.0


@pytest.mark.parametrize("overrides, message", ABSURD[:11])
def test_absurd_values_in_our_layout_name_the_file(overrides, message, tmp_path):
    (tmp_path / "llava_med_config.json").write_text(json.dumps(_tiny_values(overrides)))
    with pytest.raises(CheckpointError, match=message) as info:
        load_pretrained(tmp_path)
    assert info.value.path.endswith("llava_med_config.json")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("vocab_size", 10**12, r"text_config\.vocab_size = 1000000000000 is outside"),
        ("num_hidden_layers", 10**6, r"text_config\.num_hidden_layers"),
        ("intermediate_size", -5, r"text_config\.intermediate_size = -5"),
        ("vocab_size", "many", r"text_config\.vocab_size must be an integer"),
        ("max_position_embeddings", 10**12, r"text_config\.max_position_embeddings"),
        ("mm_vision_select_layer", "last", r"vision_feature_layer must be an integer, got 'last'"),
        ("tokenizer_model_max_length", 10**30, r"model_max_length = 10+ is outside"),
    ],
)
def test_absurd_values_in_the_released_layout_name_config_json(field, value, message, tmp_path, tiny_tokenizer):
    from released_v15_fixture import save_plain_tokenizer, write_released_checkpoint

    folder = tmp_path / "ref"
    write_released_checkpoint(folder, lambda f: save_plain_tokenizer(tiny_tokenizer, f), 300)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, field: value}))
    with pytest.raises(CheckpointError, match=message) as info:
        load_pretrained(folder)
    assert info.value.path.endswith("config.json")


def test_hf_layout_with_absurd_vocab_names_the_field(tmp_path, tiny_model, tiny_tokenizer):
    from monai_llava_med.networks import export_hf_llava

    folder = export_hf_llava(tiny_model, tiny_tokenizer, tmp_path / "hf")
    raw = json.loads((folder / "config.json").read_text())
    raw["text_config"]["vocab_size"] = 10**12
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"vocab_size") as info:
        load_pretrained(folder)
    assert info.value.path.endswith("config.json")


def _huge_config():
    """Every value within its range, but ~2.2e12 parameters (8.8 TB in fp32)."""
    config = LlavaMedConfig.tiny()
    config.text_config.update(hidden_size=16384, intermediate_size=65536, num_hidden_layers=512, num_attention_heads=128,
                              num_key_value_heads=8)
    config.validate()
    return config


def test_a_model_larger_than_free_memory_is_refused_before_allocation(tmp_path):
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"parameters and needs about .* GiB on cpu, but only .* is free; "
                                              r"the largest part is text_layers .*num_hidden_layers"):
        build_llava_med(_huge_config())
    (tmp_path / "llava_med_config.json").write_text(json.dumps(_huge_config().to_dict()))
    with pytest.raises(CheckpointError, match="needs about") as info:
        load_pretrained(tmp_path)  # the folder has no weights: the size check comes before reading them
    assert info.value.path == str(tmp_path) and time.perf_counter() - start < 5.0


def test_memory_check_counts_the_bytes_of_each_copy(monkeypatch, tiny_config):
    total = sum(estimate_parameters(tiny_config).values())
    monkeypatch.setattr(config_checks, "available_memory", lambda device: 3 * total)
    build_llava_med(tiny_config, dtype=torch.bfloat16, state_dict=None, check_memory=False)
    with pytest.raises(CheckpointError, match="largest part is text_embeddings"):
        build_llava_med(tiny_config)  # fp32: 4 bytes per parameter > 3 bytes free per parameter
    monkeypatch.setattr(config_checks, "available_memory", lambda device: 5 * total)
    assert build_llava_med(tiny_config).dtype == torch.float32
    with pytest.raises(CheckpointError, match="needs about"):
        build_llava_med(tiny_config, dtype=torch.bfloat16)  # the fp32 random copy + the bf16 cast: 6 bytes
    monkeypatch.setattr(config_checks, "available_memory", lambda device: None)  # unknown: nothing is refused
    build_llava_med(tiny_config, dtype=torch.bfloat16)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"projector_type": "mlp3x_gelu", "vision_feature_select_strategy": "cls_patch"},
        {"projector_type": "linear", "text_config": {"model_type": "llama", "attention_bias": True, "mlp_bias": True,
                                                      "tie_word_embeddings": True, "num_key_value_heads": 4}},
        {"text_config": {"head_dim": 8}, "vision_config": {"num_channels": 1, "image_size": 40}},
    ],
)
def test_parameter_estimate_is_exact(overrides):
    values = _tiny_values(overrides)
    if overrides.get("text_config", {}).get("model_type") == "llama":
        values["text_config"].pop("sliding_window", None)
    config = LlavaMedConfig.from_dict(values)
    model = build_llava_med(config)
    assert sum(estimate_parameters(config).values()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors",
                                   "..\\outside.safetensors", "C:/weights.safetensors", ""])
def test_index_shards_outside_the_model_folder_are_refused(shard, tmp_path, tiny_model, tiny_tokenizer):
    folder = save_pretrained(tiny_model, tmp_path / "model", tiny_tokenizer, max_shard_size=200_000)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(index["weight_map"])[0]
    (tmp_path / "outside.safetensors").write_bytes((folder / index["weight_map"][first]).read_bytes())
    index["weight_map"][first] = shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="refused: the index names a shard outside the model folder") as info:
        load_pretrained(folder)
    assert info.value.path == str(index_path)
