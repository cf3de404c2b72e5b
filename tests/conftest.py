# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Shared fixtures: offline settings, a tiny tokenizer and tiny LLaVA-Med networks."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest
import torch

TINY_CORPUS = [
    "Is there a lesion in the left lung? Yes, there is a bright lesion in the left lung.",
    "How many lesions are visible? Two lesions are visible in the liver.",
    "What modality is this image? This is a CT scan of the abdomen.",
    "Is the finding on the right side? No, it is on the left side.",
    "The chest radiograph shows no pleural effusion and a normal heart size.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE of ~300 tokens with <image> added and <unk> as pad."""
    from monai_llava_med.conversation import build_bpe_tokenizer

    return build_bpe_tokenizer(TINY_CORPUS * 4, vocab_size=300)


@pytest.fixture()
def tiny_config(tiny_tokenizer):
    """The tiny preset with its image token id taken from the tokenizer (16 image tokens per image)."""
    from monai_llava_med.networks import LlavaMedConfig

    return LlavaMedConfig.tiny(image_token_id=tiny_tokenizer.convert_tokens_to_ids("<image>"))


@pytest.fixture()
def tiny_model(tiny_config):
    from monai_llava_med.networks import build_llava_med

    torch.manual_seed(0)
    return build_llava_med(tiny_config).eval()


def make_batch(config, padding_side: str = "left", seed: int = 0):
    """Two samples of different lengths: the first with two images, the second with none.

    Returns:
        ``(input_ids, attention_mask, pixel_values)`` with ``pixel_values`` of shape ``(2, 3, S, S)``.
    """
    gen = torch.Generator().manual_seed(seed)
    n, image = config.num_image_tokens, config.image_token_id
    first = [1, 17, 23] + [image] * n + [31, 40] + [image] * n + [52, 60]
    second = [1, 70, 81, 90, 101, 44]
    length = len(first)
    pad = [0] * (length - len(second))
    ids = torch.tensor([first, pad + second if padding_side == "left" else second + pad])
    mask = torch.ones_like(ids)
    if padding_side == "left":
        mask[1, : len(pad)] = 0
    else:
        mask[1, len(second) :] = 0
    pixels = torch.randn(2, 3, config.image_size, config.image_size, generator=gen)
    return ids, mask, pixels


def write_weight_file(state, path):
    """Write ``state`` as a pretrained-weights file a user could hand us: ``{"state_dict": state}`` through
    ``torch.save`` for ``.pt``/``.pth``, a flat safetensors file for ``.safetensors``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path


def volume_vqa_data(config, tokenizer, folder, n: int = 8):
    """A phantom VQA dataset whose items carry real volumes: two 3-D CT phantoms written as NIfTI to ``folder`` and
    read by ``pixels_from_config(config)``, alternated by question length (for the 3-D towers' training tests)."""
    import numpy as np

    from monai_llava_med.data import PhantomVQADataset
    from monai_llava_med.data.phantom import generate_phantom
    from monai_llava_med.data.phantom.writers import write_nifti
    from monai_llava_med.transforms import pixels_from_config

    pipeline = pixels_from_config(config)
    volumes = []
    for seed in (0, 1):
        case = generate_phantom(np.random.default_rng(seed), size=64, ndim=3, depth=16, modality="CT")
        volumes.append(pipeline(write_nifti(case, folder / f"case{seed}.nii.gz"))["pixel_values"])

    def with_volume(item):
        item["pixel_values"] = volumes[len(item["question"]) % 2]
        return item

    return PhantomVQADataset(n, size=32, tokenizer=tokenizer, num_image_tokens=config.num_image_tokens,
                             image_token_id=config.image_token_id, max_length=128, transform=with_volume)


def spawn_ranks(worker, out_dir, nprocs: int = 2) -> None:
    """Run ``worker(rank, port, out_dir)`` in ``nprocs`` spawned processes that meet on a free loopback port.

    Spawn, not fork: a forked worker would inherit the process group an in-process DeepSpeed test left.
    """
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port, str(out_dir)), nprocs=nprocs, start_method="spawn")
