# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Turn a conversation into ``input_ids`` / ``attention_mask`` / ``labels`` for a LLaVA-Med model.

The whole rendered string is tokenised in one call (``<image>`` is a special token, so it comes out as
one id, and ``</s>`` comes out as the EOS id), with character offsets. A token is supervised when it
overlaps an assistant answer or its end token; everything else (BOS, system, questions, image tokens)
gets label -100. Each ``<image>`` id is then expanded to ``num_image_tokens`` copies of
``image_token_id`` per image it stands for: one placeholder per image, or a single placeholder for all k
images of a sample (k consecutive blocks).

Truncation to ``max_length`` never cuts through an image block: whole trailing rounds are dropped first
(keeping at least one answered round); if the first round alone is too long its tail text is cut; if the
image blocks themselves do not fit, or no supervised token would remain, a :class:`TemplateError` is
raised. Every truncation is logged with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from monai_llava_med.constants import IGNORE_INDEX
from monai_llava_med.errors import RecordError, TemplateError

from .templates import IMAGE_PLACEHOLDER, ConversationTemplate, Turn, get_template, normalize_turns, render_segments
from .tokenizer import image_token_id_of

__all__ = ["IGNORE_INDEX", "MAX_QUESTION_CHARS", "tokenize_conversation", "build_generation_inputs", "build_prompt"]

logger = logging.getLogger(__name__)

TurnsLike = str | Sequence[Turn | Mapping[str, str] | tuple[str, str]]
#: Longest user message accepted in a prompt (characters); longer text is refused rather than silently cut.
MAX_QUESTION_CHARS = 4000


