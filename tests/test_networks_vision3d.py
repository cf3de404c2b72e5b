# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The native 3-D vision tower: config checks, tokens, forward/generate, UNETR weights, save/load, export, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import volume_vqa_data, write_weight_file
from monai.networks.nets import UNETR, ViT

from monai_llava_med.errors import CheckpointError
from monai_llava_med.networks import (
    LlavaMedConfig,
    MonaiViT3DTower,
    build_llava_med,
    configure_stage,
    estimate_parameters,
    export_hf_llava,
    load_pretrained,
    load_vision_weights,
    monai_vit3d_config,
    save_pretrained,
)

#: a tower shaped like the ViT inside MONAI's UNETR (patch 16, 12 layers) on 32 x 64 x 64 volumes: 32 tokens
UNETR_SIZES = {"img_size": [32, 64, 64], "patch_size": [16, 16, 16], "pool": [1, 1, 1], "hidden_size": 48,
               "mlp_dim": 96, "num_layers": 12, "num_heads": 4}


def _config(tokenizer, **vision):
    return LlavaMedConfig.tiny_3d(image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                                  vision_config=monai_vit3d_config(**vision))


def _unetr() -> UNETR:
    torch.manual_seed(3)
    return UNETR(in_channels=1, out_channels=2, img_size=(32, 64, 64), feature_size=8, hidden_size=48, mlp_dim=96,
                 num_heads=4)


def test_token_count_from_grid_and_pool():
    config = LlavaMedConfig.tiny_3d()
    assert config.is_volume and config.volume_size == (32, 64, 64) and config.num_image_tokens == 64
    assert LlavaMedConfig.tiny_3d(vision_config=monai_vit3d_config(pool=[1, 2, 2])).num_image_tokens == 128
    assert LlavaMedConfig.tiny_3d(vision_config=monai_vit3d_config(**UNETR_SIZES)).num_image_tokens == 32
    merged = LlavaMedConfig.tiny_3d(vision_config=monai_vit3d_config(merge=[1, 2, 2]))  # 4 x 4 x 4 -> 4 x 2 x 2
    assert merged.num_image_tokens == 16 and build_llava_med(merged).projector[0].in_features == 4 * 64
    old = LlavaMedConfig.tiny()  # 2-D configs are unchanged
    assert not old.is_volume and old.volume_size is None and old.num_image_tokens == 16 and old.image_size == 32


@pytest.mark.parametrize(
    "vision, message",
    [
        ({"pool": [1, 1, 1]}, "512 tokens per volume .*more than 256"),
        ({"img_size": [30, 64, 64]}, "not a multiple of patch_size"),
        ({"pool": [3, 2, 2]}, "not a multiple of vision_config.pool"),
        ({"merge": [3, 1, 1]}, "not a multiple of vision_config.merge"),
        ({"patch_size": [4, 8]}, "must be 3 integers"),
        ({"hidden_size": 66}, "multiple of num_heads"),
        ({"image_size": 64}, "unknown keys"),
    ],
)
def test_volume_config_refuses_bad_geometry(vision, message):
    with pytest.raises(CheckpointError, match=message):
        LlavaMedConfig.tiny_3d(vision_config=monai_vit3d_config(**vision))


def test_volume_config_refuses_cls_and_round_trips(tmp_path):
    with pytest.raises(CheckpointError, match="no CLS token"):
        LlavaMedConfig.tiny_3d(vision_feature_select_strategy="cls_patch")
    with pytest.raises(CheckpointError, match="pools its own token grid"):  # 2-D token pooling is not for volumes
        LlavaMedConfig.tiny_3d(token_pool=2)
    config = LlavaMedConfig.tiny_3d()
    assert LlavaMedConfig.load(config.save(tmp_path)) == config


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_parameter_estimate_is_exact(qkv_bias):
    config = LlavaMedConfig.tiny_3d(vision_config=monai_vit3d_config(qkv_bias=qkv_bias))
    model = build_llava_med(config)
    assert estimate_parameters(config)["vision"] == sum(p.numel() for p in model.vision_tower.parameters())
    assert estimate_parameters(config)["projector"] == sum(p.numel() for p in model.projector.parameters())


