# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Question answering with a LLaVA-Med network: item preparation, batching, a MONAI inferer, a predictor.

The same pieces serve three callers:

* the bundle's ``inference.json``: ``monai.engines.SupervisedEvaluator`` with :class:`PrepareVqaItem` as the
  dataset transform, :func:`collate_vqa`, :func:`prepare_vqa_batch`, :class:`LlavaMedInferer`, and
  :class:`~monai_llava_med.engines.VqaAnswerWriter` writing the answers;
* MONAI Label, the apps and research code: :class:`~.predictor.LlavaMedPredictor` (``ask`` / ``ask_all`` /
  ``ask_batch``);
* evaluation: the same evaluator with a VQA metric attached.

A bad item (unreadable image, empty question, prompt too long) becomes an error entry for that item; the
others are still answered.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..conversation.tokenization import MAX_QUESTION_CHARS
from ..errors import RecordError, TemplateError, as_input_error
from ..networks import LlavaMedNet
from ..transforms.pipelines import TEXT_RESERVE
from .inferer import ERROR_KEY, LlavaMedInferer

__all__ = [
    "ERROR_KEY",
    "PrepareVqaItem",
    "collate_vqa",
    "prepare_vqa_batch",
    "LlavaMedInferer",
    "build_preprocess",
    "MAX_QUESTION_CHARS",
    "TEXT_RESERVE",
]

logger = logging.getLogger(__name__)


def build_preprocess(model: LlavaMedNet, text_reserve: int = TEXT_RESERVE, **kwargs: Any) -> Callable[[str], Mapping[str, Any]]:
    """The image -> pixels pipeline matching the network: :func:`~monai_llava_med.transforms.pixels_from_config`
    of ``model.config`` (the bundle's ``inference.json`` names this, with the network it loaded).

    Args:
        model: the network whose config gives the image size, normalisation, pad mode and tokens per image.
        text_reserve: context tokens kept free for text.
        kwargs: further ``MedicalImageToPixels`` options (``max_views``, ``window``, ``view_mode``...);
            ``token_budget`` overrides the derived budget.

    Returns:
        ``path -> {"pixel_values", "views", "modality", "source", "window"}``.
    """
    from ..transforms import pixels_from_config

    return pixels_from_config(model.config, text_reserve=text_reserve, **kwargs)


