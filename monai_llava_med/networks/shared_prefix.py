# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Shared prompt prefixes in one batched ``generate``: what several rows hold alike is run once.

Questions about the same image share everything up to and including its last image token (the system prompt,
the image tokens, their image features); only the question differs. A batch of such questions (the server's
dynamic batches, an evaluation of many questions per study) would run that prefix once per row in ``generate``'s
prefill; for a 4-view series the prefix is most of a 275-token prompt. :func:`shared_prefix_inputs` runs each
distinct prefix once (batch 1), writes its keys and values into every row that holds it, and hands ``generate``
only the rest of each row on top of that cache.

The batch is laid out as ``[padding][prefix][padding][rest]`` per row: each prefix sits at the end of a common
prefix span, each rest at the end of the row (so new tokens follow it, as with left padding), the attention mask is
0 at both paddings, and ``generate``'s position ids (the running count of the mask) give every token the position it
has in its own unpadded prompt. A row is grouped with others only when its prompt up to the cut and the embeddings
there (image features included) are equal, so the answers are those of the plain batch up to float rounding.
:func:`unique_images` likewise lets the network run its (evaluation-mode) vision tower once per distinct image.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

__all__ = ["cache_argument", "prefix_cut", "shared_prefix_inputs", "unique_images"]


def cache_argument(language_model: nn.Module) -> str:
    """The name the language model's ``forward`` takes its key/value cache by (transformers 5.24 ``cache``, earlier
    5.x releases ``past_key_values``)."""
    return _cache_argument(type(language_model).forward)


@functools.lru_cache(maxsize=64)
def _cache_argument(forward: Any) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def unique_images(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The distinct images of a batch (the views of one series asked about by several rows come once per row).

    Args:
        pixel_values: ``(N, ...)`` the batch's images.

    Returns:
        ``(first, inverse)``: the index of each distinct image's first occurrence and, per image, the position of its
        distinct image in ``first`` (``pixel_values[first][inverse]`` equals ``pixel_values``); ``None`` when all
        ``N`` are distinct.
    """
    sums = pixel_values.flatten(1).sum(1).tolist()  # a cheap key; equal images are then confirmed exactly
    first: list[int] = []
    inverse: list[int] = []
    for i, key in enumerate(sums):
        for slot, j in enumerate(first):
            if sums[j] == key and torch.equal(pixel_values[j], pixel_values[i]):
                inverse.append(slot)
                break
        else:
            inverse.append(len(first))
            first.append(i)
    if len(first) == len(sums):
        return None
    device = pixel_values.device
    return torch.tensor(first, device=device), torch.tensor(inverse, device=device)


def prefix_cut(prompt: torch.Tensor, image_token_id: int) -> int:
    """How many leading tokens of an unpadded prompt can be shared: up to and including its last image token, with
    at least one token left after it (0 for a prompt without images).

    Args:
        prompt: ``(L,)`` token ids, padding removed.
        image_token_id: the image placeholder's id.
    """
    images = torch.nonzero(prompt == image_token_id).flatten()
    return min(int(images[-1]) + 1, prompt.numel() - 1) if images.numel() else 0


def _groups(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, inputs_embeds: torch.Tensor, image_token_id: int
) -> tuple[list[list[int]], list[int], list[int]] | None:
    """Rows grouped by equal prefixes (ids and embeddings), each row's first real column and cut; ``None`` when a
    row's padding is not all on the left."""
    starts, cuts, groups = [], [], []
    keyed: dict[tuple[int, ...], list[list[int]]] = {}
    width = input_ids.shape[1]
    for r in range(input_ids.shape[0]):
        start = width - int(attention_mask[r].sum())
        if not bool(attention_mask[r, start:].all()):
            return None
        cut = prefix_cut(input_ids[r, start:], image_token_id)
        starts.append(start)
        cuts.append(cut)
        if cut == 0:
            groups.append([r])
            continue
        candidates = keyed.setdefault(tuple(input_ids[r, start : start + cut].tolist()), [])
        mine = inputs_embeds[r, start : start + cut]
        for group in candidates:
            first = group[0]
            if torch.equal(inputs_embeds[first, starts[first] : starts[first] + cut], mine):
                group.append(r)
                break
        else:
            candidates.append([r])
            groups.append(candidates[-1])
    return groups, starts, cuts


@torch.no_grad()
def shared_prefix_inputs(
    language_model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    inputs_embeds: torch.Tensor,
    image_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, DynamicCache] | None:
    """``generate``'s inputs with every shared prefix already run: the embeddings, the attention mask and the cache.

    Args:
        language_model: the causal language model ``generate`` will run.
        input_ids: ``(B, L)`` left-padded prompt ids (image placeholders expanded).
        attention_mask: ``(B, L)``, 0 at the left padding.
        inputs_embeds: ``(B, L, H)`` the prompts' embeddings, image features written in.
        image_token_id: the image placeholder's id.

    Returns:
        ``(inputs_embeds, attention_mask, cache)`` in the layout of the module docstring (``generate`` runs only
        the columns after the cache), or ``None`` when no two rows share a prefix (nothing to gain: use the plain
        inputs).
    """
    if input_ids.shape[0] < 2:  # a lone prompt has no one to share with
        return None
    found = _groups(input_ids, attention_mask, inputs_embeds, image_token_id)
    if found is None or all(len(group) < 2 for group in found[0]):
        return None
    groups, starts, cuts = found
    rows, width = input_ids.shape
    span = max(cuts)
    rest = max(width - s - c for s, c in zip(starts, cuts))
    with_prefix = [group for group in groups if cuts[group[0]]]  # one per distinct prefix
    slot = [len(with_prefix)] * rows  # rows without a prefix take the zero row after the prefixes'
    prefixes = inputs_embeds.new_zeros((len(with_prefix), span, inputs_embeds.shape[2]))
    prefix_mask = attention_mask.new_zeros((len(with_prefix), span))
    for i, group in enumerate(with_prefix):  # every distinct prefix in one left-padded pass
        head, cut = group[0], cuts[group[0]]
        prefixes[i, span - cut :] = inputs_embeds[head, starts[head] : starts[head] + cut]
        prefix_mask[i, span - cut :] = 1
        for r in group:
            slot[r] = i
    cache = DynamicCache()
    language_model(inputs_embeds=prefixes, attention_mask=prefix_mask, use_cache=True, logits_to_keep=1,
                   position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0), **{cache_argument(language_model): cache})
    index = torch.tensor(slot, device=inputs_embeds.device)
    layers = [tuple(torch.cat([kv, torch.zeros_like(kv[:1])])[index] for kv in (layer.keys, layer.values))
              for layer in cache.layers]
    embeds = inputs_embeds.new_zeros((rows, span + rest, inputs_embeds.shape[2]))
    mask = attention_mask.new_zeros((rows, span + rest))
    for r, (start, cut) in enumerate(zip(starts, cuts)):
        tail = width - start - cut
        mask[r, span - cut : span] = 1
        mask[r, span + rest - tail :] = 1
        embeds[r, span + rest - tail :] = inputs_embeds[r, start + cut :]
    return embeds, mask, DynamicCache(ddp_cache_data=layers)
