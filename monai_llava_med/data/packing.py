# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Sequence packing: several tokenised samples in one row of ``max_length`` tokens.

How it interacts with attention (read before using it): a packed row must not let sample 2 attend to
sample 1. The packed sample carries ``position_ids`` that restart at 0 for every sample; transformers 5
(``masking_utils.find_packed_sequence_indices``) turns that into a block-diagonal causal mask **only when
``attention_mask`` is None and there is no cache**. So a model fed packed rows must be called with
``position_ids``, ``attention_mask=None`` and ``use_cache=False`` (the default ``use_cache=True`` creates a
cache even in training mode and silently disables the packing mask; tested in
``tests/test_data_batching.py``); the collator still returns an attention mask for the
padding at the end of rows, which the caller should drop for packed batches (padding at the end of a row
is then an extra "sample" whose labels are -100 and which nothing before it attends to). With an
attention mask passed, or a model that ignores ``position_ids``, samples would see each other: use
length-grouped batching instead. Labels stay per sample: the first token of each sample has label -100
(BOS or prompt), so no sample is trained to predict the next sample's start. Images stay in order, so
``pixel_values`` concatenation order is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["pack_indices", "pack_samples"]


def pack_indices(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of sample indices into rows of at most ``max_length`` tokens.

    Args:
        lengths: token length of every sample.
        max_length: row capacity.

    Raises:
        ValueError: a sample longer than ``max_length``.
    """
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = int(lengths[i])
        if n > max_length:
            raise ValueError(f"sample {i} has {n} tokens, more than max_length={max_length}")
        for b, f in enumerate(free):
            if f >= n:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(max_length - n)
    return bins


def pack_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Concatenate tokenised samples into one packed sample.

    Args:
        samples: dicts with ``input_ids``, optional ``labels``, optional ``pixel_values`` (k, 3, S, S).

    Returns:
        ``input_ids``, ``attention_mask`` (ones), ``labels`` (if all samples have them),
        ``position_ids`` restarting at 0 per sample, ``sequence_ids`` (sample index per token),
        ``pixel_values`` (concatenated or None), ``num_images``, ``ids`` (the packed samples' ids).
    """
    if not samples:
        raise ValueError("nothing to pack")
    ids = [torch.as_tensor(s["input_ids"], dtype=torch.long) for s in samples]
    out: dict[str, Any] = {"input_ids": torch.cat(ids)}
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    if all("labels" in s for s in samples):
        out["labels"] = torch.cat([torch.as_tensor(s["labels"], dtype=torch.long) for s in samples])
    out["position_ids"] = torch.cat([torch.arange(len(t)) for t in ids])
    out["sequence_ids"] = torch.cat([torch.full((len(t),), k, dtype=torch.long) for k, t in enumerate(ids)])
    pix = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None]
    out["pixel_values"] = torch.cat(pix, 0) if pix else None
    out["num_images"] = sum(int(p.shape[0]) for p in pix)
    out["ids"] = [s.get("id") for s in samples]
    return out