class PrepareVqaItem:
    """Dataset transform: ``{"image", "question", ...}`` -> pixels, views and prompt ids.

    The output keeps every input key and adds ``input_ids`` (1-D), ``pixel_values`` (``(V, 3, S, S)`` or
    ``None``), ``views``, ``modality``, ``source`` and ``preprocess_s``. With ``raise_errors=False`` a failure
    is stored under ``"error"`` (``"ErrorType: message"``) instead of raised, so a run goes on.

    Args:
        tokenizer: the model's tokenizer (with ``<image>``).
        model: the network (its config gives image tokens, image size and template).
        preprocess: image path -> ``{"pixel_values", "views", "modality", "source"}``; default
            :func:`build_preprocess`.
        template: conversation template; default the model's.
        image_key: key of the image path in items (``None``/empty means a text-only question).
        question_key: key of the question: a string, or a multi-turn conversation (``(role, text)`` tuples or
            ``{"role", "content"}`` / LLaVA ``{"from", "value"}`` dicts) ending with a user turn; the image, if
            any, goes with its first turn.
        raise_errors: raise input errors instead of recording them.
        paired_probes: also build the prompt of the negated question (the last user turn negated by
            :func:`~monai_llava_med.conversation.negate_question`), as ``probe_input_ids``, with its text as
            ``paired_question`` (``None`` when the question is refused or the probe's prompt does not fit).
    """

    def __init__(
        self,
        tokenizer: Any,
        model: LlavaMedNet,
        preprocess: Callable[[str], Mapping[str, Any]] | None = None,
        template: str | None = None,
        image_key: str = "image",
        question_key: str = "question",
        raise_errors: bool = False,
        paired_probes: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.config = model.config
        self.preprocess = preprocess if preprocess is not None else build_preprocess(model)
        self.template = template or model.config.template
        self.image_key = image_key
        self.question_key = question_key
        self.raise_errors = raise_errors
        self.paired_probes = paired_probes

    def _prepare(self, item: Mapping[str, Any]) -> dict[str, Any]:
        from ..conversation import build_prompt, paired_conversation

        where = str(item.get("id") or item.get(self.image_key) or "item")
        question = item.get(self.question_key)
        usable = question.strip() if isinstance(question, str) else isinstance(question, (list, tuple)) and question
        if not usable:
            raise RecordError(f"'{self.question_key}' must be a non-empty string or a non-empty list of turns", where)
        start = time.perf_counter()
        image = item.get(self.image_key)
        out: dict[str, Any] = {"pixel_values": None, "views": [], "modality": None, "source": None}
        if image:
            pre = self.preprocess(str(image))
            pixels = torch.as_tensor(pre["pixel_values"])
            out.update(
                pixel_values=pixels if pixels.ndim in (4, 5) else pixels.unsqueeze(0),  # 5: (1, C, D, H, W) volume
                views=list(pre.get("views", [])),
                modality=pre.get("modality"),
                source=pre.get("source"),
            )
        n_images = 0 if out["pixel_values"] is None else int(out["pixel_values"].shape[0])
        prompt = functools.partial(
            build_prompt,
            tokenizer=self.tokenizer,
            template=self.template,
            num_images=n_images,
            num_image_tokens=self.config.num_image_tokens,
            image_token_id=self.config.image_token_id,
            max_length=self.config.model_max_length,
            where=where,
        )
        out["input_ids"] = prompt(question)
        if self.paired_probes:
            out["paired_question"] = None
            paired = paired_conversation(question)
            if paired is not None:
                try:
                    out["probe_input_ids"] = prompt(paired[0])
                    out["paired_question"] = paired[1]
                except (RecordError, TemplateError):  # the longer probe does not fit: no probe, the question stands
                    logger.info("item %s: its paired question does not fit the prompt; no probe", where)
        out["preprocess_s"] = time.perf_counter() - start
        return out

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Prepare one item (a dict with the image path and the question)."""
        result = dict(item)
        if ERROR_KEY in item:  # already refused when the datalist was read
            return result
        try:
            result.update(self._prepare(item))
        except Exception as err:  # one item's failure, whatever raised it, never stops the others
            typed = as_input_error(err, str(item.get(self.image_key) or item.get("id", "item")))
            if self.raise_errors:
                if typed is err:
                    raise
                raise typed from None  # the library's message (maybe header values) stays out of the chain
            logger.warning("item %s skipped: %s", item.get("id", "?"), typed)
            result[ERROR_KEY] = f"{type(typed).__name__}: {typed}"
        return result


def collate_vqa(items: Sequence[Mapping[str, Any]], pad_token_id: int = 0) -> dict[str, Any]:
    """Batch prepared items for generation: prompts left-padded, images concatenated in order.

    Items with an ``"error"`` are carried along (under ``"items"``) but not put into the tensors. Items with a
    paired probe (``probe_input_ids``, see :class:`PrepareVqaItem`) add one more row each after the items' rows,
    with the same images, so the probes are answered by the same ``generate`` call.

    Args:
        items: outputs of :class:`PrepareVqaItem`.
        pad_token_id: id used for left padding.

    Returns:
        ``{"items": [...], "input_ids": (B + P, L) or None, "attention_mask": ..., "pixel_values": (N, 3, S, S) or
        None}`` where B counts the items without errors and P their probes; with P > 0 also ``"probe_of"``, the
        item row (in ``0..B-1``) of each probe row ``B + p``.
    """
    from ..data import LlavaMedCollator

    good = [it for it in items if ERROR_KEY not in it]
    batch: dict[str, Any] = {"items": list(items), "input_ids": None, "attention_mask": None, "pixel_values": None}
    if good:
        rows = [{k: it[k] for k in ("input_ids", "pixel_values") if it.get(k) is not None} for it in good]
        probe_of = [r for r, it in enumerate(good) if it.get("probe_input_ids") is not None]
        rows += [{**rows[r], "input_ids": good[r]["probe_input_ids"]} for r in probe_of]
        tensors = LlavaMedCollator(pad_token_id, "left")(rows)
        batch.update({k: tensors[k] for k in ("input_ids", "attention_mask", "pixel_values")})
        if probe_of:
            batch["probe_of"] = probe_of
    return batch


def prepare_vqa_batch(
    batchdata: Mapping[str, Any], device: torch.device | str | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[dict[str, Any], None, tuple, dict]:
    """``prepare_batch`` for ``monai.engines.SupervisedEvaluator``: moves tensors, returns ``(batch, None, (), {})``."""
    moved = dict(batchdata)
    for key in ("input_ids", "attention_mask", "pixel_values"):
        if moved.get(key) is not None:
            moved[key] = moved[key].to(device=device, non_blocking=non_blocking)
    return moved, None, (), {}
