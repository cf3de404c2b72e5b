# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The native 3-D ResNet tower (monai_resnet3d): grid and parameter count against MONAI's own ResNet, the tokens it
gives, BatchNorm of a frozen tower, MedicalNet-style weight files, save/load and a DeepSpeed step."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import volume_vqa_data, write_weight_file
from monai.networks.nets import ResNet

from monai_llava_med.errors import CheckpointError
from monai_llava_med.networks import (
    LlavaMedConfig,
    MonaiResNet3DTower,
    build_llava_med,
    configure_stage,
    estimate_parameters,
    export_hf_llava,
    load_pretrained,
    load_vision_weights,
    monai_resnet3d_config,
    save_pretrained,
)

#: MedicalNet's ResNet-10 layout (MONAI's get_medicalnet_pretrained_resnet_args(10): shortcut B, no downsample
#: bias), at a quarter of its widths to keep the test fast
MEDICALNET_10 = {"layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128], "conv1_t_size": 7, "conv1_t_stride": 2,
                 "shortcut_type": "B", "bias_downsample": False}
GEOMETRIES = [
    {},
    MEDICALNET_10,
    {"block": "bottleneck", "layers": [2, 1, 1, 1], "shortcut_type": "B", "bias_downsample": True},
    {"img_size": [40, 50, 66], "conv1_t_size": [5, 7, 3], "conv1_t_stride": [2, 1, 2],
     "block_inplanes": [8, 8, 16, 16]},
    {"no_max_pool": True, "pool": [2, 2, 2], "block_inplanes": [8, 8, 16, 32]},
    {"no_max_pool": True, "pool": [1, 2, 2], "merge": [2, 1, 1], "block_inplanes": [8, 8, 16, 32]},
]


def _config(tokenizer=None, **vision) -> LlavaMedConfig:
    extra = {} if tokenizer is None else {"image_token_id": tokenizer.convert_tokens_to_ids("<image>")}
    return LlavaMedConfig.tiny_3d(vision_config=monai_resnet3d_config(**vision), **extra)


def _monai_resnet(vision: dict) -> ResNet:
    """MONAI's ResNet built straight from the same keyword arguments."""
    skip = ("model_type", "img_size", "pool", "merge", "in_channels")
    kwargs = {k: v for k, v in monai_resnet3d_config(**vision).items() if k not in skip}
    for key in ("conv1_t_size", "conv1_t_stride"):
        kwargs[key] = tuple(kwargs[key]) if isinstance(kwargs[key], list) else kwargs[key]
    return ResNet(spatial_dims=3, n_input_channels=1, feed_forward=False, **kwargs)


