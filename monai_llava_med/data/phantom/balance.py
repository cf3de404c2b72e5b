# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Evaluation question sets whose closed questions are balanced yes/no per question text (chance = 50 %).

Works with any question function of a case: :func:`~.questions.make_questions` for 2-D phantoms,
:func:`~.volume_questions.make_volume_questions` for volumes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from .generator import PhantomCase
from .questions import PhantomQA

__all__ = ["balanced_question_set"]


def balanced_question_set(
    cases: Sequence[PhantomCase],
    question_fn: Callable[[PhantomCase], list[PhantomQA]],
    limit: int,
    seed: int,
    open_limit: int | None = None,
) -> list[tuple[int, PhantomQA]]:
    """Closed questions balanced yes/no per question text, then open questions.

    For each closed question text, as many "yes" as "no" questions are drawn (the rarer answer's count); the
    pairs are then drawn at random down to ``limit // 2`` pairs, so the balance holds for every text in the
    result. Open questions are drawn at random up to ``open_limit``.

    Args:
        cases: the phantoms.
        question_fn: questions of one case (e.g. ``make_questions`` or ``make_volume_questions``).
        limit: most closed questions (rounded down to an even number).
        seed: seed of the draws.
        open_limit: most open questions (default ``limit // 2``).

    Returns:
        ``(case index, question)`` pairs: the closed ones (shuffled), then the open ones (shuffled).

    Raises:
        ValueError: a closed question whose answer is not "yes" or "no", or a negative limit.
    """
    if limit < 0 or (open_limit is not None and open_limit < 0):
        raise ValueError(f"limits must be >= 0, got limit={limit}, open_limit={open_limit}")
    rng = np.random.default_rng(seed)
    by_text: dict[str, dict[str, list[tuple[int, PhantomQA]]]] = defaultdict(lambda: {"yes": [], "no": []})
    open_qs: list[tuple[int, PhantomQA]] = []
    for k, case in enumerate(cases):
        for qa in question_fn(case):
            if qa.answer_type != "CLOSED":
                open_qs.append((k, qa))
            elif qa.answer in ("yes", "no"):
                by_text[qa.question][qa.answer].append((k, qa))
            else:
                raise ValueError(f"closed question {qa.question!r} has answer {qa.answer!r}, not yes/no")
    pairs: list[tuple[tuple[int, PhantomQA], tuple[int, PhantomQA]]] = []
    for text in sorted(by_text):
        yes, no = by_text[text]["yes"], by_text[text]["no"]
        n = min(len(yes), len(no))
        pick_yes, pick_no = rng.permutation(len(yes))[:n], rng.permutation(len(no))[:n]
        pairs += [(yes[i], no[j]) for i, j in zip(pick_yes, pick_no)]
    kept = [pairs[i] for i in rng.permutation(len(pairs))[: limit // 2]]
    closed = [q for pair in kept for q in pair]
    closed = [closed[i] for i in rng.permutation(len(closed))]
    n_open = limit // 2 if open_limit is None else open_limit
    return closed + [open_qs[i] for i in rng.permutation(len(open_qs))[:n_open]]
