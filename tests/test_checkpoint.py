# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Checkpoint I/O: the released v1.5 layout, HF Llava layouts, our layout, export, and every error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_batch
from released_v15_fixture import hf_llava_reference, save_plain_tokenizer, write_released_checkpoint
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

from monai_llava_med.errors import CheckpointError
from monai_llava_med.networks import (
    LlavaMedConfig,
    build_llava_med,
    detect_layout,
    export_hf_llava,
    load_pretrained,
    save_pretrained,
)


def write_released(folder: Path, tokenizer, **kwargs) -> dict[str, torch.Tensor]:
    """The released v1.5 layout from literal names (tests/released_v15_fixture.py); vocab = the plain tokenizer's
    length, so <image> gets id vocab_size (outside the embedding table), as 32000 does for the real one."""
    vocab = tokenizer.convert_tokens_to_ids("<image>")
    return write_released_checkpoint(folder, lambda f: save_plain_tokenizer(tokenizer, f), vocab, **kwargs)


def _logits(model, config, ids, mask, pixels):
    ids = ids.masked_fill(ids == 999, config.image_token_id)  # make_batch used the caller's config
    with torch.no_grad():
        return model(ids, mask, pixels).logits


@pytest.fixture()
def v15_model(tiny_tokenizer):
    """A tiny model whose image token is the id the released tokenizer gets for <image> (= its length)."""
    torch.manual_seed(1)
    config = LlavaMedConfig.tiny(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    config.text_config["vocab_size"] = tiny_tokenizer.convert_tokens_to_ids("<image>")  # like 32000 rows
    return build_llava_med(config).eval()


def test_loads_released_v15_layout(tiny_tokenizer, tmp_path):
    folder = tmp_path / "llava-med-v1.5-tiny"
    tensors = write_released(folder, tiny_tokenizer)
    assert detect_layout(folder) == "llava_med_v15"
    model, tokenizer = load_pretrained(folder)
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id == vocab, "<image> = vocab_size"
    assert model.language_model.get_input_embeddings().num_embeddings == vocab
    assert model.config.name == "llava-med-v1.5-tiny" and model.config.projector_type == "mlp2x_gelu"
    assert model.config.num_image_tokens == 16 and model.config.vision_feature_layer == -2
    assert model.language_model.config.rope_parameters["rope_theta"] == 1e6 and model.config.model_max_length == 2048
    assert torch.equal(model.projector[2].bias, tensors["model.mm_projector.2.bias"])
    hf = hf_llava_reference(tensors, vocab, tmp_path / "hf")
    ids, mask, pixels = make_batch(model.config)
    with torch.no_grad():
        ours = model(ids, mask, pixels).logits
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[..., :vocab]
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() <= 1e-5


def test_v15_vision_tower_inferred_from_weights(tiny_tokenizer, tmp_path):
    write_released(tmp_path / "ckpt", tiny_tokenizer, vision_tower="some-org/unknown-clip")
    model, _ = load_pretrained(tmp_path / "ckpt")
    vision = model.config.vision_config
    # hidden 32 -> one 64-wide head is the CLIP rule used when only the weights are known
    assert (vision["hidden_size"], vision["num_attention_heads"], vision["num_hidden_layers"]) == (32, 1, 2)
    assert (vision["image_size"], vision["patch_size"], vision["intermediate_size"]) == (32, 8, 64)


def test_loads_hf_llava_layouts_4x_and_5x_names(tiny_tokenizer, tmp_path):
    torch.manual_seed(3)
    ours = LlavaMedConfig.tiny(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    hf_config = LlavaConfig(
        vision_config=ours.vision_config,
        text_config=ours.text_config,
        image_token_id=ours.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    hf = LlavaForConditionalGeneration(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf4")
    tiny_tokenizer.save_pretrained(tmp_path / "hf4")
    assert any(k.startswith("language_model.model.") for k in load_file(tmp_path / "hf4" / "model.safetensors"))
    # the same weights under transformers 5.x names
    (tmp_path / "hf5").mkdir()
    state5 = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(k.startswith("model.language_model.") for k in state5)
    save_file(state5, str(tmp_path / "hf5" / "model.safetensors"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "hf5" / name).write_bytes((tmp_path / "hf4" / name).read_bytes())
    ids, mask, pixels = make_batch(ours)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    for folder in ("hf4", "hf5"):
        model, _ = load_pretrained(tmp_path / folder)
        assert detect_layout(tmp_path / folder) == "hf_llava"
        assert model.config.vision_feature_select_strategy == "patch" and model.config.num_image_tokens == 16
        real = mask.bool()
        assert (model(ids, mask, pixels).logits[real] - expected[real]).abs().max() <= 1e-5


def test_our_layout_round_trip_sharded(tiny_model, tiny_tokenizer, tmp_path):
    save_pretrained(tiny_model, tmp_path / "ours", tiny_tokenizer, max_shard_size=200_000)
    files = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert "llava_med_config.json" in files and "model.safetensors.index.json" in files
    assert sum(name.endswith(".safetensors") for name in files) >= 2
    model, tokenizer = load_pretrained(tmp_path / "ours")
    assert model.config == tiny_model.config and len(tokenizer) == len(tiny_tokenizer)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_export_for_vllm_round_trip(v15_model, tiny_tokenizer, tmp_path):
    out = export_hf_llava(v15_model, tiny_tokenizer, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and config["model_type"] == "llava"
    assert config["text_config"]["vocab_size"] % 64 == 0
    assert config.get("image_token_index", config.get("image_token_id")) < config["text_config"]["vocab_size"]
    keys = set(load_file(out / "model.safetensors"))
    assert "multi_modal_projector.linear_2.weight" in keys
    assert any(k.startswith("vision_tower.vision_model.encoder.layers.") for k in keys)
    assert any(k.startswith("language_model.model.layers.") for k in keys)
    assert json.loads((out / "preprocessor_config.json").read_text())["do_pad"] is True
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.convert_tokens_to_ids("<image>") == v15_model.config.image_token_id
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    back, _ = load_pretrained(out)
    ids, mask, pixels = make_batch(v15_model.config)
    real = mask.bool()
    with torch.no_grad():
        reference = v15_model(ids, mask, pixels).logits
        vocab = reference.shape[-1]
        assert (hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[..., :vocab] - reference)[real].abs().max() <= 1e-5
        assert (back(ids, mask, pixels).logits[..., :vocab] - reference)[real].abs().max() <= 1e-5


def test_export_refuses_linear_projector(tiny_tokenizer, tmp_path):
    model = build_llava_med(LlavaMedConfig.tiny(projector_type="linear"))
    with pytest.raises(ValueError, match="2-layer GELU"):
        export_hf_llava(model, tiny_tokenizer, tmp_path / "x")


# ------------------------------------------------------------------------------------------------- errors
@pytest.fixture()
def saved(tiny_model, tiny_tokenizer, tmp_path):
    return save_pretrained(tiny_model, tmp_path / "ckpt", tiny_tokenizer)


def _edit_weights(folder: Path, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_missing_and_unexpected_keys_are_listed(saved):
    def edit(state):
        state.pop("projector.2.bias")
        state["projector.4.weight"] = torch.zeros(2, 2)

    _edit_weights(saved, edit)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(saved)
    message = str(info.value)
    assert "1 missing key(s): projector.2.bias" in message and "1 unexpected key(s): projector.4.weight" in message
    assert str(saved) in message and isinstance(info.value, ValueError)


def test_shape_mismatch_names_both_shapes(saved):
    _edit_weights(saved, lambda state: state.__setitem__("projector.0.bias", torch.zeros(65)))
    with pytest.raises(CheckpointError, match=r"projector\.0\.bias: checkpoint \(65,\) vs model \(64,\)"):
        load_pretrained(saved)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_pickle_is_refused(tmp_path, tiny_model, tiny_tokenizer, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    tiny_model.config.save(folder)
    tiny_tokenizer.save_pretrained(str(folder))
    torch.save({"state_dict": tiny_model.state_dict(), "evil": _Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused: this pickle needs arbitrary code"):
        load_pretrained(folder)
    assert "this must never run" not in capsys.readouterr().out


def test_safe_pickle_is_accepted(tmp_path, tiny_model, tiny_tokenizer):
    folder = tmp_path / "bin"
    folder.mkdir()
    tiny_model.config.save(folder)
    tiny_tokenizer.save_pretrained(str(folder))
    torch.save(tiny_model.state_dict(), folder / "pytorch_model.bin")
    model, _ = load_pretrained(folder)
    assert torch.equal(model.projector[0].weight, tiny_model.projector[0].weight)


def test_folder_errors(tmp_path, saved, tiny_tokenizer):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_pretrained(tmp_path / "empty")
    (saved / "model.safetensors").write_bytes(b"\x00\x01 truncated")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_pretrained(saved)
    folder = tmp_path / "ref"
    write_released(folder, tiny_tokenizer)
    (folder / "model-00002-of-00004.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shards listed in the index are missing"):
        load_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        load_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**raw, "mm_use_im_start_end": True}))
    with pytest.raises(CheckpointError, match="v1.0"):
        load_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read JSON"):
        load_pretrained(folder)


def test_assemble_stage1_start_from_clip_and_llm_folders(tiny_config, tiny_tokenizer, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    from monai_llava_med.networks import assemble_from_parts

    torch.manual_seed(4)
    clip = CLIPVisionModel(CLIPVisionConfig(**tiny_config.vision_config))
    clip.save_pretrained(tmp_path / "clip")
    text = dict(tiny_config.text_config)
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(text.pop("model_type"), **text))
    llm.save_pretrained(tmp_path / "llm")
    tiny_tokenizer.save_pretrained(str(tmp_path / "llm"))
    model, tokenizer = assemble_from_parts(tmp_path / "clip", tmp_path / "llm", out_dir=tmp_path / "init")
    assert torch.equal(model.vision_tower.get_input_embeddings().weight, clip.get_input_embeddings().weight)
    assert torch.equal(model.language_model.lm_head.weight, llm.lm_head.weight)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    reloaded, _ = load_pretrained(tmp_path / "init")
    ids, mask, pixels = make_batch(reloaded.config)
    assert torch.equal(reloaded(ids, mask, pixels).logits, model(ids, mask, pixels).logits)
    with pytest.raises(CheckpointError, match="no config.json"):
        assemble_from_parts(tmp_path / "nowhere", tmp_path / "llm")


_RANDOM_INIT_OPS = {"normal_", "uniform_", "trunc_normal_", "bernoulli_", "random_", "exponential_", "log_normal_"}


class _RandomInitCounter(TorchDispatchMode):
    """Counts the elements of real (non-meta) tensors filled by random-init ops while active."""

    def __init__(self):
        super().__init__()
        self.filled = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in _RANDOM_INIT_OPS and args and args[0].device.type != "meta":
            self.filled += args[0].numel()
        return func(*args, **(kwargs or {}))


def test_assemble_and_load_materialise_weights_once(tiny_config, tiny_tokenizer, tmp_path):
    """Only the fresh projector is randomly initialised; the towers are never built randomly then replaced."""
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    from monai_llava_med.networks import assemble_from_parts

    CLIPVisionModel(CLIPVisionConfig(**tiny_config.vision_config)).save_pretrained(tmp_path / "clip")
    text = dict(tiny_config.text_config)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(text.pop("model_type"), **text)).save_pretrained(tmp_path / "llm")
    tiny_tokenizer.save_pretrained(str(tmp_path / "llm"))
    with _RandomInitCounter() as counter:
        model, _ = assemble_from_parts(tmp_path / "clip", tmp_path / "llm", out_dir=tmp_path / "init")
    projector = sum(p.numel() for p in model.projector.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert total > 30 * projector and counter.filled == projector
    assert not any(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    with _RandomInitCounter() as counter:
        loaded, _ = load_pretrained(tmp_path / "init")
    assert counter.filled == 0 and not any(p.device.type == "meta" for p in loaded.parameters())
    with _RandomInitCounter() as counter:
        build_llava_med(tiny_config)  # the counter does see a random build
    assert counter.filled >= total


# ------------------------------------------------------------------------------------------ review fixes
def test_assemble_grows_embeddings_for_a_tokenizer_without_unk(tiny_config, tmp_path):
    """A Llama-3 style tokenizer (no <unk>) gets <pad> after <image>: its id must have an embedding row."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel
    from transformers import PreTrainedTokenizerFast

    from monai_llava_med.networks import assemble_from_parts

    torch.manual_seed(5)
    CLIPVisionModel(CLIPVisionConfig(**tiny_config.vision_config)).save_pretrained(tmp_path / "clip")
    text = dict(tiny_config.text_config)
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(text.pop("model_type"), **text))
    llm.save_pretrained(tmp_path / "llm")
    vocab = {"<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, text["vocab_size"])}, "w0": 0}
    core = Tokenizer(models.WordLevel(vocab))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>").save_pretrained(tmp_path / "llm")
    model, tokenizer = assemble_from_parts(tmp_path / "clip", tmp_path / "llm", out_dir=tmp_path / "init")
    rows = model.language_model.get_input_embeddings().num_embeddings
    assert tokenizer.unk_token is None and tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id < rows
    assert model.language_model.lm_head.weight.shape[0] == rows == model.config.text_config["vocab_size"]
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[1, 5, 6, 7], [pad, pad, 1, 5]])
    with torch.no_grad():
        logits = model(ids, (ids != pad).long()).logits  # IndexError before the fix
    reloaded, _ = load_pretrained(tmp_path / "init")
    with torch.no_grad():
        assert torch.equal(reloaded(ids, (ids != pad).long()).logits, logits)


def test_released_v15_tokenizer_keeps_unk_as_pad(tiny_tokenizer, tmp_path):
    write_released(tmp_path / "ref", tiny_tokenizer)
    model, tokenizer = load_pretrained(tmp_path / "ref")
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == 0
    assert model.language_model.get_input_embeddings().num_embeddings == model.config.image_token_id


def test_original_llava_config_is_the_native_layout(tiny_tokenizer, tmp_path):
    """model_type "llava" + LlavaLlamaForCausalLM (original LLaVA) keeps model.mm_projector.* names."""
    folder = tmp_path / "llava-llama"
    tensors = write_released(folder, tiny_tokenizer)
    raw = json.loads((folder / "config.json").read_text())
    llama = {**raw, "model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(llama))
    assert detect_layout(folder) == "llava_med_v15"
    model, _ = load_pretrained(folder)
    assert model.config.text_model_type == "llama"
    assert torch.equal(model.projector[0].weight, tensors["model.mm_projector.0.weight"])
    assert torch.equal(model.language_model.lm_head.weight, tensors["lm_head.weight"])
    assert torch.equal(model.language_model.model.layers[1].mlp.down_proj.weight,
                       tensors["model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(model.vision_tower.get_input_embeddings().weight,
                       tensors["model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"])
    without_arch = {k: v for k, v in raw.items() if k != "architectures"}
    (folder / "config.json").write_text(json.dumps({**without_arch, "model_type": "llava"}))
    assert detect_layout(folder) == "llava_med_v15"  # mm_vision_tower alone decides
    (folder / "config.json").write_text(json.dumps({**raw, "model_type": "llava", "mm_use_im_start_end": True}))
    with pytest.raises(CheckpointError, match="v1.0"):
        load_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**raw, "image_aspect_ratio": "anyres"}))
    with pytest.raises(CheckpointError, match="anyres"):
        load_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["SomethingElse"]}))
    with pytest.raises(CheckpointError, match="neither mm_vision_tower"):
        detect_layout(folder)


def test_legacy_torch_bin_is_read_and_legacy_payload_refused(tmp_path, tiny_model, tiny_tokenizer, capsys):
    folder = tmp_path / "legacy"
    folder.mkdir()
    tiny_model.config.save(folder)
    tiny_tokenizer.save_pretrained(str(folder))
    torch.save(tiny_model.state_dict(), folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    model, _ = load_pretrained(folder)
    assert torch.equal(model.projector[0].weight, tiny_model.projector[0].weight)
    torch.save({"state_dict": tiny_model.state_dict(), "evil": _Payload()}, folder / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="refused: this pickle needs arbitrary code"):
        load_pretrained(folder)
    assert "this must never run" not in capsys.readouterr().out


def test_hf_llava_export_keeps_preprocessing_and_context(tiny_tokenizer, tmp_path):
    from monai_llava_med.networks.checkpoint import config_from_folder

    config = LlavaMedConfig.tiny(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"),
                                 image_aspect_ratio="resize", image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25),
                                 model_max_length=4096)
    tokenizer = AutoTokenizer.from_pretrained(str(save_plain_tokenizer(tiny_tokenizer, tmp_path / "tok")))
    from monai_llava_med.conversation import prepare_tokenizer

    prepare_tokenizer(tokenizer, model_max_length=4096)
    out = export_hf_llava(build_llava_med(config).eval(), tokenizer, tmp_path / "export")
    loaded = config_from_folder(out)
    assert (loaded.image_aspect_ratio, loaded.image_mean, loaded.image_std) == ("resize", (0.5,) * 3, (0.25,) * 3)
    assert loaded.model_max_length == 4096
    _, back_tokenizer = load_pretrained(out)
    assert back_tokenizer.model_max_length == 4096


def test_hub_id_from_offline_cache_is_named_after_the_repo(tiny_tokenizer, tmp_path, monkeypatch):
    from huggingface_hub import constants

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--llava-med-tiny"
    tensors = write_released(repo / "snapshots" / sha, tiny_tokenizer)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import time; no request may go out
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    model, _ = load_pretrained("org/llava-med-tiny")
    assert model.config.name == "llava-med-tiny"
    assert torch.equal(model.language_model.model.embed_tokens.weight, tensors["model.embed_tokens.weight"])
