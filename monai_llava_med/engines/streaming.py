# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Streamed answers: one ``generate`` call for a group of prepared questions, each answer streamed on its own.

:func:`stream_generate` answers a group of :class:`GenerationRequest` (each already prepared by the product's
:class:`~monai_llava_med.engines.PrepareVqaItem`) through the product's own path, ``collate_vqa`` ->
``prepare_vqa_batch`` -> :class:`~monai_llava_med.engines.LlavaMedInferer`. A :class:`RowTracker` rides along as a
``transformers`` stopping criterion: after every step it decodes each row's tokens, hands the new text to that
request's sink (one piece per generated token, held back only while it could be the start of a stop string), and
ends a row on its own ``max_tokens``, a stop string, or a cancelled request, so requests with different lengths and
stop strings share a batch.

Callers: the server's dynamic batcher (:mod:`monai_llava_med.apps.serve.batching`, many requests per call) and the
terminal chat (:mod:`monai_llava_med.apps.chat`, one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .inference import ERROR_KEY, LlavaMedInferer, collate_vqa, prepare_vqa_batch
from .predictor import LlavaMedPredictor

__all__ = ["Sink", "GenerationRequest", "Completion", "RowTracker", "stream_generate"]

logger = logging.getLogger(__name__)

#: A sink receives ``("delta", str)`` pieces, then ``("done", Completion)`` or ``("error", Exception)``.
Sink = Callable[[str, Any], None]


@dataclass
class GenerationRequest:
    """One prepared question waiting for the model.

    Args:
        prepared: the output of :class:`~monai_llava_med.engines.PrepareVqaItem` (``input_ids``, ``pixel_values``...).
        sink: receives the answer's pieces and its end (called from the worker thread).
        max_tokens: answer length bound.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus mass.
        stop: stop strings (not part of the answer).
    """

    prepared: dict[str, Any]
    sink: Sink
    max_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.perf_counter)

    @property
    def group_key(self) -> tuple:
        """Requests with equal keys may share a ``generate``."""
        return (True, round(self.temperature, 6), round(self.top_p, 6)) if self.do_sample else (False,)


@dataclass
class Completion:
    """The end of one answer.

    Attributes:
        text: the whole answer (stop string excluded), equal to the concatenated pieces.
        finish_reason: ``"stop"`` (end of answer or stop string), ``"length"`` (``max_tokens``) or ``"cancelled"``.
        prompt_tokens: prompt length in tokens (image tokens included).
        completion_tokens: generated tokens (end-of-answer token excluded).
        result: the predictor's result entry (``views``, ``modality``, trust fields when the predictor has them).
        batch_size: requests in the ``generate`` that answered it.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    result: dict[str, Any]
    batch_size: int


class _Row:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.reason: str | None = None


class RowTracker(StoppingCriteria):
    """Stopping criterion that streams and ends each row of a batch on its own.

    Args:
        tokenizer: decodes the rows.
        requests: the batch's requests, one per row, in order.
        eos_token_ids: ids that end an answer.
    """

    def __init__(self, tokenizer: Any, requests: Sequence[GenerationRequest], eos_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.requests = list(requests)
        self.eos = set(int(i) for i in eos_token_ids)
        self.rows = [_Row() for _ in self.requests]

    def _emit(self, i: int, final: bool) -> None:
        row, req = self.rows[i], self.requests[i]
        safe = row.text.rstrip()  # trailing spaces go out with the word after them, or never (the answer is stripped)
        if not final:
            hold = max((len(s) for s in req.stop), default=1) - 1
            safe = row.text[: len(row.text) - hold] if hold else row.text
            safe = safe.rstrip("\ufffd").rstrip()  # an incomplete multi-byte character waits for its next token
        if len(safe) > row.emitted:
            req.sink("delta", safe[row.emitted :])
            row.emitted = len(safe)

    def _step(self, i: int, token: int) -> None:
        row, req = self.rows[i], self.requests[i]
        if token in self.eos:
            row.reason = "stop"
            return
        row.tokens.append(token)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True).lstrip()
        cuts = [text.find(s) for s in req.stop if s in text]
        if cuts:
            row.text, row.reason = text[: min(cuts)], "stop"
            return
        row.text = text
        if len(row.tokens) >= req.max_tokens:
            row.reason = "length"
        elif req.cancelled.is_set():
            row.reason = "cancelled"

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        """Take each unfinished row's newest token; ``True`` for the rows that are done."""
        newest = input_ids[:, -1].tolist()
        for i, token in enumerate(newest):
            if self.rows[i].reason is None:
                self._step(i, int(token))
                self._emit(i, final=self.rows[i].reason is not None)
        return torch.tensor([r.reason is not None for r in self.rows], dtype=torch.bool, device=input_ids.device)

    def finish(self) -> None:
        """Flush the held-back text of rows the ``generate`` call ended (its own length bound)."""
        for i, row in enumerate(self.rows):
            if row.reason is None:
                row.reason = "length"
            self._emit(i, final=True)


def stream_generate(
    predictor: LlavaMedPredictor, group: Sequence[GenerationRequest], on_generated: Callable[[int], None] | None = None
) -> bool:
    """Answer requests of equal sampling settings with one ``generate``; every sink gets its end.

    Args:
        predictor: the loaded predictor (its model, tokenizer and model name are used).
        group: the requests, one row each (their ``do_sample``, ``temperature`` and ``top_p`` must be equal).
        on_generated: called with the group size once ``generate`` has returned, before any sink gets its end.

    Returns:
        whether ``generate`` succeeded (on failure every sink got ``("error", exception)``).
    """
    p, first = predictor, group[0]
    tok = p.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else p.model.language_model.config.eos_token_id
    tracker = RowTracker(tok, group, eos if isinstance(eos, (list, tuple)) else [eos])
    try:
        inferer = LlavaMedInferer(tok, max_new_tokens=max(r.max_tokens for r in group), do_sample=first.do_sample,
                                  temperature=first.temperature, top_p=first.top_p, model_name=p.model_name,
                                  trust=p.trust, calibration=p.calibration)
        batch = collate_vqa([r.prepared for r in group], pad_token_id=tok.pad_token_id or 0)
        batch, _, _, _ = prepare_vqa_batch(batch, p.model.device)
        with torch.inference_mode():
            results = inferer(batch, p.model, stopping_criteria=StoppingCriteriaList([tracker]))
        tracker.finish()
    except Exception as err:  # noqa: BLE001 - every sink gets its end, the caller lives on
        logger.error("generate failed for a batch of %d (%s)", len(group), type(err).__name__)
        for req in group:
            req.sink("error", err)
        return False
    if on_generated is not None:
        on_generated(len(group))
    for req, row, result in zip(group, tracker.rows, results):
        if ERROR_KEY in result:
            req.sink("error", RuntimeError("the answer could not be generated"))
            continue
        req.sink("done", Completion(
            text=row.text.rstrip(),
            finish_reason=row.reason or "length",
            prompt_tokens=int(req.prepared["input_ids"].numel()),
            completion_tokens=len(row.tokens),
            result=result,
            batch_size=len(group),
        ))
    return True
