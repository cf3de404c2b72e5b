# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Scores of one VQA question: closed correctness, open token recall / precision / F1, exact match.

Closed questions:

- a yes/no ground truth (its first normalised token is "yes" or "no": "yes", "No.", "Yes, there is"):
  the prediction's first yes/no token (:func:`closed_answer`) must equal that token; a prediction with no
  yes/no token is wrong;
- any other closed ground truth (SLAKE "left" / "right", "liver or spleen" choices): the normalised
  prediction must start with the normalised ground-truth tokens ("The left lung" is right for "left",
  "right, not left" is wrong, "left" is wrong for "left lung"). This rewards answers that state the choice
  first, the way yes/no answers are read.

Open questions: the normalised ground-truth tokens are a multiset G, the prediction's tokens P;
``recall = |G ∩ P| / |G|`` (the LLaVA-Med "open recall"), ``precision = |G ∩ P| / |P|``, F1 their harmonic
mean (0 when nothing overlaps), exact match ``normalize(pred) == normalize(gt)``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from monai_llava_med.data.records import ANSWER_TYPES, YES_NO
from monai_llava_med.data.records import closed_answer_type as infer_answer_type

from .normalization import answer_tokens, closed_answer

__all__ = ["ANSWER_TYPES", "QuestionScore", "infer_answer_type", "score_question", "token_scores", "yes_no_of"]


def yes_no_of(ground_truth_normalized: str) -> str | None:
    """"yes" / "no" when a normalised closed ground truth starts with that token ("yes there is"), else None."""
    first = ground_truth_normalized.split(" ", 1)[0]
    return first if first in YES_NO else None


def token_scores(prediction_tokens: list[str], truth_tokens: list[str]) -> tuple[float, float, float]:
    """``(recall, precision, f1)`` of two token lists, counted as multisets.

    Args:
        prediction_tokens: normalised prediction tokens.
        truth_tokens: normalised ground-truth tokens (non-empty).
    """
    overlap = sum((Counter(prediction_tokens) & Counter(truth_tokens)).values())
    if overlap == 0:
        return 0.0, 0.0, 0.0
    recall = overlap / len(truth_tokens)
    precision = overlap / len(prediction_tokens)
    return recall, precision, 2 * recall * precision / (recall + precision)


@dataclass(frozen=True)
class QuestionScore:
    """The scores of one question.

    Args:
        question_id: the question id.
        dataset: the data set the question belongs to.
        answer_type: "OPEN" or "CLOSED".
        ground_truth: the reference answer as text.
        prediction: the model's answer ("" for a failed or missing prediction).
        gt_normalized: normalised reference.
        pred_normalized: normalised prediction.
        closed_pred: the prediction's yes/no for yes/no questions (None when it gave neither), else None.
        correct: closed questions: whether the answer is right; open questions: exact match.
        recall: token recall of the reference in the prediction.
        precision: token precision.
        f1: token F1.
        exact_match: normalised exact match.
        status: "ok", "failed" (the inference reported an error for this item) or "missing" (no prediction).
    """

    question_id: str
    dataset: str
    answer_type: str
    ground_truth: str
    prediction: str
    gt_normalized: str
    pred_normalized: str
    closed_pred: str | None
    correct: bool
    recall: float
    precision: float
    f1: float
    exact_match: bool
    status: str = "ok"

    @property
    def no_answer(self) -> bool:
        """A yes/no question answered (status "ok") without "yes" or "no" in the prediction."""
        return (
            self.status == "ok"
            and self.answer_type == "CLOSED"
            and yes_no_of(self.gt_normalized) is not None
            and self.closed_pred is None
        )

    def to_dict(self) -> dict[str, Any]:
        """The score as a JSON-ready dict."""
        return asdict(self)


def score_question(
    question_id: str,
    dataset: str,
    answer_type: str,
    ground_truth: str,
    prediction: str,
    status: str = "ok",
) -> QuestionScore:
    """Score one question (see the module docstring for the rules).

    Args:
        question_id: the question id.
        dataset: its data set.
        answer_type: "OPEN" or "CLOSED".
        ground_truth: the reference answer as text (its normalised form must not be empty).
        prediction: the model's answer as text.
        status: "ok", "failed" or "missing".

    Raises:
        ValueError: an unknown answer type or a reference that normalises to nothing.
    """
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be OPEN or CLOSED, got {answer_type!r}")
    gt_tokens = answer_tokens(ground_truth)
    if not gt_tokens:
        raise ValueError(f"the ground truth {ground_truth!r} is empty after normalisation")
    pred_tokens = answer_tokens(prediction)
    gt_norm, pred_norm = " ".join(gt_tokens), " ".join(pred_tokens)
    exact = gt_norm == pred_norm
    recall, precision, f1 = token_scores(pred_tokens, gt_tokens)
    closed_pred = None
    if answer_type == "CLOSED":
        gt_yes_no = yes_no_of(gt_norm)
        if gt_yes_no is not None:
            closed_pred = closed_answer(prediction)
            correct = closed_pred == gt_yes_no
        else:
            correct = pred_tokens[: len(gt_tokens)] == gt_tokens
    else:
        correct = exact
    return QuestionScore(
        question_id=question_id,
        dataset=dataset,
        answer_type=answer_type,
        ground_truth=ground_truth,
        prediction=prediction,
        gt_normalized=gt_norm,
        pred_normalized=pred_norm,
        closed_pred=closed_pred,
        correct=correct,
        recall=recall,
        precision=precision,
        f1=f1,
        exact_match=exact,
        status=status,
    )
