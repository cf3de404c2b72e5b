# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Scoring for the phantom VQA benchmark: Wilson 95 % intervals, split checks and image-free baselines."""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict

from monai_llava_med.data.phantom import FAMILIES, VOLUME_FAMILIES, make_questions
from monai_llava_med.metrics import normalize_answer

__all__ = [
    "balanced_accuracy", "check_disjoint", "consistent_answers", "fmt", "groups", "image_free_baselines", "pick",
    "wilson",
]

Z95 = 1.959963984540054


def wilson(hits: list[int]) -> tuple[float, float, float]:
    """Accuracy and its Wilson 95 % score interval.

    Args:
        hits: one 0/1 per question.

    Returns:
        ``(accuracy, low, high)``; nan for no questions.
    """
    n = len(hits)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p, z2 = sum(hits) / n, Z95**2
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def fmt(key: str, hits: list[int]) -> str:
    """``key=acc key_ci95=low-high`` for a RESULT line.

    Args:
        key: the figure's name.
        hits: one 0/1 per question.

    Returns:
        The two key=value fields.
    """
    p, lo, hi = wilson(hits)
    return f"{key}={p:.4f} {key}_ci95={lo:.4f}-{hi:.4f}"


def check_disjoint(splits: dict[str, list]) -> None:
    """Refuse to run if two splits share a phantom image (they come from separate random streams).

    Args:
        splits: split name -> its ``PhantomCase`` list.

    Raises:
        RuntimeError: a phantom's image also occurs in another split.
    """
    seen: dict[bytes, str] = {}
    for name, cases in splits.items():
        for case in cases:
            key = hashlib.sha1(case.image.tobytes()).digest()
            if seen.setdefault(key, name) != name:
                raise RuntimeError(f"phantom {case.case_id} of split {name} repeats an image of split {seen[key]}")


def image_free_baselines(train_cases: list, questions: list, question_fn=make_questions) -> tuple[list[float], list[int]]:
    """Image-free baselines on evaluation questions, learnt from the train split only.

    Args:
        train_cases: the train split's phantoms.
        questions: ``(case index, PhantomQA)`` pairs.
        question_fn: every question of one case (``make_questions``, ``make_volume_questions``).

    Returns:
        Per question: chance (1 / the answers that question text has in train, 0 if the truth is not among
        them) and the hit (0/1) of the train split's most frequent answer to that text.
    """
    answers: dict[str, Counter] = defaultdict(Counter)
    for case in train_cases:
        for qa in question_fn(case):
            answers[qa.question][normalize_answer(qa.answer)] += 1
    chance, majority = [], []
    for _, qa in questions:
        seen = answers[qa.question]
        truth = normalize_answer(qa.answer)
        chance.append((1.0 / len(seen)) if truth in seen else 0.0)
        majority.append(int(bool(seen) and seen.most_common(1)[0][0] == truth))
    return chance, majority


def groups(questions: list) -> dict[str, list[int]]:
    """Question indices per answer type and per family.

    Args:
        questions: ``(case index, PhantomQA)`` pairs.

    Returns:
        ``CLOSED``, ``OPEN`` then the families in :data:`FAMILIES` order, each to its question indices.
    """
    out: dict[str, list[int]] = defaultdict(list)
    for i, (_, qa) in enumerate(questions):
        out[qa.answer_type].append(i)
        out[qa.family].append(i)
    return {k: out[k] for k in ("CLOSED", "OPEN", *FAMILIES, *VOLUME_FAMILIES) if out[k]}


def pick(values: list, idx: list[int]) -> list:
    """The entries of ``values`` at ``idx``.

    Args:
        values: per-question values.
        idx: question indices.

    Returns:
        The selected values, in ``idx`` order.
    """
    return [values[i] for i in idx]


def balanced_accuracy(hits: list[int], truths: list[str]) -> float:
    """Mean of the accuracies on each truth value (for side questions: yes and no), nan when one is missing.

    Args:
        hits: one 0/1 per question.
        truths: the ground-truth answer of each question.

    Returns:
        The balanced accuracy.
    """
    per = defaultdict(list)
    for h, t in zip(hits, truths):
        per[normalize_answer(t)].append(h)
    if len(per) < 2:
        return float("nan")
    return sum(sum(v) / len(v) for v in per.values()) / len(per)


_COUNTS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "0": 0, "1": 1, "2": 2, "3": 3}


def consistent_answers(presence: str | None, left: str | None, right: str | None, count: str) -> bool:
    """Whether a model's four answers about one phantom can all be true together.

    Args:
        presence: closed answer ("yes"/"no"/None) to "Is there a lesion in this image?".
        left: closed answer to "Is there a lesion on the left side?".
        right: closed answer to "...on the right side?".
        count: normalised answer to "How many lesions are there?".

    Returns:
        False when an answer is not yes/no (or not a count), or when presence disagrees with the sides or the
        count, or both sides are "yes" with a count below two.
    """
    if None in (presence, left, right) or count not in _COUNTS:
        return False
    p, sides, n = presence == "yes", (left == "yes") + (right == "yes"), _COUNTS[count]
    return p == (sides > 0) and p == (n > 0) and n >= sides
