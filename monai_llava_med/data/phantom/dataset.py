# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""In-memory phantom VQA: images and questions generated on the fly, nothing touches the disk.

Item ``i`` of a split is rebuilt from ``(seed, split, i)`` alone, so the data set is deterministic,
needs no storage, and works with any sampler or number of workers. 2-D phantoms only (the fast path
for training a tiny model on CPU); volumes are written to disk by :func:`write_phantom_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import apply_transform
from transformers import PreTrainedTokenizerBase

from monai_llava_med.conversation.templates import ConversationTemplate, get_template
from monai_llava_med.conversation.tokenization import build_prompt, tokenize_conversation

from monai_llava_med.transforms.pixels import ImageToClipPixels
from .generator import PhantomCase, case_rng, generate_phantom
from .questions import PhantomQA, sample_question
from .writers import window_to_uint8

__all__ = ["phantom_to_pixels", "phantom_sample", "PhantomVQADataset"]


def phantom_to_pixels(case: PhantomCase, image_size: int | None = None) -> torch.Tensor:
    """Display-windowed phantom as CLIP-normalised pixels ``(1, 3, S, S)`` (2-D cases).

    The 8-bit display image goes through :class:`~monai_llava_med.transforms.ImageToClipPixels`, the last
    stage of every image pipeline, so an in-memory CT phantom gives the pixels its DICOM file gives through
    ``MedicalImageToPixels``.

    Args:
        case: a 2-D phantom.
        image_size: output side (default: the phantom's size).

    Returns:
        float32 ``(1, 3, S, S)``.

    Raises:
        ValueError: a 3-D phantom.
    """
    if case.ndim != 2:
        raise ValueError(f"{case.case_id}: phantom_to_pixels takes 2-D phantoms")
    grey = torch.from_numpy(window_to_uint8(case))[None]
    side = int(image_size) if image_size is not None else int(grey.shape[-1])
    return ImageToClipPixels(side)(grey).unsqueeze(0)


def phantom_sample(
    index: int,
    *,
    seed: int = 0,
    split: str = "train",
    size: int = 64,
    modality: str | None = None,
    families: Sequence[str] | None = None,
) -> tuple[PhantomCase, PhantomQA]:
    """The phantom and question of item ``index`` of a split (deterministic).

    Args:
        index: item index.
        seed: data set seed.
        split: "train", "val" or "test".
        size: image side.
        modality: "CT", "MR" or None (random).
        families: question families to draw from (all when None).
    """
    rng = case_rng(seed, split, index)
    case = generate_phantom(rng, size=size, ndim=2, modality=modality, case_id=f"phantom_{split}_{index:06d}")
    return case, sample_question(case, rng, families)


class PhantomVQADataset(Dataset):
    """Synthetic phantom VQA generated in memory.

    Items: ``pixel_values`` (1, 3, S, S), ``num_images`` 1, ``id``, ``question``, ``answer``,
    ``answer_type``, ``family``, ``label`` (the label map, uint8 tensor); plus ``input_ids``,
    ``attention_mask`` and (train mode) ``labels`` when a tokenizer is given.

    Args:
        num_samples: items in the split.
        seed: data set seed (splits use independent streams).
        split: "train", "val" or "test".
        size: phantom side in pixels (64 learns fast on CPU).
        image_size: pixel side fed to the model (default ``size``).
        modality: "CT", "MR" or None (random per item).
        families: question families (see ``questions.FAMILIES``); e.g. ``("presence", "side",
            "brightness", "count")`` for the fast-learning subset.
        tokenizer: prepared fast tokenizer; when None no token ids are produced.
        template: conversation template.
        num_image_tokens: tokens per image (model config).
        image_token_id: id at image positions (model config; default the tokenizer's ``<image>``).
        max_length: context length.
        mode: "train" (labels) or "generate" (prompt only).
        transform: optional MONAI-style callable applied to each item dict.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        split: str = "train",
        size: int = 64,
        image_size: int | None = None,
        modality: str | None = None,
        families: Sequence[str] | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        template: str | ConversationTemplate = "mistral_instruct",
        num_image_tokens: int = 576,
        image_token_id: int | None = None,
        max_length: int | None = 2048,
        mode: str = "train",
        transform: Callable | None = None,
    ) -> None:
        if mode not in ("train", "generate"):
            raise ValueError(f"mode must be 'train' or 'generate', got {mode!r}")
        super().__init__(data=list(range(int(num_samples))), transform=transform)
        self.seed, self.split, self.size = int(seed), split, int(size)
        self.image_size = image_size
        self.modality = modality
        self.families = None if families is None else tuple(families)
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.num_image_tokens = int(num_image_tokens)
        self.image_token_id = image_token_id
        self.max_length = max_length
        self.mode = mode
        case_rng(seed, split, 0)  # validates the split name

    def sample(self, index: int) -> tuple[PhantomCase, PhantomQA]:
        """The phantom and question behind item ``index``."""
        return phantom_sample(
            index, seed=self.seed, split=self.split, size=self.size, modality=self.modality, families=self.families
        )

    def _transform(self, index: int) -> dict[str, Any]:
        case, qa = self.sample(self.data[index])
        item: dict[str, Any] = {
            "pixel_values": phantom_to_pixels(case, self.image_size),
            "num_images": 1,
            "id": f"{case.case_id}_{qa.family}",
            "question": qa.question,
            "answer": qa.answer,
            "answer_type": qa.answer_type,
            "family": qa.family,
            "modality": case.modality,
            "label": torch.from_numpy(np.ascontiguousarray(case.label)),
        }
        if self.tokenizer is not None:
            common = {
                "num_images": 1,
                "num_image_tokens": self.num_image_tokens,
                "image_token_id": self.image_token_id,
                "max_length": self.max_length,
            }
            turns = [("user", f"<image>\n{qa.question}"), ("assistant", qa.answer)]
            if self.mode == "train":
                item.update(tokenize_conversation(turns, self.tokenizer, self.template, record_id=item["id"], **common))
            else:
                ids = build_prompt(turns, self.tokenizer, self.template, where=item["id"], **common)
                item.update(input_ids=ids, attention_mask=torch.ones_like(ids))
        return apply_transform(self.transform, item) if self.transform is not None else item