def test_tower_matches_monai_vit_and_pools_in_raster_order():
    torch.manual_seed(0)
    tower = MonaiViT3DTower(1, (32, 64, 64), (4, 8, 8), 64, 128, 2, 4, pool=(1, 1, 1))
    pooled = MonaiViT3DTower(1, (32, 64, 64), (4, 8, 8), 64, 128, 2, 4, pool=(2, 2, 2))
    pooled.load_state_dict(tower.state_dict())
    vit = ViT(1, (32, 64, 64), (4, 8, 8), 64, 128, 2, 4, spatial_dims=3, classification=False)
    vit.load_state_dict({k.removeprefix("vit."): v for k, v in tower.state_dict().items()})
    x = torch.randn(2, 1, 32, 64, 64)
    with torch.no_grad():
        full, small, reference = tower(x), pooled(x), vit(x)[0]
    torch.testing.assert_close(full, reference)
    assert small.shape == (2, 64, 64)
    # pooled token (d, h, w) = (1, 2, 3) is the mean of patches d in {2, 3}, h in {4, 5}, w in {6, 7} (grid 8 x 8 x 8)
    block = [d * 64 + h * 8 + w for d in (2, 3) for h in (4, 5) for w in (6, 7)]
    torch.testing.assert_close(small[:, 1 * 16 + 2 * 4 + 3], full[:, block].mean(1))
    merged = MonaiViT3DTower(1, (32, 64, 64), (4, 8, 8), 64, 128, 2, 4, pool=(2, 2, 2), merge=(2, 1, 1))
    merged.load_state_dict(tower.state_dict())
    with torch.no_grad():
        pairs = merged(x)
    # merged token (0, 1, 2) of the 2 x 4 x 4 grid: pooled cells (0, 1, 2) and (1, 1, 2), 64 features each
    assert pairs.shape == (2, 32, 128)
    torch.testing.assert_close(pairs[:, 1 * 4 + 2], torch.cat([small[:, 1 * 4 + 2], small[:, 16 + 1 * 4 + 2]], dim=1))


def test_forward_and_generate_tiny_3d_model(tiny_tokenizer):
    config = _config(tiny_tokenizer)
    torch.manual_seed(0)
    model = build_llava_med(config, stage="stage2").eval()
    n = config.num_image_tokens
    ids = torch.tensor([[1, 17, 23] + [config.image_token_id] * n + [31, 40, 52]])
    volumes = torch.rand(1, 1, 32, 64, 64)
    out = model(ids, torch.ones_like(ids), volumes, labels=ids.masked_fill(ids == config.image_token_id, -100))
    assert out.logits.shape == (1, ids.shape[1], config.text_config["vocab_size"]) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.projector[0].weight.grad is not None and model.vision_tower.vit.norm.weight.grad is None
    new = model.generate(ids, pixel_values=volumes, max_new_tokens=5)
    assert new.shape[0] == 1 and 1 <= new.shape[1] <= 5
    with pytest.raises(ValueError, match="takes \\(N, 1, 32, 64, 64\\) volumes"):
        model.encode_images(torch.rand(1, 3, 32, 32))
    # the features depend on the volume: a flipped volume gives other tokens
    with torch.no_grad():
        assert not torch.allclose(model.encode_images(volumes), model.encode_images(volumes.flip(-1)))


def test_stage_freezes_the_tower_unless_train_vision(tiny_tokenizer):
    model = build_llava_med(_config(tiny_tokenizer))
    configure_stage(model, "stage2")
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    configure_stage(model, "stage2", train_vision=True)
    assert all(p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.language_model.parameters())