@pytest.mark.parametrize("vision", GEOMETRIES)
def test_grid_width_and_parameters_match_monai(vision):
    config = _config(**vision)
    reference = _monai_resnet(vision)
    grid = {}
    reference.layer4.register_forward_hook(lambda m, i, out: grid.update(shape=tuple(out.shape)))
    with torch.no_grad():
        reference.eval()(torch.zeros(1, 1, *config.volume_size))
    _, width, *cells = grid["shape"]
    pool, merge = (monai_resnet3d_config(**vision).get(k, [1, 1, 1]) for k in ("pool", "merge"))
    assert config.num_image_tokens == math.prod(c // p // m for c, p, m in zip(cells, pool, merge))
    assert estimate_parameters(config)["vision"] == sum(p.numel() for p in reference.parameters())
    model = build_llava_med(config)
    assert model.projector[0].in_features == width * math.prod(merge) == model.vision_tower.hidden_size


def test_tokens_are_monai_last_stage_in_raster_order_pooled_or_merged():
    torch.manual_seed(0)
    tower = MonaiResNet3DTower(monai_resnet3d_config(no_max_pool=True)).eval()  # 4 x 4 x 4 grid
    pooled = MonaiResNet3DTower(monai_resnet3d_config(no_max_pool=True, pool=[2, 2, 2])).eval()
    merged = MonaiResNet3DTower(monai_resnet3d_config(no_max_pool=True, merge=[2, 2, 2])).eval()
    pooled.load_state_dict(tower.state_dict())
    merged.load_state_dict(tower.state_dict())
    reference = _monai_resnet({"no_max_pool": True})
    reference.load_state_dict({k.removeprefix("resnet."): v for k, v in tower.state_dict().items()})
    stage = {}
    reference.layer4.register_forward_hook(lambda m, i, out: stage.update(out=out))
    x = torch.randn(2, 1, 32, 64, 64)
    with torch.no_grad():
        full, small, wide = tower(x), pooled(x), merged(x)
        reference.eval()(x)
    assert full.shape == (2, 64, 128) and small.shape == (2, 8, 128) and wide.shape == (2, 8, 8 * 128)
    for d, h, w in ((0, 0, 0), (1, 2, 3), (3, 3, 1)):
        torch.testing.assert_close(full[:, d * 16 + h * 4 + w], stage["out"][:, :, d, h, w])
    block = [d * 16 + h * 4 + w for d in (2, 3) for h in (0, 1) for w in (2, 3)]  # pooled token (1, 0, 1)
    torch.testing.assert_close(small[:, 4 + 1], full[:, block].mean(1))
    # merged token (1, 0, 1): MONAI's cells of the same block side by side, 128 features each, in raster order
    cells = [stage["out"][:, :, d, h, w] for d in (2, 3) for h in (0, 1) for w in (2, 3)]
    torch.testing.assert_close(wide[:, 4 + 1], torch.cat(cells, dim=1))
    one = MonaiResNet3DTower(monai_resnet3d_config(merge=[2, 2, 2]))  # the default 2 x 2 x 2 grid: one token
    assert one.num_tokens == 1 and one.hidden_size == 1024
    with pytest.raises(ValueError, match="takes \\(N, 1, 32, 64, 64\\) volumes"):
        tower(torch.rand(1, 1, 16, 64, 64))


def test_a_frozen_tower_keeps_its_batchnorm_statistics(tiny_tokenizer):
    model = build_llava_med(_config(tiny_tokenizer))
    configure_stage(model, "stage2")  # tower frozen
    model.train()
    bn = model.vision_tower.resnet.bn1
    before = bn.running_mean.clone()
    model.encode_images(torch.rand(2, 1, 32, 64, 64) * 5)
    assert torch.equal(bn.running_mean, before) and not bn.training
    configure_stage(model, "stage2", train_vision=True)
    model.train()
    model.encode_images(torch.rand(2, 1, 32, 64, 64) * 5)
    assert not torch.equal(bn.running_mean, before) and bn.training
    model.eval()
    assert not bn.training


@pytest.mark.parametrize(
    "vision, message",
    [
        ({"block": "wide"}, "block must be one of"),
        ({"layers": [1, 1, 1]}, "4 integers"),
        ({"block_inplanes": [16, 32, 64, 0]}, r"block_inplanes\[3\] = 0 is outside"),
        ({"no_max_pool": True, "conv1_t_stride": 1, "img_size": [64, 64, 64]}, "512 tokens per volume .*more than 256"),
        ({"pool": [3, 2, 2]}, "not a multiple of vision_config.pool"),
        ({"merge": [1, 4, 1]}, r"pooled grid \[2, 2, 2\] is not a multiple of vision_config.merge \[1, 4, 1\]"),
        ({"merge": [2, 2]}, "must be 3 integers"),
        ({"patch_size": [4, 8, 8]}, "unknown keys"),
        ({"shortcut_type": "C"}, "shortcut_type must be one of"),
    ],
)
def test_config_refuses_bad_resnet_fields(vision, message):
    with pytest.raises(CheckpointError, match=message):
        _config(**vision)


def test_only_the_last_stage_feeds_the_projector():
    with pytest.raises(ValueError, match="last stage only"):
        LlavaMedConfig.tiny_3d(vision_config=monai_resnet3d_config(), vision_feature_layer=-2)


def _trained_bn_model(tokenizer) -> torch.nn.Module:
    """A model whose BatchNorm statistics are no longer the initial zeros and ones."""
    torch.manual_seed(1)
    model = build_llava_med(_config(tokenizer))
    configure_stage(model, "stage2", train_vision=True)
    model.train()
    model.encode_images(torch.rand(4, 1, 32, 64, 64) * 3)
    return model.eval()


def test_save_load_round_trip_keeps_batchnorm_buffers(tiny_tokenizer, tmp_path):
    model = _trained_bn_model(tiny_tokenizer)
    save_pretrained(model, tmp_path / "m", tiny_tokenizer)
    loaded, _ = load_pretrained(tmp_path / "m", dtype=torch.float32)
    assert isinstance(loaded.vision_tower, MonaiResNet3DTower) and loaded.config == model.config
    reference = model.state_dict()
    assert set(loaded.state_dict()) == set(reference)
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    assert int(loaded.vision_tower.resnet.bn1.num_batches_tracked) == 1
    volumes = torch.rand(2, 1, 32, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(volumes), model.encode_images(volumes))
    with pytest.raises(CheckpointError, match="monai_resnet3d"):
        export_hf_llava(model, tiny_tokenizer, tmp_path / "hf")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_medicalnet_style_file_starts_the_tower(tiny_tokenizer, tmp_path, suffix):
    """A file laid out like MedicalNet's resnet_10.pth: {"state_dict": {"module.conv1.weight", ...,
    "module.conv_seg.*"}} from a DataParallel save of the encoder plus its segmentation head."""
    torch.manual_seed(2)
    encoder = _monai_resnet(MEDICALNET_10)
    encoder.train()(torch.rand(2, 1, 32, 64, 64))  # non-trivial BatchNorm statistics
    head = torch.nn.Sequential(torch.nn.ConvTranspose3d(128, 32, 2, stride=2), torch.nn.Conv3d(32, 2, 1))
    state = {f"module.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"module.conv_seg.{k}": v for k, v in head.state_dict().items()})
    path = write_weight_file(state, tmp_path / f"resnet_10{suffix}")
    model = build_llava_med(_config(tiny_tokenizer, **MEDICALNET_10))
    load_vision_weights(model.vision_tower, path)
    mine, theirs = model.vision_tower.resnet.state_dict(), encoder.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert mine["bn1.num_batches_tracked"].dtype == torch.int64
    stage = {}
    encoder.layer4.register_forward_hook(lambda m, i, out: stage.update(out=out))
    x = torch.rand(1, 1, 32, 64, 64)
    with torch.no_grad():
        encoder.eval()(x)
        torch.testing.assert_close(model.vision_tower.eval()(x), stage["out"].flatten(2).transpose(1, 2))


def test_resnet_weights_that_do_not_fit_are_listed(tiny_tokenizer, tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(_monai_resnet(MEDICALNET_10).state_dict(), path)
    model = build_llava_med(_config(tiny_tokenizer))  # shortcut A: no downsample convolutions, 3 x 7 x 7 stem
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): resnet.layer2.0.downsample") as err:
        load_vision_weights(model.vision_tower, path)
    assert "shape mismatch" in str(err.value) and "resnet.conv1.weight" in str(err.value)


@pytest.mark.deepspeed
def test_stage2_step_trains_the_resnet_tower(tiny_tokenizer, tmp_path):
    pytest.importorskip("deepspeed")
    from monai_llava_med.engines import build_trainer

    config = _config(tiny_tokenizer)
    data = volume_vqa_data(config, tiny_tokenizer, tmp_path)
    torch.manual_seed(0)
    start = build_llava_med(config)
    save_pretrained(start, tmp_path / "init", tiny_tokenizer)
    trainer = build_trainer(
        "stage2", train_data=data, init_from=str(tmp_path / "init"), tokenizer=tiny_tokenizer,
        output_dir=str(tmp_path / "run"), micro_batch_size=4, global_batch_size=4, max_steps=2, learning_rate=1e-3,
        gradient_checkpointing=True, save_every_n_steps=0, export=True, train_vision=True,
    )
    trainer.run()
    assert trainer.optimizer_steps == 2
    exported, _ = load_pretrained(tmp_path / "run" / "model", dtype=torch.float32)
    before, after = start.vision_tower.state_dict(), exported.vision_tower.state_dict()
    moved = [k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert len(moved) == sum(1 for k in before if k.endswith("weight"))  # every conv and norm weight trained
    assert int(after["resnet.bn1.num_batches_tracked"]) == 2  # one forward per optimizer step (no recompute)
