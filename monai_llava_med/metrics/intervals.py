# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Binomial intervals for accuracies: how far a score measured on n questions can move by chance alone."""

from __future__ import annotations

import math

__all__ = ["Z_95", "wilson_interval", "binomial_acceptance_interval"]

#: Two-sided 95 % normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95 % by default).

    Args:
        successes: number of correct answers.
        n: number of questions (> 0).
        z: normal quantile of the wanted coverage.

    Returns:
        ``(low, high)`` in [0, 1].

    Raises:
        ValueError: ``n`` is not positive or ``successes`` is outside ``[0, n]``.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_acceptance_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Where the accuracy of a model whose true accuracy is ``p`` falls, 95 % of the time, on ``n`` fresh questions.

    The normal approximation ``p +- z * sqrt(p (1 - p) / n)``, widened by one question (``1 / n``) on each side
    for the discreteness of a count.

    Args:
        p: the documented accuracy, in [0, 1].
        n: number of fresh questions (> 0).
        z: normal quantile of the wanted coverage.

    Returns:
        ``(low, high)`` clipped to [0, 1].

    Raises:
        ValueError: ``p`` outside [0, 1] or ``n`` not positive.
    """
    if not 0 <= p <= 1 or n <= 0:
        raise ValueError(f"need 0 <= p <= 1 and n > 0, got p={p}, n={n}")
    half = z * math.sqrt(p * (1 - p) / n) + 1 / n
    return max(0.0, p - half), min(1.0, p + half)