def test_save_load_round_trip(tiny_tokenizer, tmp_path):
    config = _config(tiny_tokenizer)
    torch.manual_seed(1)
    model = build_llava_med(config).eval()
    save_pretrained(model, tmp_path / "m", tiny_tokenizer)
    loaded, tokenizer = load_pretrained(tmp_path / "m", dtype=torch.float32)
    assert loaded.config == config and isinstance(loaded.vision_tower, MonaiViT3DTower)
    reference = loaded.state_dict()
    assert set(reference) == set(model.state_dict())
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    volumes = torch.rand(2, 1, 32, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(volumes), model.encode_images(volumes))


def test_hf_export_refuses_a_3d_tower(tiny_tokenizer, tmp_path):
    model = build_llava_med(_config(tiny_tokenizer))
    with pytest.raises(CheckpointError, match="3-D tower"):
        export_hf_llava(model, tiny_tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())


@pytest.mark.parametrize("suffix, prefix", [(".pt", ""), (".safetensors", ""), (".pt", "module.")])
def test_unetr_weights_start_the_tower(tiny_tokenizer, tmp_path, suffix, prefix):
    unetr = _unetr()
    state = {f"{prefix}{k}": v for k, v in unetr.state_dict().items()}
    path = write_weight_file(state, tmp_path / f"unetr{suffix}")
    model = build_llava_med(_config(tiny_tokenizer, **UNETR_SIZES))
    load_vision_weights(model.vision_tower, path)
    mine = model.vision_tower.vit.state_dict()
    theirs = unetr.vit.state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    x = torch.rand(1, 1, 32, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.vision_tower(x), unetr.vit(x)[0])


def test_vision_weights_that_do_not_fit_are_listed(tiny_tokenizer, tmp_path):
    path = tmp_path / "unetr.pt"
    state = _unetr().state_dict()
    torch.save(state, path)
    model = build_llava_med(_config(tiny_tokenizer))  # 2 layers of width 64: neither depth nor width fit
    with pytest.raises(CheckpointError, match=r"130 unexpected key\(s\): vit.blocks.10.attn") as err:
        load_vision_weights(model.vision_tower, path)
    assert "shape mismatch" in str(err.value) and "unetr.pt" in str(err.value)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if "blocks.11." not in k}, partial)
    twelve = build_llava_med(_config(tiny_tokenizer, **UNETR_SIZES))
    with pytest.raises(CheckpointError, match="missing key.*vit.blocks.11"):
        load_vision_weights(twelve.vision_tower, partial)
    clip = build_llava_med(LlavaMedConfig.tiny())
    with pytest.raises(CheckpointError, match="for a 3-D tower"):
        load_vision_weights(clip.vision_tower, path)


@pytest.mark.deepspeed
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_stage2_step_trains_a_unetr_started_tower(tiny_tokenizer, tmp_path, zero):
    pytest.importorskip("deepspeed")
    from monai_llava_med.engines import build_trainer

    unetr = _unetr()
    torch.save(unetr.state_dict(), tmp_path / "unetr.pt")
    config = _config(tiny_tokenizer, **UNETR_SIZES)
    data = volume_vqa_data(config, tiny_tokenizer, tmp_path)
    trainer = build_trainer(
        "stage2", train_data=data, model_config=config, tokenizer=tiny_tokenizer, output_dir=str(tmp_path / "run"),
        micro_batch_size=4, global_batch_size=4, max_steps=2, learning_rate=1e-3, gradient_checkpointing=True,
        save_every_n_steps=0, export=True, deepspeed=zero, train_vision=True,
        vision_weights=str(tmp_path / "unetr.pt"),
    )
    start = unetr.vit.state_dict()
    if zero == "zero2":  # ZeRO-3 partitions the parameters: compared through the export below
        assert all(torch.equal(start[k], v) for k, v in trainer.network.vision_tower.vit.state_dict().items())
    trainer.run()
    assert trainer.optimizer_steps == 2
    exported, _ = load_pretrained(tmp_path / "run" / "model", dtype=torch.float32)
    assert exported.config.is_volume
    still = sorted(k for k, v in exported.vision_tower.vit.state_dict().items() if torch.equal(start[k], v))
    assert still == sorted(k for k in start if ".norm_cross_attn." in k)  # all but the unused cross-attention norms
    # each weight moved by a small step from UNETR's: the tower started from the file, not from random values
    drift = max(float((v - start[k]).abs().max()) for k, v in exported.vision_tower.vit.state_dict().items())
    assert drift < 0.05


