# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The training mix of phantom questions: families by weight, side questions that cannot be answered by presence.

Asking every question of every phantom (:func:`~.questions.make_questions`) gives a mix in which side questions
are 2 of 11 and most of them carry the presence answer: on a phantom with no lesion both sides are "no", on a
phantom with lesions on both sides both are "yes", and only one-sided phantoms have a side whose answer differs
from "is there a lesion?". On the default generator 77.7 % of side questions have the presence answer, so a
network that answers "is there a lesion on the left side?" with "is there a lesion?" is right 77.7 % of the
time, and a small model trained on that mix never leaves that solution (left and right answered identically on
every phantom; ``benchmarks/bench_train.py --sampling all`` reproduces it).

:func:`weighted_questions` draws the training questions instead: a family by :data:`DEFAULT_FAMILY_WEIGHTS`
(sides and counts, the skills that need where and how many, get more weight), then, for the side family, half of
the draws are questions whose answer *disagrees* with presence (the empty side of a one-sided phantom) and half
agree with it, so copying presence scores exactly 50 %.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .generator import PhantomCase
from .questions import FAMILIES, PhantomQA, make_questions

__all__ = ["DEFAULT_FAMILY_WEIGHTS", "family_probabilities", "presence_agreement", "weighted_questions"]

#: Share of the training questions per family (normalised by :func:`family_probabilities`).
DEFAULT_FAMILY_WEIGHTS: dict[str, float] = {
    "presence": 0.08,
    "side": 0.30,
    "brightness": 0.08,
    "modality_closed": 0.08,
    "count": 0.30,
    "modality": 0.08,
    "location": 0.08,
}


def family_probabilities(weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Normalised family probabilities, in :data:`FAMILIES` order.

    Args:
        weights: family -> non-negative weight (:data:`DEFAULT_FAMILY_WEIGHTS` when None); families left out
            are never drawn.

    Raises:
        ValueError: an unknown family, a negative or non-finite weight, or no positive weight.
    """
    weights = DEFAULT_FAMILY_WEIGHTS if weights is None else weights
    unknown = sorted(set(weights) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown question families {unknown}; known: {FAMILIES}")
    values = {f: float(weights.get(f, 0.0)) for f in FAMILIES}
    if any(not np.isfinite(v) or v < 0 for v in values.values()):
        raise ValueError(f"family weights must be finite and >= 0, got {dict(weights)}")
    total = sum(values.values())
    if total <= 0:
        raise ValueError("at least one family weight must be > 0")
    return {f: v / total for f, v in values.items() if v > 0}


def _presence(qas: Sequence[PhantomQA]) -> str:
    return next(q.answer for q in qas if q.family == "presence")


def presence_agreement(questions: Sequence[tuple[PhantomCase, PhantomQA]]) -> float:
    """Fraction of the side questions whose answer equals their phantom's presence answer.

    This is the accuracy of answering every side question with the presence answer (the shortcut).

    Args:
        questions: ``(case, question)`` pairs; only the side questions count.

    Returns:
        The fraction, or nan when there is no side question.
    """
    side = [(c, q) for c, q in questions if q.family == "side"]
    if not side:
        return float("nan")
    return float(np.mean([q.answer == _presence(make_questions(c, ("presence",))) for c, q in side]))


def weighted_questions(
    cases: Sequence[PhantomCase],
    num_questions: int,
    rng: np.random.Generator,
    weights: Mapping[str, float] | None = None,
) -> list[tuple[int, PhantomQA]]:
    """Draw a training mix of questions about ``cases``.

    Each draw picks a family by weight, then a phantom uniformly and one of its questions of that family
    uniformly; for the side family a fair coin first decides whether the question must disagree with the
    phantom's presence answer (then the phantom is drawn among those that have such a question: one-sided ones,
    asked about their empty side) or agree with it.

    Args:
        cases: the phantoms (answers always come from their label maps).
        num_questions: number of draws.
        rng: random generator (the mix is reproducible from its seed).
        weights: family weights (:data:`DEFAULT_FAMILY_WEIGHTS` when None).

    Returns:
        ``(case index, question)`` pairs in draw order.

    Raises:
        ValueError: no cases, or bad weights.
    """
    if not cases:
        raise ValueError("weighted_questions needs at least one phantom")
    probs = family_probabilities(weights)
    families = list(probs)
    per_case = [make_questions(c) for c in cases]
    agree: list[tuple[int, PhantomQA]] = []
    disagree: list[tuple[int, PhantomQA]] = []
    for k, qas in enumerate(per_case):
        presence = _presence(qas)
        for qa in qas:
            if qa.family == "side":
                (agree if qa.answer == presence else disagree).append((k, qa))
    out: list[tuple[int, PhantomQA]] = []
    draws = rng.choice(len(families), size=int(num_questions), p=[probs[f] for f in families])
    for d in draws:
        fam = families[int(d)]
        if fam == "side" and agree and disagree:
            pool = disagree if rng.random() < 0.5 else agree
            out.append(pool[int(rng.integers(len(pool)))])
            continue
        # one phantom uniformly, then one of its questions of the family uniformly
        k = int(rng.integers(len(cases)))
        pool_k = [q for q in per_case[k] if q.family == fam]
        out.append((k, pool_k[int(rng.integers(len(pool_k)))]))
    return out
