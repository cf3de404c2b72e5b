# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Spatial token pooling (``LlavaMedConfig.token_pool``): values, token arithmetic, the network, save/load, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_batch
from released_v15_fixture import save_plain_tokenizer, write_released_checkpoint

from monai_llava_med.errors import CheckpointError, ExportError
from monai_llava_med.networks import (
    LlavaMedConfig,
    build_llava_med,
    export_hf_llava,
    load_pretrained,
    pool_patch_tokens,
    pooled_token_count,
    save_pretrained,
)


def _block_means(grid_values: np.ndarray, k: int) -> np.ndarray:
    """Mean of each k x k block of an (N, g, g, C) array, by explicit loops, row-major -> (N, (g/k)^2, C)."""
    n, g, _, c = grid_values.shape
    out = np.zeros((n, (g // k) ** 2, c))
    for b in range(n):
        for r in range(g // k):
            for q in range(g // k):
                total = np.zeros(c)
                for i in range(k):
                    for j in range(k):
                        total += grid_values[b, r * k + i, q * k + j]
                out[b, r * (g // k) + q] = total / (k * k)
    return out


@pytest.mark.parametrize("grid, k", [(4, 2), (6, 3), (6, 2), (4, 4), (24, 2), (24, 3)])
def test_pooled_values_equal_block_means_of_a_known_grid(grid, k):
    n, c = 2, 3
    values = np.arange(n * grid * grid * c, dtype=np.float64).reshape(n, grid, grid, c) ** 1.5  # not affine
    features = torch.tensor(values.reshape(n, grid * grid, c))  # token r * grid + q holds patch (r, q)
    pooled = pool_patch_tokens(features, grid, k)
    assert pooled.shape == (n, (grid // k) ** 2, c) and pooled.dtype == torch.float64
    np.testing.assert_allclose(pooled.numpy(), _block_means(values, k), rtol=1e-12)


def test_cls_token_is_kept_unpooled_in_front():
    values = np.arange(1 * 16 * 2, dtype=np.float64).reshape(1, 4, 4, 2)
    cls = torch.tensor([[[-7.0, 9.0]]], dtype=torch.float64)
    features = torch.cat([cls, torch.tensor(values.reshape(1, 16, 2))], dim=1)
    pooled = pool_patch_tokens(features, 4, 2, cls_token=True)
    assert pooled.shape == (1, 5, 2)
    assert pooled[0, 0].tolist() == [-7.0, 9.0]
    # first block: patches (0,0), (0,1), (1,0), (1,1) = tokens 0, 1, 4, 5 -> values 2t, 2t+1
    assert pooled[0, 1].tolist() == [(0 + 2 + 8 + 10) / 4, (1 + 3 + 9 + 11) / 4]
    assert pool_patch_tokens(features, 4, 1, cls_token=True) is features


def test_pooling_refuses_a_window_that_does_not_divide_the_grid():
    with pytest.raises(ValueError, match="dividing"):
        pool_patch_tokens(torch.zeros(1, 36, 4), 6, 4)
    with pytest.raises(ValueError, match=r"\(N, 16, C\)"):
        pool_patch_tokens(torch.zeros(1, 17, 4), 4, 2)
    assert pooled_token_count(24, 2) == 144 and pooled_token_count(24, 3, cls_token=True) == 65


@pytest.mark.parametrize("token_pool, tokens", [(1, 576), (2, 144), (3, 64), (4, 36)])
def test_v15_token_arithmetic(token_pool, tokens):
    assert LlavaMedConfig.v1_5(token_pool=token_pool).num_image_tokens == tokens
    assert LlavaMedConfig.v1_5(token_pool=token_pool, vision_feature_select_strategy="cls_patch").num_image_tokens \
        == tokens + 1


@pytest.mark.parametrize("values, match", [
    ({"token_pool": 5}, "does not divide the 24 x 24"),
    ({"token_pool": 0}, r"token_pool = 0 is outside \[1, 64\]"),
    ({"token_pool": True}, "token_pool must be an integer"),
    ({"token_pool": 2.0}, "token_pool must be an integer"),
    ({"max_views": 0}, r"max_views = 0 is outside"),
    ({"view_mode": "coronal"}, "view_mode must be one of"),
])
def test_config_refuses_bad_view_fields_with_their_name(values, match):
    with pytest.raises(CheckpointError, match=match):
        LlavaMedConfig.v1_5(**values)


def test_old_config_files_without_the_new_fields_still_load(tmp_path):
    values = LlavaMedConfig.tiny().to_dict()
    for name in ("token_pool", "max_views", "view_mode"):
        values.pop(name)
    (tmp_path / "llava_med_config.json").write_text(json.dumps(values))
    config = LlavaMedConfig.load(tmp_path)
    assert (config.token_pool, config.max_views, config.view_mode, config.num_image_tokens) == (1, 4, "axial", 16)


def test_with_view_options_sets_only_shape_free_fields():
    config = LlavaMedConfig.tiny()
    pooled = config.with_view_options(token_pool=2, max_views=None, view_mode="content")
    assert (pooled.token_pool, pooled.max_views, pooled.view_mode, pooled.num_image_tokens) == (2, 4, "content", 4)
    assert config.token_pool == 1  # a copy
    with pytest.raises(CheckpointError, match="image_size"):
        config.with_view_options(image_size=64)
    with pytest.raises(CheckpointError, match="does not divide"):
        config.with_view_options(token_pool=3)


def test_encode_images_pools_the_selected_features_before_the_projector(tiny_config):
    torch.manual_seed(0)
    pooled_config = LlavaMedConfig.from_dict({**tiny_config.to_dict(), "token_pool": 2})
    model = build_llava_med(pooled_config).eval()
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden = model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # 4 x 4 patches
        by_hand = torch.tensor(_block_means(hidden.double().numpy().reshape(3, 4, 4, -1), 2), dtype=torch.float32)
        expected = model.projector(by_hand)
        got = model.encode_images(pixels)
    assert got.shape == (3, 4, 64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_clip_336_patch_14_tower_gives_144_tokens_with_token_pool_2():
    # v1.5's grid (336 px / 14 = 24 x 24 patches) with a narrow one-layer tower, so it builds in a second
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu"}
    torch.manual_seed(0)
    model = build_llava_med(LlavaMedConfig.tiny(vision_config=vision, vision_feature_layer=-1, token_pool=2)).eval()
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.encode_images(pixels)
        hidden = model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
        by_hand = torch.tensor(_block_means(hidden.double().numpy().reshape(2, 24, 24, -1), 2), dtype=torch.float32)
    assert got.shape == (2, 144, 64) and model.config.num_image_tokens == 144
    torch.testing.assert_close(got, model.projector(by_hand), rtol=1e-5, atol=1e-5)


def test_forward_and_generate_of_a_pooled_model(tiny_config):
    torch.manual_seed(0)
    config = LlavaMedConfig.from_dict({**tiny_config.to_dict(), "token_pool": 2})
    model = build_llava_med(config).eval()
    ids, mask, pixels = make_batch(config)  # image placeholders expanded to 4 tokens each
    assert int((ids == config.image_token_id).sum()) == 2 * 4
    out = model(ids, mask, pixels, labels=ids.masked_fill(ids == config.image_token_id, -100))
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == ids.shape
    new = model.generate(ids, mask, pixels, max_new_tokens=3)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 3
    with pytest.raises(ValueError, match="4 tokens per image"):  # the unpooled count is refused
        model.embed(make_batch(tiny_config)[0], pixels)


def test_save_load_round_trip_keeps_the_view_fields(tiny_config, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    config = LlavaMedConfig.from_dict({**tiny_config.to_dict(), "token_pool": 2, "max_views": 6,
                                       "view_mode": "content"})
    model = build_llava_med(config).eval()
    save_pretrained(model, tmp_path / "m", tiny_tokenizer)
    assert json.loads((tmp_path / "m" / "llava_med_config.json").read_text())["token_pool"] == 2
    loaded, _ = load_pretrained(tmp_path / "m", dtype=torch.float32)
    assert (loaded.config.token_pool, loaded.config.max_views, loaded.config.view_mode) == (2, 6, "content")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(pixels), model.encode_images(pixels))


def test_released_v15_layout_loads_with_token_pool_overridden(tiny_tokenizer, tmp_path):
    folder = tmp_path / "llava-med-v1.5-tiny"
    write_released_checkpoint(folder, lambda f: save_plain_tokenizer(tiny_tokenizer, f),
                              tiny_tokenizer.convert_tokens_to_ids("<image>"))
    plain, _ = load_pretrained(folder, dtype=torch.float32)
    pooled, tokenizer = load_pretrained(folder, dtype=torch.float32, view_options={"token_pool": 2, "max_views": None})
    assert plain.config.num_image_tokens == 16
    assert (pooled.config.token_pool, pooled.config.num_image_tokens, pooled.config.max_views) == (2, 4, 4)
    assert tokenizer.convert_tokens_to_ids("<image>") == pooled.config.image_token_id
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hidden = plain.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        by_hand = torch.tensor(_block_means(hidden.double().numpy().reshape(1, 4, 4, -1), 2), dtype=torch.float32)
        torch.testing.assert_close(pooled.encode_images(pixels), plain.projector(by_hand), rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="view_options"):
        load_pretrained(folder, view_options={"token_pool": 3})


def test_hf_export_of_a_pooled_model_is_refused_before_writing(tiny_config, tiny_tokenizer, tmp_path):
    config = LlavaMedConfig.from_dict({**tiny_config.to_dict(), "token_pool": 2})
    with pytest.raises(ExportError, match="token_pool = 2 .*LlavaForConditionalGeneration has no such pooling"):
        export_hf_llava(build_llava_med(config), tiny_tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.deepspeed
def test_stage2_trains_the_projector_on_pooled_features_through_build_trainer(tiny_tokenizer, tmp_path):
    pytest.importorskip("deepspeed")
    pytest.importorskip("ignite")
    from monai_llava_med.data import PhantomVQADataset
    from monai_llava_med.engines import build_trainer

    config = LlavaMedConfig.tiny(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))
    data = PhantomVQADataset(8, size=32, tokenizer=tiny_tokenizer, num_image_tokens=4,  # 16 / (2 x 2)
                             image_token_id=config.image_token_id, max_length=128)
    trainer = build_trainer(
        "stage2", train_data=data, model_config=config, tokenizer=tiny_tokenizer, view_options={"token_pool": 2},
        output_dir=str(tmp_path), micro_batch_size=4, global_batch_size=4, num_epochs=1, learning_rate=1e-2,
        gradient_checkpointing=False, save_every_n_steps=0, deepspeed="zero2", export_name="tiny-pooled",
    )
    module = trainer.network
    assert module.config.num_image_tokens == 4
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer.run()
    assert trainer.optimizer_steps == 2
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision_tower."))
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("projector."))
    assert not torch.equal(before["language_model.lm_head.weight"], after["language_model.lm_head.weight"])
    exported, _ = load_pretrained(tmp_path / "model", dtype=torch.float32)
    assert exported.config.token_pool == 2 and exported.config.num_image_tokens == 4