def test_predictor_answers_from_the_whole_volume(tiny_tokenizer, tmp_path):
    from monai_llava_med.data.phantom import generate_phantom
    from monai_llava_med.data.phantom.writers import write_dicom
    from monai_llava_med.engines import LlavaMedPredictor, PrepareVqaItem

    case = generate_phantom(np.random.default_rng(0), size=64, ndim=3, depth=16, modality="CT")
    write_dicom(case, tmp_path / "series")
    torch.manual_seed(0)
    model = build_llava_med(_config(tiny_tokenizer)).eval()
    result = LlavaMedPredictor(model, tiny_tokenizer, max_new_tokens=4).ask(tmp_path / "series", "Is there a lesion?")
    assert result["views"] == [{"kind": "volume", "axes": "SAR", "size": [32, 64, 64]}]
    item = PrepareVqaItem(tiny_tokenizer, model, raise_errors=True)({"image": tmp_path / "series",
                                                                     "question": "Is there a lesion?"})
    assert item["pixel_values"].shape == (1, 1, 32, 64, 64)
    assert int((item["input_ids"] == model.config.image_token_id).sum()) == model.config.num_image_tokens
    tokens = model.generate(item["input_ids"][None], None, item["pixel_values"], max_new_tokens=4,
                            eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    assert result["answer"] == tiny_tokenizer.decode(tokens[0], skip_special_tokens=True).strip()


def test_dataset_records_with_volumes_batch_for_the_3d_tower(tiny_tokenizer, tmp_path):
    from monai_llava_med.data import LlavaMedCollator, LlavaMedDataset
    from monai_llava_med.data.phantom import generate_phantom
    from monai_llava_med.data.phantom.writers import write_nifti
    from monai_llava_med.data.records import VQARecord
    from monai_llava_med.transforms import pixels_from_config

    config = _config(tiny_tokenizer)
    paths = [write_nifti(generate_phantom(np.random.default_rng(s), size=64, ndim=3, depth=16), tmp_path / f"{s}.nii")
             for s in (0, 1)]
    records = [VQARecord(f"q{i}", "Is there a lesion?", "yes", "closed", str(p), "train", "phantom")
               for i, p in enumerate(paths)]
    data = LlavaMedDataset(records, tiny_tokenizer, num_image_tokens=config.num_image_tokens,
                           image_token_id=config.image_token_id, image_loader=pixels_from_config(config))
    batch = LlavaMedCollator(tiny_tokenizer.pad_token_id)([data[0], data[1]])
    assert batch["pixel_values"].shape == (2, 1, 32, 64, 64)
    assert not torch.equal(batch["pixel_values"][0], batch["pixel_values"][1])
    model = build_llava_med(config)
    loss = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"]).loss
    assert torch.isfinite(loss)


def test_feature_layers_are_numbered_like_clip():
    with pytest.raises(ValueError, match="vision_feature_layer"):
        LlavaMedConfig.tiny_3d(vision_feature_layer=-4)  # 2 blocks: hidden states -3 .. 2
    torch.manual_seed(0)
    tower = MonaiViT3DTower(1, (32, 64, 64), (4, 8, 8), 64, 128, 2, 4, pool=(1, 1, 1))
    x = torch.randn(1, 1, 32, 64, 64)
    with torch.no_grad():
        embedding = tower.vit.patch_embedding(x)
        first = tower.vit.blocks[0](embedding)
        torch.testing.assert_close(tower(x, 0), embedding)
        torch.testing.assert_close(tower(x, -3), embedding)
        torch.testing.assert_close(tower(x, -2), first)  # a middle layer has no final norm
        torch.testing.assert_close(tower(x, 2), tower.vit.norm(tower.vit.blocks[1](first)))
    with pytest.raises(ValueError, match="outside the 2-block tower"):
        tower(x, 3)
