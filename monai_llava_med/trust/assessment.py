# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The trust of a batch of generated answers: one teacher-forced pass with the neutral image, then the fields.

Each answer's probability with its image comes from the logits ``generate`` computed anyway; its probability with
the **neutral image** (:mod:`.neutral`) from a teacher-forced pass of ``prompt + generated answer`` over the rows
that have images, the prompts' shared neutral prefixes run once (:func:`score_answers`, :mod:`.confidence`). The images' features for the gate are what the projector received
during ``generate`` (:func:`image_features`). :func:`trust_fields` turns those into the fields of an answer entry,
applying a :class:`~.calibration.Calibration` when one is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..networks import LlavaMedNet
from .abstention import DEFAULT_MIN_IMAGE_RELIANCE, abstention_reason
from .calibration import Calibration
from .confidence import answer_lengths, closed_choice_probability, sequence_probability
from .gate import ProjectorInputs
from .neutral import neutral_answer_logits, neutral_pixels

__all__ = ["AnswerScores", "contradicts", "image_features", "neutral_pixels", "score_answers", "trust_fields"]


@dataclass
class AnswerScores:
    """The uncalibrated numbers behind one answer's trust fields.

    Args:
        kind: ``"closed"`` (the answer's first token is a whole-word yes/no token) or ``"open"``; the inferer,
            which reads the answer's text, makes an open answer that states a number ``"number"``.
        raw_confidence: the chosen answer's probability with the image: the normalised yes/no probability
            (closed) or ``exp(mean log p)`` of the answer's tokens (open).
        blank_confidence: the same answer's probability with the neutral image, ``None`` without an image.
        features: ``(2 * width,)`` the projector's input summarised over tokens (mean and standard deviation) and
            averaged over views (:meth:`~.gate.ProjectorInputs.pooled`), ``None`` without an image.
        choice: ``"yes"`` or ``"no"`` for a closed answer (its first token), ``None`` for an open one.
    """

    kind: str
    raw_confidence: float
    blank_confidence: float | None
    features: torch.Tensor | None
    choice: str | None = None

    @property
    def image_reliance(self) -> float | None:
        """``|p(answer | image) - p(answer | neutral image)|`` in [0, 1], ``None`` without an image."""
        if self.blank_confidence is None:
            return None
        return min(1.0, abs(self.raw_confidence - self.blank_confidence))


def image_features(projector_inputs: ProjectorInputs, images_per_row: torch.Tensor) -> list[torch.Tensor | None]:
    """Each row's image features from what the projector saw (:meth:`~.gate.ProjectorInputs.pooled`), averaged over
    its views.

    Args:
        projector_inputs: the record of one ``generate`` (or forward) call over the batch's images.
        images_per_row: ``(B,)`` images of each row, in the order their pixels were concatenated.
    """
    counts = [int(n) for n in images_per_row.tolist()]
    out: list[torch.Tensor | None] = [None] * len(counts)
    if sum(counts):
        pooled = projector_inputs.pooled()[: sum(counts)].cpu()
        for row, chunk in zip((r for r, n in enumerate(counts) if n), torch.split(pooled, [n for n in counts if n])):
            out[row] = chunk.mean(0)
    return out


