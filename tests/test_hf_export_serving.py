# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The HF export prompts exactly like us when read by transformers alone (a process that never imports us)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from monai_llava_med.conversation import build_generation_inputs
from monai_llava_med.conversation.tokenizer import LOADER_ONLY_KEYS, chat_template_jinja
from monai_llava_med.errors import TemplateError
from monai_llava_med.networks import LlavaMedConfig, build_llava_med, export_hf_llava, load_pretrained

PROBE = Path(__file__).with_name("hf_serving_probe.py")
QUESTION = "Is there a lesion in the left lung?"
SYSTEM_VICUNA_MSG = "Answer briefly."


def run_probe(request: dict, tmp_path: Path, python: str = sys.executable) -> tuple[dict, dict]:
    """Run the probe in a fresh interpreter (no PYTHONPATH: it imports transformers, never this package)."""
    (tmp_path / "request.json").write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [python, str(PROBE), str(tmp_path / "request.json"), str(tmp_path / "result.safetensors")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with safe_open(str(tmp_path / "result.safetensors"), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny model per template (rope_theta 1e6 as in v1.5, so a reader that drops it is caught)."""
    from conftest import TINY_CORPUS

    from monai_llava_med.conversation import build_bpe_tokenizer

    root = tmp_path_factory.mktemp("serving")
    tokenizer = build_bpe_tokenizer(TINY_CORPUS * 4, vocab_size=300)
    out = {}
    for seed, template in enumerate(("mistral_instruct", "vicuna_v1")):
        torch.manual_seed(seed)
        config = LlavaMedConfig.tiny(image_token_id=tokenizer.convert_tokens_to_ids("<image>"), template=template)
        config.text_config["rope_theta"] = 1e6
        model = build_llava_med(config).eval()
        out[template] = (model, export_hf_llava(model, tokenizer, root / template))
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(root / "image.png")
    return tokenizer, out, root


def _request(tokenizer, exported_models, root):
    """Cases, and our own ids and logits for each (from our tokenisation and our network)."""
    cases, ours = [], []
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    turns = [("user", f"<image>\n{QUESTION}"), ("assistant", "Yes"), ("user", "Which side?")]
    specs = [
        ("mistral_instruct", [("user", QUESTION)], None),
        ("mistral_instruct", turns, None),
        ("vicuna_v1", [("user", QUESTION)], None),
        ("vicuna_v1", [("user", QUESTION)], SYSTEM_VICUNA_MSG),
    ]
    for template, conversation, system in specs:
        model, folder = exported_models[template]
        messages = [{"role": "system", "content": system}] if system else []
        for i, (role, text) in enumerate(conversation):
            if i == 0:
                content = [{"type": "image"}, {"type": "text", "text": text.replace("<image>\n", "")}]
            else:
                content = text
            messages.append({"role": role, "content": content})
        ids = build_generation_inputs(
            conversation, tokenizer, template, num_images=1, num_image_tokens=model.config.num_image_tokens,
            image_token_id=model.config.image_token_id, system=system,
        )
        text_conversation = [("user", QUESTION)] if len(conversation) == 1 else [(r, t.replace("<image>\n", "")) for r, t in conversation]
        text_ids = build_generation_inputs(text_conversation, tokenizer, template, num_images=0, system=system)
        from monai_llava_med.conversation import render_conversation

        plain_prompt = render_conversation(conversation, template, num_images=1, system=system,
                                           add_generation_prompt=True)
        with torch.no_grad():
            logits = model(ids[None], pixel_values=pixels).logits[0]
        cases.append({
            "folder": str(folder), "messages": messages, "images": [str(root / "image.png")], "pixels_key": "p",
            "plain_prompt": plain_prompt,
            "text_messages": [{"role": r, "content": t} for r, t in ([("system", system)] if system else []) + text_conversation],
        })
        ours.append((ids, text_ids, logits))
    save_file({"p": pixels}, str(root / "pixels.safetensors"))
    return {"pixels": str(root / "pixels.safetensors"), "cases": cases}, ours


def _check(result, ours):
    for i, (ids, text_ids, logits) in enumerate(ours):
        assert torch.equal(result[f"{i}.chat_ids"], ids), f"case {i}: chat template + processor ids differ"
        assert torch.equal(result[f"{i}.plain_ids"], ids), f"case {i}: the processor must add BOS exactly once"
        assert torch.equal(result[f"{i}.text_ids"], text_ids), f"case {i}: tokenizer chat template ids differ"
        assert torch.equal(result[f"{i}.logits"], logits), f"case {i}: logits differ"


def test_exported_folder_prompts_and_scores_exactly_like_us(exported, tmp_path):
    tokenizer, models, root = exported
    request, ours = _request(tokenizer, models, root)
    result, meta = run_probe(request, tmp_path)
    assert int(ours[0][0][0]) == tokenizer.bos_token_id and int((ours[0][0] == tokenizer.bos_token_id).sum()) == 1
    _check(result, ours)
    assert meta["0.prompt"] == "<s>[INST] <image>\n" + QUESTION + " [/INST]"
    assert meta["3.prompt"].startswith("<s>" + SYSTEM_VICUNA_MSG + " USER: <image>\n")
    # the processor's own pixels ("pad" mode, bicubic resize) stay close to ours on a square image
    from monai_llava_med.transforms.pixels import ImageToClipPixels

    config = models["mistral_instruct"][0].config
    ours_pixels = ImageToClipPixels(config.image_size, config.image_mean, config.image_std)(
        np.asarray(Image.open(root / "image.png")).transpose(2, 0, 1).copy()
    )
    assert (result["0.pixel_values"][0] - ours_pixels).abs().max() <= 1e-5


def test_exported_folder_is_portable(exported):
    _, models, _ = exported
    folder = models["vicuna_v1"][1]
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not LOADER_ONLY_KEYS & set(tokenizer_config)
    assert tokenizer_config["chat_template"] == (folder / "chat_template.jinja").read_text() == chat_template_jinja("vicuna_v1")
    config = json.loads((folder / "config.json").read_text())
    assert config["text_config"]["rope_theta"] == 1e6 and config["torch_dtype"] == "float32"
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask(), path.name
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "no staging folder is left behind"
    model, tokenizer = load_pretrained(folder)  # and we read our own export back
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")


def _umask() -> int:
    value = os.umask(0)
    os.umask(value)
    return value


def test_export_replaces_stale_shards_and_failed_export_keeps_the_old_folder(exported, tmp_path):
    tokenizer, models, _ = exported
    model = models["mistral_instruct"][0]
    out = export_hf_llava(model, tokenizer, tmp_path / "hf", max_shard_size=200_000)
    assert (out / "model.safetensors.index.json").is_file()
    export_hf_llava(model, tokenizer, out)  # now a single file: the old shards and index must go
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and not [n for n in names if "-of-" in n or n.endswith("index.json")]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TemplateError):
        export_hf_llava(model, tokenizer, out, template="no-such-template")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_chat_template_refuses_what_it_cannot_express():
    from monai_llava_med.conversation import ConversationTemplate

    with pytest.raises(TemplateError, match="cannot be written as a chat template"):
        chat_template_jinja(ConversationTemplate(name="x", user_format="{content} {role}"))


TF4_PYTHON = os.environ.get("LLAVA_MED_TF4_PYTHON")


@pytest.mark.skipif(not TF4_PYTHON, reason="set LLAVA_MED_TF4_PYTHON to a python with transformers 4.x")
def test_exported_folder_in_transformers_4(exported, tmp_path):
    tokenizer, models, root = exported
    request, ours = _request(tokenizer, models, root)
    result, meta = run_probe(request, tmp_path, python=TF4_PYTHON)
    assert meta["transformers"].startswith("4.")
    _check(result, ours)


@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_exported_image_processor_follows_image_aspect_ratio(mode, tmp_path):
    """A 48x20 image: the exported processor pads (or squashes, never crops) like our pipeline, within 1 grey level."""
    from transformers import AutoProcessor

    from monai_llava_med.conversation import build_bpe_tokenizer
    from monai_llava_med.transforms.pixels import ImageToClipPixels

    tokenizer = build_bpe_tokenizer(["a small corpus for a tiny tokenizer"] * 4, vocab_size=300)
    config = LlavaMedConfig.tiny(image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_aspect_ratio=mode)
    assert config.pad_to_square is (mode == "pad")
    out = export_hf_llava(build_llava_med(config), tokenizer, tmp_path / "hf")
    image = (np.random.default_rng(1).random((20, 48, 3)) * 255).astype(np.uint8)
    theirs = AutoProcessor.from_pretrained(out).image_processor(Image.fromarray(image), return_tensors="pt")
    ours = ImageToClipPixels(config.image_size, config.image_mean, config.image_std, pad=config.pad_to_square)(
        image.transpose(2, 0, 1).copy()
    )
    difference = (theirs["pixel_values"][0] - ours).abs()
    one_grey_level = 1.01 / 255 / min(config.image_std)
    assert difference.max() <= one_grey_level and difference.mean() <= 1e-3
