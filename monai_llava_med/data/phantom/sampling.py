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

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .generator import PhantomCase
from .questions import FAMILIES, PhantomQA, make_questions
from .volume_questions import VOLUME_FAMILIES, make_volume_questions

__all__ = [
    "DEFAULT_FAMILY_WEIGHTS",
    "DEFAULT_VOLUME_FAMILY_WEIGHTS",
    "family_probabilities",
    "presence_agreement",
    "weighted_questions",
    "weighted_volume_questions",
]

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

#: The same for volume questions (:mod:`.volume_questions`); side and half are balanced against presence.
DEFAULT_VOLUME_FAMILY_WEIGHTS: dict[str, float] = {
    "volume_presence": 0.10,
    "volume_count": 0.25,
    "volume_half": 0.25,
    "volume_side": 0.25,
    "volume_largest": 0.15,
}


def family_probabilities(
    weights: Mapping[str, float] | None = None, families: Sequence[str] = FAMILIES
) -> dict[str, float]:
    """Normalised family probabilities, in ``families`` order.

    Args:
        weights: family -> non-negative weight (:data:`DEFAULT_FAMILY_WEIGHTS` when None); families left out
            are never drawn.
        families: the known families (:data:`~.questions.FAMILIES` or :data:`~.volume_questions.VOLUME_FAMILIES`).

    Raises:
        ValueError: an unknown family, a negative or non-finite weight, or no positive weight.
    """
    weights = DEFAULT_FAMILY_WEIGHTS if weights is None else weights
    unknown = sorted(set(weights) - set(families))
    if unknown:
        raise ValueError(f"unknown question families {unknown}; known: {tuple(families)}")
    values = {f: float(weights.get(f, 0.0)) for f in families}
    if any(not np.isfinite(v) or v < 0 for v in values.values()):
        raise ValueError(f"family weights must be finite and >= 0, got {dict(weights)}")
    total = sum(values.values())
    if total <= 0:
        raise ValueError("at least one family weight must be > 0")
    return {f: v / total for f, v in values.items() if v > 0}


def _presence(qas: Sequence[PhantomQA], family: str = "presence") -> str:
    return next(q.answer for q in qas if q.family == family)


def presence_agreement(
    questions: Sequence[tuple[PhantomCase, PhantomQA]],
    side_families: Sequence[str] = ("side",),
    question_fn: Callable[[PhantomCase], list[PhantomQA]] = make_questions,
    presence_family: str = "presence",
) -> float:
    """Fraction of the side questions whose answer equals their phantom's presence answer.

    This is the accuracy of answering every side question with the presence answer (the shortcut).

    Args:
        questions: ``(case, question)`` pairs; only those of ``side_families`` count.
        side_families: the families to check.
        question_fn: questions of one case (gives the presence answer).
        presence_family: the family of the presence question.

    Returns:
        The fraction, or nan when there is no such question.
    """
    side = [(c, q) for c, q in questions if q.family in side_families]
    if not side:
        return float("nan")
    return float(np.mean([q.answer == _presence(question_fn(c), presence_family) for c, q in side]))


def weighted_questions(
    cases: Sequence[PhantomCase],
    num_questions: int,
    rng: np.random.Generator,
    weights: Mapping[str, float] | None = None,
    *,
    question_fn: Callable[[PhantomCase], list[PhantomQA]] = make_questions,
    families: Sequence[str] = FAMILIES,
    balanced: Sequence[str] = ("side",),
    presence_family: str = "presence",
) -> list[tuple[int, PhantomQA]]:
    """Draw a training mix of questions about ``cases``.

    Each draw picks a family by weight, then a phantom uniformly among those that have questions of that
    family and one of its questions uniformly; for a ``balanced`` family a fair coin first decides whether the
    question must disagree with the phantom's presence answer (e.g. the empty side of a one-sided phantom) or
    agree with it, so that copying presence scores 50 % on that family.

    Args:
        cases: the phantoms (answers always come from their label maps).
        num_questions: number of draws.
        rng: random generator (the mix is reproducible from its seed).
        weights: family weights (:data:`DEFAULT_FAMILY_WEIGHTS` when None).
        question_fn: every question of one case (:func:`~.questions.make_questions`,
            :func:`~.volume_questions.make_volume_questions`).
        families: the families ``question_fn`` asks.
        balanced: families balanced against the presence answer.
        presence_family: the family of the "is there a lesion" question.

    Returns:
        ``(case index, question)`` pairs in draw order.

    Raises:
        ValueError: no cases, bad weights, or a weighted family no case has.
    """
    if not cases:
        raise ValueError("weighted_questions needs at least one phantom")
    probs = family_probabilities(weights, families)
    names = list(probs)
    per_family: dict[str, dict[int, list[PhantomQA]]] = defaultdict(lambda: defaultdict(list))
    agreement: dict[tuple[str, bool], list[tuple[int, PhantomQA]]] = defaultdict(list)
    for k, case in enumerate(cases):
        qas = question_fn(case)
        presence = _presence(qas, presence_family) if balanced else None
        for qa in qas:
            per_family[qa.family][k].append(qa)
            if qa.family in balanced:
                agreement[(qa.family, qa.answer == presence)].append((k, qa))
    missing = [f for f in names if not per_family[f]]
    if missing:
        raise ValueError(f"no phantom has questions of the weighted families {missing}")
    case_lists = {f: sorted(per_family[f]) for f in names}
    out: list[tuple[int, PhantomQA]] = []
    for d in rng.choice(len(names), size=int(num_questions), p=[probs[f] for f in names]):
        fam = names[int(d)]
        agree, disagree = agreement[(fam, True)], agreement[(fam, False)]
        if fam in balanced and agree and disagree:
            pool = disagree if rng.random() < 0.5 else agree
            out.append(pool[int(rng.integers(len(pool)))])
            continue
        k = case_lists[fam][int(rng.integers(len(case_lists[fam])))]
        qas = per_family[fam][k]
        out.append((k, qas[int(rng.integers(len(qas)))]))
    return out


def weighted_volume_questions(
    cases: Sequence[PhantomCase],
    num_questions: int,
    rng: np.random.Generator,
    weights: Mapping[str, float] | None = None,
) -> list[tuple[int, PhantomQA]]:
    """:func:`weighted_questions` over volume questions: side and half balanced against volume presence.

    Args:
        cases: 3-D phantoms.
        num_questions: number of draws.
        rng: random generator.
        weights: family weights (:data:`DEFAULT_VOLUME_FAMILY_WEIGHTS` when None).
    """
    return weighted_questions(
        cases, num_questions, rng, DEFAULT_VOLUME_FAMILY_WEIGHTS if weights is None else weights,
        question_fn=make_volume_questions, families=VOLUME_FAMILIES, balanced=("volume_side", "volume_half"),
        presence_family="volume_presence",
    )
