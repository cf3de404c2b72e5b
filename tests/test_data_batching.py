# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Collation and length-grouped distributed batch sampling."""

from __future__ import annotations

import pytest
import torch

from monai_llava_med.data import LengthGroupedBatchSampler, LlavaMedCollator
from monai_llava_med.errors import RecordError


def _sample(n, n_img, sid, img_id=9, tokens=2):
    ids = torch.arange(10, 10 + n)
    ids[1 : 1 + n_img * tokens] = img_id
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(n, dtype=torch.long),
        "labels": torch.where(torch.arange(n) >= n - 2, ids, torch.tensor(-100)),
        "pixel_values": None if n_img == 0 else torch.full((n_img, 3, 4, 4), float(sid)),
        "num_images": n_img,
        "id": f"s{sid}",
    }


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_padding_sides_and_images(side):
    batch = [_sample(5, 1, 0), _sample(8, 0, 1), _sample(7, 2, 2)]
    out = LlavaMedCollator(pad_token_id=0, padding_side=side, image_token_id=9, num_image_tokens=2)(batch)
    assert out["input_ids"].shape == (3, 8)
    row0, mask0, lab0 = out["input_ids"][0], out["attention_mask"][0], out["labels"][0]
    if side == "right":
        assert row0.tolist() == batch[0]["input_ids"].tolist() + [0, 0, 0]
        assert mask0.tolist() == [1] * 5 + [0] * 3 and lab0[5:].tolist() == [-100] * 3
    else:
        assert row0.tolist() == [0, 0, 0] + batch[0]["input_ids"].tolist()
        assert mask0.tolist() == [0] * 3 + [1] * 5 and lab0[:3].tolist() == [-100] * 3
    assert out["image_counts"].tolist() == [1, 0, 2]
    # images concatenated in order of appearance: sample 0's first, then sample 2's two
    assert out["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 2.0, 2.0]
    assert out["id"] == ["s0", "s1", "s2"]


def test_collator_no_images_multiple_of_and_checks():
    out = LlavaMedCollator(pad_token_id=3, pad_to_multiple_of=8)([_sample(5, 0, 0), _sample(9, 0, 1)])
    assert out["pixel_values"] is None and out["input_ids"].shape == (2, 16)
    assert out["image_counts"].tolist() == [0, 0]
    gen = [{k: v for k, v in _sample(4, 0, 0).items() if k != "labels"}]
    assert "labels" not in LlavaMedCollator(0)(gen)
    bad = _sample(6, 1, 5)
    bad["num_images"] = 2
    with pytest.raises(RecordError, match="s5"):
        LlavaMedCollator(0)([bad])
    with pytest.raises(RecordError, match="2 image tokens for 1 images x 3 tokens"):
        LlavaMedCollator(0, image_token_id=9, num_image_tokens=3)([_sample(6, 1, 6)])


def _epoch(lengths, bs, world, drop_last, epoch=0, seed=3, mult=4):
    per_rank = []
    for r in range(world):
        s = LengthGroupedBatchSampler(
            lengths, bs, num_replicas=world, rank=r, seed=seed, drop_last=drop_last, mega_batch_mult=mult
        )
        s.set_epoch(epoch)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
    return per_rank


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_partitions_across_ranks(drop_last):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 500, (103,), generator=g).tolist()
    per_rank = _epoch(lengths, 4, 3, drop_last)
    assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
    flat = [i for rank in per_rank for b in rank for i in b]
    assert all(len(b) == 4 for rank in per_rank for b in rank)
    if drop_last:
        assert len(flat) == 96 and len(set(flat)) == 96  # disjoint, tail dropped
    else:
        assert set(flat) == set(range(103)) and len(flat) == 108  # all covered, 5 repeats pad the tail
    # step k on every rank comes from the same sorted group: similar lengths across ranks
    spreads = []
    for step in range(len(per_rank[0])):
        ls = [lengths[i] for r in range(3) for i in per_rank[r][step]]
        spreads.append(max(ls) - min(ls))
    assert sum(spreads) / len(spreads) < 0.5 * (max(lengths) - min(lengths))
    # the longest sample of the epoch is in the first step (an OOM shows at once)
    assert max(lengths[i] for i in flat) in [lengths[i] for r in range(3) for i in per_rank[r][0]]


def test_sampler_epochs_and_padding_waste():
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(20, 1000, (400,), generator=g).tolist()
    e0, e0b, e1 = (_epoch(lengths, 8, 2, True, ep, mult=50) for ep in (0, 0, 1))
    assert e0 == e0b and e0 != e1

    def waste(batches):
        pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
        return pad / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    rand = [list(range(400))[i : i + 8] for i in range(0, 400, 8)]
    assert waste(rand) > 0.3 and waste([b for r in e0 for b in r]) < 0.02


def test_collator_pads_position_ids_when_samples_carry_them():
    samples = [{"input_ids": [5, 6, 7], "position_ids": [3, 4, 5]}, {"input_ids": [8], "position_ids": [9]}]
    batch = LlavaMedCollator(0)(samples)
    assert batch["position_ids"].tolist() == [[3, 4, 5], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert "position_ids" not in LlavaMedCollator(0)([{"input_ids": [1]}])