def _encode(
    turns: TurnsLike,
    tokenizer: PreTrainedTokenizerBase,
    tpl: ConversationTemplate,
    *,
    num_images: int,
    num_image_tokens: int,
    image_token_id: int | None,
    system: str | None,
    add_generation_prompt: bool,
    where: str,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Tokenise and expand; returns ids, labels, round index and an is-image flag per token."""
    if num_image_tokens < 1:
        raise TemplateError(f"num_image_tokens must be >= 1, got {num_image_tokens}", where)
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError("a fast (tokenizers-backed) tokenizer is needed for label masking", where)
    try:
        segs = render_segments(
            turns,
            tpl,
            num_images=num_images,
            system=system,
            add_generation_prompt=add_generation_prompt,
            eos_token=tokenizer.eos_token,
        )
    except TemplateError as e:
        raise TemplateError(e.reason, where) from e
    text = "".join(s.text for s in segs)
    starts, pos = [], 0
    for s in segs:
        starts.append(pos)
        pos += len(s.text)
    sup_spans = [(st, st + len(s.text)) for st, s in zip(starts, segs) if s.supervised]

    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    img_tok = image_token_id_of(tokenizer)
    out_img_id = img_tok if image_token_id is None else int(image_token_id)

    n_placeholders = ids.count(img_tok)
    if n_placeholders != text.count("<image>"):
        raise TemplateError("the tokenizer split <image>; pass it through prepare_tokenizer()", where)
    if num_images == 0:
        blocks_per_placeholder = 0
    elif n_placeholders == num_images:
        blocks_per_placeholder = 1
    elif n_placeholders == 1:
        blocks_per_placeholder = num_images
    else:
        raise TemplateError(f"{n_placeholders} <image> placeholders for {num_images} images", where)

    seg_idx = 0
    out_ids: list[int] = []
    labels: list[int] = []
    rounds: list[int] = []
    is_img: list[int] = []
    if tpl.add_bos:
        if tokenizer.bos_token_id is None:
            raise TemplateError(f"template {tpl.name!r} needs a BOS token but the tokenizer has none", where)
        out_ids.append(int(tokenizer.bos_token_id))
        labels.append(IGNORE_INDEX)
        rounds.append(-1)
        is_img.append(0)
    for tid, (a, b) in zip(ids, offsets):
        while seg_idx + 1 < len(starts) and starts[seg_idx + 1] <= a:
            seg_idx += 1
        rnd = segs[seg_idx].turn if segs else -1
        if tid == img_tok:
            n = blocks_per_placeholder * num_image_tokens
            out_ids.extend([out_img_id] * n)
            labels.extend([IGNORE_INDEX] * n)
            rounds.extend([rnd] * n)
            is_img.extend([1] * n)
            continue
        sup = any(b > s0 and a < s1 for s0, s1 in sup_spans)
        out_ids.append(int(tid))
        labels.append(int(tid) if sup else IGNORE_INDEX)
        rounds.append(rnd)
        is_img.append(0)
    if "{eos}" in tpl.answer_format and sup_spans:
        eos_id = tokenizer.eos_token_id
        n_eos = sum(1 for t, lab in zip(out_ids, labels) if lab != IGNORE_INDEX and t == eos_id)
        if n_eos != len(sup_spans):
            raise TemplateError(
                f"expected {len(sup_spans)} EOS tokens after the answers, found {n_eos}: the tokenizer does not "
                f"map {tokenizer.eos_token!r} to its EOS id",
                where,
            )
    return out_ids, labels, rounds, is_img


def _truncate(
    ids: list[int], labels: list[int], rounds: list[int], is_img: list[int], max_length: int, where: str
) -> tuple[list[int], list[int]]:
    """Cut to ``max_length`` without touching image blocks; see the module docstring."""
    if len(ids) <= max_length:
        return ids, labels
    need = max((i + 1 for i, f in enumerate(is_img) if f), default=0)
    if need > max_length:
        raise TemplateError(f"the image tokens alone need {need} positions, more than max_length={max_length}", where)
    n_rounds = max(rounds) + 1
    # candidate cuts: the start of a round r >= 1 (drops rounds r..end)
    for r in range(n_rounds - 1, 0, -1):
        cut = rounds.index(r)
        if need <= cut <= max_length and any(lab != IGNORE_INDEX for lab in labels[:cut]):
            logger.warning(
                "%s: dropped %d of %d conversation rounds to fit max_length=%d (%d tokens)",
                where,
                n_rounds - r,
                n_rounds,
                max_length,
                len(ids),
            )
            return ids[:cut], labels[:cut]
    cut = max_length
    if not any(lab != IGNORE_INDEX for lab in labels[:cut]):
        raise TemplateError(
            f"the prompt alone is longer than max_length={max_length}: no answer token would be left", where
        )
    logger.warning(
        "%s: cut the text of the last kept round to fit max_length=%d (%d tokens, %d removed)",
        where,
        max_length,
        len(ids),
        len(ids) - cut,
    )
    return ids[:cut], labels[:cut]


def tokenize_conversation(
    turns: TurnsLike,
    tokenizer: PreTrainedTokenizerBase,
    template: str | ConversationTemplate = "mistral_instruct",
    *,
    num_images: int = 1,
    num_image_tokens: int = 576,
    image_token_id: int | None = None,
    max_length: int | None = 2048,
    system: str | None = None,
    record_id: str | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise a conversation for training: only assistant answers and their end token are supervised.

    Args:
        turns: the conversation (LLaVA JSON ``{"from", "value"}`` dicts, ``(role, text)`` tuples, Turns).
        tokenizer: a fast tokenizer prepared with :func:`prepare_tokenizer`.
        template: template name or object.
        num_images: images that go with the conversation (the sum of views/tiles over its image files).
        num_image_tokens: tokens per image (model config ``num_image_tokens``; 576 for CLIP-L/336).
        image_token_id: id written at image positions (model config ``image_token_id``); default: the
            tokenizer's ``<image>`` id.
        max_length: context length; None disables truncation.
        system: system prompt overriding the template's.
        record_id: named in errors and truncation messages.

    Returns:
        ``input_ids``, ``attention_mask``, ``labels``: 1-D LongTensors of equal length.

    Raises:
        TemplateError: bad turns or placeholders, a tokenizer that lacks ``<image>``/EOS handling, or a
            sample that cannot fit ``max_length`` without cutting image tokens or every answer.
    """
    tpl = get_template(template)
    where = record_id
    ids, labels, rounds, is_img = _encode(
        turns,
        tokenizer,
        tpl,
        num_images=num_images,
        num_image_tokens=num_image_tokens,
        image_token_id=image_token_id,
        system=system,
        add_generation_prompt=False,
        where=where,
    )
    if not any(lab != IGNORE_INDEX for lab in labels):
        raise TemplateError("the conversation has no assistant answer to supervise", where)
    if max_length is not None:
        ids, labels = _truncate(ids, labels, rounds, is_img, int(max_length), where or "conversation")
    input_ids = torch.tensor(ids, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def build_generation_inputs(
    question_or_turns: TurnsLike,
    tokenizer: PreTrainedTokenizerBase,
    template: str | ConversationTemplate = "mistral_instruct",
    *,
    num_images: int = 1,
    num_image_tokens: int = 576,
    image_token_id: int | None = None,
    max_length: int | None = 2048,
    system: str | None = None,
) -> torch.Tensor:
    """Token ids of a generation prompt that ends exactly where the answer starts.

    For ``mistral_instruct`` and one question this is ``<s>[INST] <image>\\n{q} [/INST]`` with the image
    placeholder expanded. Earlier rounds, if given, are rendered with their answers. Generation must
    stop on the EOS token (``</s>``), not on a text separator.

    Args:
        question_or_turns: a question string or a conversation ending with a user turn.
        tokenizer: a fast tokenizer prepared with :func:`prepare_tokenizer`.
        template: template name or object.
        num_images: images that go with the prompt.
        num_image_tokens: tokens per image.
        image_token_id: id at image positions; default the tokenizer's ``<image>`` id.
        max_length: the prompt must fit (a :class:`TemplateError` otherwise; nothing is silently cut from a
            prompt); None disables the check.
        system: system prompt overriding the template's.

    Returns:
        1-D LongTensor of prompt ids.
    """
    tpl = get_template(template)
    ids, _, _, _ = _encode(
        question_or_turns,
        tokenizer,
        tpl,
        num_images=num_images,
        num_image_tokens=num_image_tokens,
        image_token_id=image_token_id,
        system=system,
        add_generation_prompt=True,
        where=None,
    )
    if max_length is not None and len(ids) > max_length:
        raise TemplateError(f"the generation prompt has {len(ids)} tokens, more than max_length={max_length}")
    return torch.tensor(ids, dtype=torch.long)


def build_prompt(
    conversation: TurnsLike,
    tokenizer: PreTrainedTokenizerBase,
    template: str | ConversationTemplate = "mistral_instruct",
    *,
    num_images: int = 1,
    num_image_tokens: int = 576,
    image_token_id: int | None = None,
    max_length: int | None = 2048,
    system: str | None = None,
    where: str | None = None,
) -> torch.Tensor:
    """The generation prompt of a question or a conversation: the one place prompts are built.

    Inference (``PrepareVqaItem``: the bundle, ``LlavaMedPredictor``, MONAI Label) and the data sets' generate
    mode all call this. A conversation that ends with an assistant turn (a training record) is cut before
    that last answer, so the ids equal the training ids of :func:`tokenize_conversation` up to the first
    supervised token. Earlier rounds keep their answers (multi-turn); with ``num_images=0`` the prompt is
    text only, otherwise ``<image>`` is placed as in training (:func:`place_image_placeholders`).

    Args:
        conversation: a question string (surrounding whitespace is dropped) or turns (see
            :func:`~monai_llava_med.conversation.normalize_turns`).
        tokenizer: a fast tokenizer prepared with :func:`prepare_tokenizer`.
        template: template name or object.
        num_images: images that go with the prompt (the views/tiles of its files).
        num_image_tokens: tokens per image.
        image_token_id: id at image positions; default the tokenizer's ``<image>`` id.
        max_length: the prompt must fit; None disables the check.
        system: system prompt overriding the template's.
        where: the item or record named in errors.

    Returns:
        1-D LongTensor of prompt ids.

    Raises:
        RecordError: no question left, an empty question, or a user message longer than
            :data:`MAX_QUESTION_CHARS`.
        TemplateError: bad turns or placeholders, or a prompt longer than ``max_length``.
    """
    tpl = get_template(template)
    try:
        turns = normalize_turns(conversation.strip() if isinstance(conversation, str) else conversation)
    except TemplateError as e:
        raise TemplateError(e.reason, where) from e
    if turns[-1].role == "assistant":
        turns = turns[:-1]
    if not turns:
        raise RecordError("the conversation has no question before its answer", where)
    for turn in turns:
        if turn.role == "user" and len(turn.text) > MAX_QUESTION_CHARS:
            raise RecordError(f"question has {len(turn.text)} characters; the limit is {MAX_QUESTION_CHARS}", where)
    if not tpl.drop_user_text and not turns[-1].text.replace(IMAGE_PLACEHOLDER, "").strip():
        raise RecordError("the question is empty", where)
    try:
        return build_generation_inputs(
            turns,
            tokenizer,
            tpl,
            num_images=num_images,
            num_image_tokens=num_image_tokens,
            image_token_id=image_token_id,
            max_length=max_length,
            system=system,
        )
    except TemplateError as e:
        raise TemplateError(e.reason, where) from e