def _chosen_probability(
    logits: torch.Tensor, answer: torch.Tensor, answer_mask: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: whether the answer is closed, the probability of the chosen answer (see :mod:`.confidence`), and
    whether its first token is a "yes"."""
    logits = logits.float()
    token_log_probs = logits.gather(-1, answer[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)
    probability = sequence_probability(token_log_probs, answer_mask)
    first = answer[:, 0]
    closed = torch.zeros_like(first, dtype=torch.bool)
    is_yes = torch.zeros_like(closed)
    if yes_ids and no_ids:
        p_yes, _ = closed_choice_probability(logits[:, 0], yes_ids, no_ids)
        is_yes = torch.isin(first, torch.tensor(list(yes_ids), device=first.device))
        closed = is_yes | torch.isin(first, torch.tensor(list(no_ids), device=first.device))
        probability = torch.where(closed, torch.where(is_yes, p_yes, 1 - p_yes), probability)
    return closed, probability.clamp(0.0, 1.0), is_yes


@torch.no_grad()
def score_answers(
    network: LlavaMedNet,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    new_tokens: torch.Tensor,
    generated_logits: torch.Tensor,
    yes_ids: Sequence[int],
    no_ids: Sequence[int],
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None = None,
    features: Sequence[torch.Tensor | None] | None = None,
) -> list[AnswerScores]:
    """Score generated answers: with the image from ``generate``'s own logits, with the neutral image from one
    batched teacher-forced forward pass over the rows that have images.

    That pass feeds each such row's prompt followed by its generated tokens up to and including the first
    end-of-sequence token, every image replaced by the neutral image (:func:`~.neutral.neutral_pixels`); rows whose
    prompts agree up to their last image token share one pass of that prefix
    (:func:`~.neutral.neutral_answer_logits`).

    Args:
        network: the network that generated the answers.
        input_ids: ``(B, L)`` left-padded prompts, as given to ``generate``.
        attention_mask: ``(B, L)``.
        pixel_values: the batch's images (``(N, 3, S, S)`` or ``(N, C, D, H, W)``), or ``None``.
        new_tokens: ``(B, T)`` what ``generate`` returned.
        generated_logits: ``(B, T, V)`` the raw (unprocessed) logits of each generation step
            (``generate(..., output_logits=True, return_dict_in_generate=True).logits``, stacked).
        yes_ids: the tokenizer's "yes" tokens (:func:`~.confidence.yes_no_token_ids`).
        no_ids: its "no" tokens; with either set empty every answer is scored as open.
        eos_token_id: the stop token(s) generation used.
        pad_token_id: written after the end of an answer (any id; those positions are masked).
        features: per row, the image features for the gate (:func:`image_features`), or ``None``.

    Returns:
        one :class:`AnswerScores` per row, in order.
    """
    rows, width = new_tokens.shape
    device = input_ids.device
    new_tokens = new_tokens.to(device)
    lengths = answer_lengths(new_tokens, eos_token_id)
    answer_mask = torch.arange(width, device=device)[None] < lengths[:, None]
    answer = new_tokens.masked_fill(~answer_mask, 0 if pad_token_id is None else pad_token_id)
    closed, confidence, is_yes = _chosen_probability(generated_logits.to(device), answer, answer_mask, yes_ids, no_ids)
    config = network.config
    with_image = (input_ids == config.image_token_id).sum(1) > 0
    blank: dict[int, float] = {}
    if pixel_values is not None and bool(with_image.any()):
        image_rows = torch.nonzero(with_image).flatten().tolist()
        logits = neutral_answer_logits(network, input_ids, attention_mask, answer, answer_mask, pixel_values,
                                       image_rows)
        _, blank_confidence, _ = _chosen_probability(logits, answer[with_image], answer_mask[with_image], yes_ids,
                                                     no_ids)
        blank = dict(zip(image_rows, blank_confidence.cpu().tolist()))
    confidence = confidence.cpu()
    return [
        AnswerScores(kind="closed" if bool(closed[r]) else "open", raw_confidence=float(confidence[r]),
                     blank_confidence=blank.get(r), features=None if features is None else features[r],
                     choice=("yes" if bool(is_yes[r]) else "no") if bool(closed[r]) else None)
        for r in range(rows)
    ]


def contradicts(answer: AnswerScores, probe: AnswerScores) -> bool:
    """Whether a closed answer and the answer to its negated question (the probe of
    :func:`~monai_llava_med.conversation.negate_question`, a positive question meaning "is the answer no?") say the
    same yes/no, i.e. contradict each other. An open answer on either side contradicts nothing.
    """
    return answer.choice is not None and answer.choice == probe.choice


def trust_fields(
    scores: Sequence[AnswerScores], calibration: Calibration | None = None, pairs: Mapping[int, int] | None = None
) -> list[dict[str, object]]:
    """The trust fields of each answer: ``confidence``, ``image_reliance``, ``abstained``, ``reason``,
    ``gate_distance``.

    Without a calibration the confidence is the raw one, no answer is withheld for low confidence, the image
    reliance threshold is :data:`~.abstention.DEFAULT_MIN_IMAGE_RELIANCE` and there is no gate
    (``gate_distance`` is ``None``).

    Args:
        scores: from :func:`score_answers`.
        calibration: the fitted calibration, or ``None``.
        pairs: paired probes: answer row -> the row of its negated question; a row whose answer
            :func:`contradicts` its probe's abstains with "contradicts its paired question" unless an earlier check
            already failed (:func:`~.abstention.abstention_reason`).
    """
    pairs = pairs or {}
    gate = calibration.gate if calibration is not None else None
    distances: dict[int, float] = {}
    if gate is not None:
        rows = [i for i, s in enumerate(scores) if s.features is not None]
        if rows:
            found = gate.distance(torch.stack([scores[i].features for i in rows]))  # type: ignore[misc]
            distances = dict(zip(rows, found.tolist()))
    fields = []
    for i, s in enumerate(scores):
        if calibration is None:
            confidence, min_confidence, min_reliance = s.raw_confidence, 0.0, DEFAULT_MIN_IMAGE_RELIANCE
        else:
            confidence = calibration.confidence(s.raw_confidence, s.kind)
            min_confidence, min_reliance = calibration.min_confidence(s.kind), calibration.min_image_reliance
        distance = distances.get(i)
        reason = abstention_reason(confidence, min_confidence, s.image_reliance, min_reliance, distance,
                                   None if gate is None else gate.threshold,
                                   contradicts=i in pairs and contradicts(s, scores[pairs[i]]))
        fields.append({"confidence": float(min(max(confidence, 0.0), 1.0)), "image_reliance": s.image_reliance,
                       "abstained": reason is not None, "reason": reason, "gate_distance": distance})
    return fields
