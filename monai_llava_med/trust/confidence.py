# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""An answer's probability from a network's logits, for any tokenizer.

* **closed** (yes/no) answers: the normalised probability of the chosen word at the first answer position,
  ``p(yes) / (p(yes) + p(no))`` or its complement, where ``p(yes)`` sums the probabilities of every whole-word
  token the tokenizer has for "yes" (``yes``, ``Yes``, ``YES``, with or without a leading space) and likewise for
  "no" (:func:`yes_no_token_ids`);
* **open** answers: the length-normalised sequence probability ``exp(mean log p)`` of the generated tokens, the
  end-of-sequence token included (:func:`sequence_probability`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from ..data.records import YES_NO

__all__ = ["answer_lengths", "closed_choice_probability", "sequence_probability", "yes_no_token_ids"]

_SPELLINGS = (str.lower, str.capitalize, str.upper)
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (its size, its ids)


def yes_no_token_ids(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The tokenizer's single-token spellings of "yes" and of "no".

    Each spelling (lower, capitalised, upper case; bare and after a space) that encodes to exactly one token gives
    that token; a spelling split into pieces ("Y" + "es") is left out, since its first piece begins other words too.
    A token found for both words is dropped from both.

    Args:
        tokenizer: a ``transformers`` tokenizer.

    Returns:
        ``(yes_ids, no_ids)``, sorted; either may be empty (then no answer counts as closed). Kept per tokenizer
        (every batch the server answers asks again) and found again when its vocabulary has grown.
    """
    size = len(tokenizer)
    with contextlib.suppress(KeyError, TypeError):  # TypeError: a tokenizer that cannot be weakly referenced
        kept_size, kept = _FOUND[tokenizer]
        if kept_size == size:
            return kept
    found: list[set[int]] = []
    for word in YES_NO:
        ids: set[int] = set()
        for spell in _SPELLINGS:
            for text in (spell(word), " " + spell(word)):
                encoded = tokenizer.encode(text, add_special_tokens=False)
                if len(encoded) == 1:
                    ids.add(int(encoded[0]))
        found.append(ids)
    yes, no = found
    both = yes & no
    result = tuple(sorted(yes - both)), tuple(sorted(no - both))
    with contextlib.suppress(TypeError):
        _FOUND[tokenizer] = (size, result)
    return result


def answer_lengths(new_tokens: torch.Tensor, eos_token_id: int | Sequence[int] | None) -> torch.Tensor:
    """Tokens of each generated answer up to and including its first end-of-sequence token.

    Args:
        new_tokens: ``(B, T)`` generated ids (what ``generate`` returns, padded after the end).
        eos_token_id: the stop token(s); ``None`` counts every column.

    Returns:
        ``(B,)`` lengths in ``[1, T]`` (``T`` when a row never stopped).
    """
    rows, width = new_tokens.shape
    if eos_token_id is None or width == 0:
        return torch.full((rows,), width, dtype=torch.long, device=new_tokens.device)
    stops = torch.as_tensor(eos_token_id, device=new_tokens.device).reshape(-1)
    is_end = torch.isin(new_tokens, stops)
    never = torch.full_like(is_end[:, 0], width, dtype=torch.long)
    first = torch.where(is_end.any(1), is_end.int().argmax(1) + 1, never)
    return first.long()


def closed_choice_probability(
    logits: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``p(yes) / (p(yes) + p(no))`` at one position, and its log-odds, from raw logits.

    The softmax's normaliser cancels, so the ratio is ``exp(logsumexp(logits[yes]) - logsumexp(logits[yes + no]))``.

    Args:
        logits: ``(R, V)`` logits at the first answer position.
        yes_ids: token ids of "yes" (non-empty).
        no_ids: token ids of "no" (non-empty).

    Returns:
        ``(p_yes, log_odds)``, each ``(R,)`` float32: ``log_odds = log p(yes) - log p(no)``.
    """
    logits = logits.float()
    yes = torch.logsumexp(logits[:, list(yes_ids)], dim=-1)
    no = torch.logsumexp(logits[:, list(no_ids)], dim=-1)
    return torch.sigmoid(yes - no), yes - no


def sequence_probability(token_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``exp(mean log p)`` over the tokens of each answer (a geometric mean of their probabilities).

    Args:
        token_log_probs: ``(R, T)`` log-probability of each generated token.
        mask: ``(R, T)`` true for the answer's tokens (at least one per row).

    Returns:
        ``(R,)`` float32 in [0, 1].
    """
    mask = mask.to(token_log_probs.dtype)
    mean = (token_log_probs * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return mean.exp().clamp(0.0, 1.0).float()
