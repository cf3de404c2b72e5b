# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The neutral image and the teacher-forced pass that scores generated answers with it.

The **neutral image** (2-D towers: a canvas of the pad colour, the CLIP mean colour as 8-bit values, normalised like
any image, :meth:`~monai_llava_med.transforms.ImageToClipPixels.neutral`: what the bundle's blanked baseline PNG
becomes; the 3-D tower: a zero volume) is the same input for every row, so what a prompt holds up to its last image
token is, with neutral images, the same for every question asked after that image. :func:`neutral_answer_logits`
runs each such shared prefix once (its keys and values expanded to the rows that share it) and only the rest of
each row, the question and the generated answer, on top, every row in one pass (the distinct prefixes left-padded
to one span, ``[padding][prefix][rest][padding]``, each rest at the positions it has in its own prompt): a batch
of questions about 2-D images runs the image tokens once instead of once per row. The keys and values of the last
:data:`PREFIX_CACHE_SIZE` prefixes are kept per network between calls (keyed by the prefix, dtype, device and the
identity and version of every parameter, so a weight changed in place, by training or loading, is a miss):
questions asked one at a time about 2-D images run only their own tokens.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch
from transformers import DynamicCache

from ..networks import LlavaMedConfig, LlavaMedNet
from ..networks.shared_prefix import cache_argument, prefix_cut
from ..transforms.pixels import ImageToClipPixels

__all__ = ["PREFIX_CACHE_SIZE", "neutral_answer_logits", "neutral_pixels"]

#: neutral prefixes whose keys and values are kept per network between calls.
PREFIX_CACHE_SIZE = 4
_PREFIXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PREFIXES_LOCK = threading.Lock()


def neutral_pixels(config: LlavaMedConfig, like: torch.Tensor) -> torch.Tensor:
    """One neutral image shaped like one of ``like``'s images (``(1, ...)``, its dtype and device).

    Args:
        config: the network's config (image size, mean and standard deviation of the pixel normalisation).
        like: a batch of images as the network takes them: ``(N, 3, S, S)`` for a 2-D tower, ``(N, C, D, H, W)``
            for the 3-D tower (whose neutral image is zeros).
    """
    if config.is_volume:
        return torch.zeros_like(like[:1])
    neutral = ImageToClipPixels(config.image_size, config.image_mean, config.image_std).neutral()
    return neutral.unsqueeze(0).to(device=like.device, dtype=like.dtype)


def _split_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, answer: torch.Tensor, answer_mask: torch.Tensor,
    rows: Sequence[int], image_token_id: int,
) -> tuple[dict[tuple[int, ...], list[int]], dict[int, tuple[torch.Tensor, int]]]:
    """Group rows by their prompt up to the last image token (at least one prompt token left after it); per row,
    the rest of the prompt followed by the answer, and how many prompt tokens that rest holds."""
    groups: dict[tuple[int, ...], list[int]] = {}
    rests: dict[int, tuple[torch.Tensor, int]] = {}
    for r in rows:
        prompt = input_ids[r][attention_mask[r].bool()]  # the left padding dropped
        cut = prefix_cut(prompt, image_token_id)
        rests[r] = (torch.cat([prompt[cut:], answer[r][answer_mask[r]]]), prompt.numel() - cut)
        groups.setdefault(tuple(prompt[:cut].tolist()), []).append(r)
    return groups, rests


def _weights_version(network: torch.nn.Module) -> int:
    """Changes whenever a parameter is replaced or changed in place (``Tensor._version`` counts in-place writes)."""
    return hash(tuple((id(p), p._version) for p in network.parameters()))


