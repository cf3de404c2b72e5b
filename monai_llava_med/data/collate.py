# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Batch collation: pad text, concatenate pixel tensors, count images per sample.

Output keys: ``input_ids`` (B, L), ``attention_mask`` (B, L), ``labels`` (B, L) when the samples have
labels, ``position_ids`` (B, L) when they have them, ``pixel_values`` (N_total, 3, S, S) = all images in
order of appearance (sample 0's first) or None when the batch has no image, ``image_counts`` (B,)
LongTensor. Any other key is passed through as a list (ids, questions, answers...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from monai_llava_med.errors import RecordError

from ..conversation.tokenization import IGNORE_INDEX

__all__ = ["LlavaMedCollator"]

_PADDED = {"input_ids", "attention_mask", "labels", "position_ids"}


class LlavaMedCollator:
    """Collate LLaVA-Med samples into a model batch.

    Args:
        pad_token_id: id written at padded positions of ``input_ids``.
        padding_side: "right" for training, "left" for batched generation (prompts end together).
        label_pad_id: label at padded positions (-100, ignored by the loss).
        pad_to_multiple_of: round the padded length up to a multiple of this (e.g. 8 for tensor cores).
        image_token_id: if given with ``num_image_tokens``, each sample is checked to hold exactly
            ``num_images * num_image_tokens`` image tokens.
        num_image_tokens: tokens per image, for that check.
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        *,
        label_pad_id: int = IGNORE_INDEX,
        pad_to_multiple_of: int | None = None,
        image_token_id: int | None = None,
        num_image_tokens: int | None = None,
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.label_pad_id = int(label_pad_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens

    def _pad(self, seqs: list[torch.Tensor], value: int, length: int) -> torch.Tensor:
        out = torch.full((len(seqs), length), value, dtype=torch.long)
        for i, s in enumerate(seqs):
            if self.padding_side == "right":
                out[i, : len(s)] = s
            else:
                out[i, length - len(s) :] = s
        return out

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Collate a list of sample dicts (see the module docstring for the keys)."""
        if not batch:
            raise ValueError("cannot collate an empty batch")
        ids = [torch.as_tensor(b["input_ids"], dtype=torch.long) for b in batch]
        length = max(len(s) for s in ids)
        if self.pad_to_multiple_of:
            m = int(self.pad_to_multiple_of)
            length = (length + m - 1) // m * m
        out: dict[str, Any] = {"input_ids": self._pad(ids, self.pad_token_id, length)}
        masks = [
            torch.as_tensor(b.get("attention_mask", torch.ones_like(s)), dtype=torch.long) for b, s in zip(batch, ids)
        ]
        out["attention_mask"] = self._pad(masks, 0, length)
        if all("labels" in b for b in batch):
            labels = [torch.as_tensor(b["labels"], dtype=torch.long) for b in batch]
            out["labels"] = self._pad(labels, self.label_pad_id, length)
        if all("position_ids" in b for b in batch):
            out["position_ids"] = self._pad([torch.as_tensor(b["position_ids"]) for b in batch], 0, length)

        pixels, counts = [], []
        for i, b in enumerate(batch):
            pv = b.get("pixel_values")
            n = 0 if pv is None else int(pv.shape[0])
            if "num_images" in b and int(b["num_images"]) != n:
                raise RecordError(f"num_images={b['num_images']} but {n} images in pixel_values", b.get("id", f"#{i}"))
            if self.image_token_id is not None and self.num_image_tokens is not None:
                got = int((ids[i] == self.image_token_id).sum())
                if got != n * self.num_image_tokens:
                    raise RecordError(
                        f"{got} image tokens for {n} images x {self.num_image_tokens} tokens", b.get("id", f"#{i}")
                    )
            if pv is not None and n:
                pixels.append(pv)
            counts.append(n)
        out["pixel_values"] = torch.cat(pixels, 0) if pixels else None
        out["image_counts"] = torch.tensor(counts, dtype=torch.long)
        for key in batch[0]:
            if key not in _PADDED and key not in ("pixel_values", "num_images"):
                out[key] = [b.get(key) for b in batch]
        return out
