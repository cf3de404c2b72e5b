# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Shared prompt prefixes in one ``generate``: rows asking about the same image run its prefix once, and every
row's answer is the one it gets alone."""

from __future__ import annotations

import pytest
import torch

from monai_llava_med.networks import LlavaMedConfig, build_llava_med, monai_resnet3d_config
from monai_llava_med.networks.shared_prefix import prefix_cut, shared_prefix_inputs, unique_images


def _batch(config, pixels=None):
    """Five left-padded prompts: rows 0-2 about image A (different questions), row 3 the same ids as row 0 about
    image B, row 4 without an image; pixels ``(A, A, A, B)`` in order of appearance."""
    n, image = config.num_image_tokens, config.image_token_id
    head = [1, 17, 23] + [image] * n
    prompts = [head + [31, 40, 52], head + [33, 60], head + [35, 36, 37, 38, 39], head + [31, 40, 52], [1, 70, 81, 90]]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    if pixels is None:
        pixels = torch.randn(2, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(1))
    a, b = pixels
    return prompts, ids, mask, torch.stack([a, a, a, b])


def _generate(model, ids, mask, pixels, share):
    out = model.generate(ids, mask, pixels, max_new_tokens=6, eos_token_id=-1, output_logits=True,
                         return_dict_in_generate=True, share_prefixes=share)
    return out.sequences, torch.stack(out.logits, 1)


def test_prefix_cut_ends_at_the_last_image_token_and_leaves_one_token():
    assert prefix_cut(torch.tensor([1, 9, 9, 5, 6]), 9) == 3
    assert prefix_cut(torch.tensor([1, 9, 9]), 9) == 2  # the last token always runs in generate
    assert prefix_cut(torch.tensor([1, 5, 6]), 9) == 0


@pytest.mark.parametrize("tower", ["clip", "resnet3d"])
def test_shared_prefixes_give_every_row_its_own_answer(tower, tiny_model, tiny_config, tiny_tokenizer):
    if tower == "resnet3d":  # MONAI's 3-D ResNet, batch norm in evaluation mode: volumes (N, 1, D, H, W)
        tiny_config = LlavaMedConfig.tiny_3d(vision_config=monai_resnet3d_config(),
                                             image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
        torch.manual_seed(0)
        tiny_model = build_llava_med(tiny_config).eval()
        volumes = torch.rand(2, 1, *tiny_config.volume_size, generator=torch.Generator().manual_seed(1))
        prompts, ids, mask, pixels = _batch(tiny_config, volumes)
    else:
        prompts, ids, mask, pixels = _batch(tiny_config)
    shared, shared_logits = _generate(tiny_model, ids, mask, pixels, True)
    plain, plain_logits = _generate(tiny_model, ids, mask, pixels, False)
    assert torch.equal(shared, plain)
    torch.testing.assert_close(shared_logits, plain_logits, atol=1e-5, rtol=1e-5)
    views = [pixels[:1], pixels[1:2], pixels[2:3], pixels[3:], None]
    for row, (prompt, view) in enumerate(zip(prompts, views)):  # each row alone: no padding, no neighbours
        alone, alone_logits = _generate(tiny_model, torch.tensor([prompt]), None, view, False)
        assert torch.equal(alone[0], shared[row])
        torch.testing.assert_close(alone_logits[0], shared_logits[row], atol=1e-5, rtol=1e-5)


def test_only_rows_with_equal_ids_and_images_share(tiny_model, tiny_config):
    _, ids, mask, pixels = _batch(tiny_config)
    embeds = tiny_model.embed(ids, pixels)
    lm, image = tiny_model.language_model, tiny_config.image_token_id
    new_embeds, new_mask, cache = shared_prefix_inputs(lm, ids, mask, embeds, image)
    span = 3 + tiny_config.num_image_tokens
    # generate runs only the columns after the cache: the longest question, not the longest prompt
    assert cache.get_seq_length() == span and new_embeds.shape[1] - span == 5 < ids.shape[1]
    assert new_mask[:, :span].sum(1).tolist() == [span] * 4 + [0]
    assert new_mask[:, span:].sum(1).tolist() == [3, 2, 5, 3, 4]
    keys = cache.layers[0].keys
    assert torch.equal(keys[0], keys[1]) and torch.equal(keys[0], keys[2])
    assert not torch.allclose(keys[0], keys[3])  # the same ids about another image: its own prefix
    assert shared_prefix_inputs(lm, ids[3:], mask[3:], embeds[3:], image) is None  # nothing shared: plain inputs


def test_an_evaluation_mode_tower_runs_each_distinct_image_once(tiny_model, tiny_config):
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 3, tiny_config.image_size, tiny_config.image_size, generator=gen)
    pixels = torch.stack([a, b, a, a, b])
    seen = []
    hook = tiny_model.vision_tower.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        features = tiny_model.encode_images(pixels)
        alone = torch.cat([tiny_model.encode_images(x[None]) for x in pixels])
    finally:
        hook.remove()
    assert seen == [2, 1, 1, 1, 1, 1]
    torch.testing.assert_close(features, alone, atol=1e-5, rtol=1e-5)
    assert unique_images(torch.stack([a, b])) is None
    first, inverse = unique_images(pixels)
    assert first.tolist() == [0, 1] and inverse.tolist() == [0, 1, 0, 0, 1]
