# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A MONAI ``Dataset`` that loads images lazily and tokenises conversations for LLaVA-Med.

Each item is a dict: ``input_ids``, ``attention_mask``, ``labels`` (train mode only) as 1-D LongTensors,
``pixel_values`` ``(k, 3, S, S)`` or None, ``num_images`` (k), ``id``, and for VQA records ``question``,
``answer``, ``answer_type``. Items go through the optional MONAI-style ``transform`` last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import Dataset
from monai.transforms import apply_transform
from transformers import PreTrainedTokenizerBase

from monai_llava_med.conversation.templates import ConversationTemplate, get_template, render_conversation
from monai_llava_med.conversation.tokenization import build_prompt, tokenize_conversation
from monai_llava_med.conversation.tokenizer import image_token_id_of
from monai_llava_med.errors import ImageReadError, LlavaMedInputError, RecordError, TemplateError

from .image_loading import PILImageToPixels
from .records import ConversationRecord, VQARecord

__all__ = ["ImageLoader", "LlavaMedDataset", "pixels_from_loader_output", "estimate_lengths"]

ImageLoader = Callable[[str], Any]


def pixels_from_loader_output(out: Any, source: str) -> torch.Tensor:
    """Normalise an image loader's output (a dict with ``pixel_values`` or a tensor) to ``(V, 3, S, S)``, or keep
    ``(V, C, D, H, W)`` volumes of the native 3-D tower as they are.

    Args:
        out: what the loader returned.
        source: the file, named in errors.

    Raises:
        ImageReadError: no ``pixel_values``, or not a 3-D/4-D tensor with 3 channels.
    """
    pv = out.get("pixel_values") if isinstance(out, Mapping) else out
    if not isinstance(pv, torch.Tensor):
        raise ImageReadError(f"the image loader returned no pixel_values tensor ({type(pv).__name__})", source)
    if pv.ndim == 3:
        pv = pv.unsqueeze(0)
    if pv.ndim == 5:  # volumes for the native 3-D tower (MedicalVolumeToPixels)
        return pv.float() if not pv.is_floating_point() else pv
    if pv.ndim != 4 or pv.shape[1] != 3:
        raise ImageReadError(f"pixel_values must be (V, 3, S, S), got {tuple(pv.shape)}", source)
    return pv.float() if not pv.is_floating_point() else pv


def _as_conversation(rec: ConversationRecord | VQARecord) -> ConversationRecord:
    return rec.to_conversation() if isinstance(rec, VQARecord) else rec


def estimate_lengths(
    records: Sequence[ConversationRecord | VQARecord],
    tokenizer: PreTrainedTokenizerBase,
    template: str | ConversationTemplate = "mistral_instruct",
    *,
    num_image_tokens: int = 576,
    views_per_file: int = 1,
    max_length: int | None = 2048,
) -> list[int]:
    """Token lengths of records without loading images (for length-grouped sampling).

    Args:
        records: the records.
        tokenizer: a prepared fast tokenizer.
        template: template name or object.
        num_image_tokens: tokens per image.
        views_per_file: images each file is expected to yield (1 for 2-D images).
        max_length: lengths are capped here (truncation) when given.
    """
    tpl = get_template(template)
    img_id = image_token_id_of(tokenizer)
    convs = [_as_conversation(r) for r in records]
    texts = [
        render_conversation(c.turns, tpl, num_images=len(c.images) * views_per_file, eos_token=tokenizer.eos_token)
        for c in convs
    ]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out = []
    for c, ids in zip(convs, enc):
        n = len(ids) - ids.count(img_id) + len(c.images) * views_per_file * num_image_tokens + int(tpl.add_bos)
        out.append(min(n, max_length) if max_length is not None else n)
    return out


class LlavaMedDataset(Dataset):
    """Conversation or VQA records -> model-ready samples, images loaded lazily per item.

    Args:
        records: :class:`ConversationRecord` or :class:`VQARecord` items.
        tokenizer: a fast tokenizer prepared with ``prepare_tokenizer``.
        template: conversation template name or object.
        num_image_tokens: tokens per image (model config ``num_image_tokens``).
        image_token_id: id at image positions (model config ``image_token_id``); default the tokenizer's.
        image_loader: callable ``path -> {"pixel_values": (V, 3, S, S), ...}`` (or a tensor), e.g.
            ``monai_llava_med.transforms.MedicalImageToPixels``; default :class:`PILImageToPixels`.
        image_size: side S of the default loader.
        max_length: context length (truncation as in ``tokenize_conversation``).
        mode: "train" (labels, answers supervised) or "generate" (prompt up to the last answer, no labels:
            :func:`~monai_llava_med.conversation.build_prompt`, the prompt inference builds).
        transform: optional MONAI-style callable applied to each finished item dict.
    """

    def __init__(
        self,
        records: Sequence[ConversationRecord | VQARecord],
        tokenizer: PreTrainedTokenizerBase,
        *,
        template: str | ConversationTemplate = "mistral_instruct",
        num_image_tokens: int = 576,
        image_token_id: int | None = None,
        image_loader: ImageLoader | None = None,
        image_size: int = 336,
        max_length: int | None = 2048,
        mode: str = "train",
        transform: Callable | None = None,
    ) -> None:
        if mode not in ("train", "generate"):
            raise ValueError(f"mode must be 'train' or 'generate', got {mode!r}")
        super().__init__(data=list(records), transform=transform)
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.num_image_tokens = int(num_image_tokens)
        self.image_token_id = image_token_id
        self.image_loader = image_loader if image_loader is not None else PILImageToPixels(image_size)
        self.max_length = max_length
        self.mode = mode
        self._lengths: list[int] | None = None

    @property
    def lengths(self) -> list[int]:
        """Estimated token length of every item (one image per file assumed), computed once."""
        if self._lengths is None:
            self._lengths = estimate_lengths(
                self.data,
                self.tokenizer,
                self.template,
                num_image_tokens=self.num_image_tokens,
                max_length=self.max_length,
            )
        return self._lengths

    def _load_pixels(self, rec: ConversationRecord) -> torch.Tensor | None:
        chunks = []
        for path in rec.images:
            try:
                chunks.append(pixels_from_loader_output(self.image_loader(path), path))
            except LlavaMedInputError as e:
                raise type(e)(f"record {rec.id}: {e.reason}", e.path) from e
        return torch.cat(chunks, 0) if chunks else None

    def _transform(self, index: int) -> dict[str, Any]:
        rec = self.data[index]
        conv = _as_conversation(rec)
        pixels = self._load_pixels(conv)
        n_img = 0 if pixels is None else int(pixels.shape[0])
        common = {
            "num_images": n_img,
            "num_image_tokens": self.num_image_tokens,
            "image_token_id": self.image_token_id,
            "max_length": self.max_length,
        }
        try:
            if self.mode == "train":
                item: dict[str, Any] = tokenize_conversation(
                    conv.turns, self.tokenizer, self.template, record_id=conv.id, **common
                )
            else:
                ids = build_prompt(conv.turns, self.tokenizer, self.template, where=conv.id, **common)
                item = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        except TemplateError as e:
            raise RecordError(e.reason, conv.id) from e
        item.update(pixel_values=pixels, num_images=n_img, id=conv.id)
        if isinstance(rec, VQARecord):
            item.update(question=rec.question, answer=rec.answer, answer_type=rec.answer_type)
        return apply_transform(self.transform, item) if self.transform is not None else item