def _prefix_kv(network: LlavaMedNet, prefix: tuple[int, ...], pixel_values: torch.Tensor,
               cache_arg: str, version: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values of ``prefix`` with neutral images (batch 1), from the cache or one pass
    (``version``: :func:`_weights_version` of the network)."""
    key = (prefix, str(pixel_values.dtype), str(pixel_values.device), version)
    with _PREFIXES_LOCK:
        kept = _PREFIXES.setdefault(network, OrderedDict())
        if key in kept:
            kept.move_to_end(key)
            return kept[key]
    config = network.config
    prefix_ids = torch.tensor([prefix], device=pixel_values.device)
    neutral = neutral_pixels(config, pixel_values)
    n_images = prefix.count(config.image_token_id) // config.num_image_tokens
    embeds = network.embed(prefix_ids, neutral.expand(n_images, *neutral.shape[1:]) if n_images else None)
    cache = DynamicCache()
    network.language_model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1, **{cache_arg: cache})
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    with _PREFIXES_LOCK:
        kept[key] = kv
        while len(kept) > PREFIX_CACHE_SIZE:
            kept.popitem(last=False)
    return kv


@torch.no_grad()
def neutral_answer_logits(
    network: LlavaMedNet,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    answer: torch.Tensor,
    answer_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    rows: Sequence[int],
) -> torch.Tensor:
    """The logits that predict each answer token with every image of its prompt replaced by the neutral image.

    Args:
        network: the network that generated the answers.
        input_ids: ``(B, L)`` left-padded prompts, as given to ``generate``.
        attention_mask: ``(B, L)``.
        answer: ``(B, T)`` the generated answers, padded after their end.
        answer_mask: ``(B, T)`` True at the answers' tokens (their end token included).
        pixel_values: the batch's images (only their shape, dtype and device are used).
        rows: the rows to score, in order; each prompt holds at least one image.

    Returns:
        ``(len(rows), T, V)``: at ``[i, t]`` the logits that predict answer token ``t`` of row ``rows[i]`` (zeros
        after the answer's end).
    """
    config, lm = network.config, network.language_model
    cache_arg = cache_argument(lm)
    embed = lm.get_input_embeddings()
    width, device = answer.shape[1], input_ids.device
    groups, rests = _split_rows(input_ids, attention_mask, answer, answer_mask, rows, config.image_token_id)
    vocab = lm.get_output_embeddings().weight.shape[0]
    out = torch.zeros((len(rows), width, vocab), dtype=embed.weight.dtype, device=device)
    prefixes = list(groups)  # every distinct prefix's kept keys and values, left-padded to one span: one pass
    version = _weights_version(network)
    kept = [_prefix_kv(network, prefix, pixel_values, cache_arg, version) for prefix in prefixes]
    span = max(len(prefix) for prefix in prefixes)
    slot = {r: g for g, members in enumerate(groups.values()) for r in members}
    index = torch.tensor([slot[r] for r in rows], device=device)
    layers = []
    for per_prefix in zip(*kept):  # one layer: the (keys, values) of every prefix
        keys, values = (torch.cat([torch.nn.functional.pad(t, (0, 0, span - t.shape[2], 0)) for t in part])[index]
                        for part in zip(*per_prefix))
        layers.append((keys, values))
    rest = [rests[r][0] for r in rows]
    width_rest = max(len(x) for x in rest)
    lengths = [len(prefixes[slot[r]]) for r in rows]
    ids = torch.zeros((len(rows), width_rest), dtype=input_ids.dtype, device=device)
    mask = torch.zeros((len(rows), span + width_rest), dtype=attention_mask.dtype, device=device)
    for i, (x, length) in enumerate(zip(rest, lengths)):  # [padding][prefix][rest][padding]
        ids[i, : len(x)] = x
        mask[i, span - length : span + len(x)] = 1
    positions = torch.tensor(lengths, device=device)[:, None] + torch.arange(width_rest, device=device)
    logits = lm(inputs_embeds=embed(ids), attention_mask=mask, position_ids=positions, use_cache=True,
                **{cache_arg: DynamicCache(ddp_cache_data=layers)}).logits
    for i, r in enumerate(rows):
        first, n = rests[r][1] - 1, int(answer_mask[r].sum())  # the last prompt token predicts answer token 0
        out[i, :n] = logits[i, first : first + n]
    return out
