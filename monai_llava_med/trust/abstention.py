# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Why an answer is withheld: the four reasons, the default threshold on image reliance, and their order.

An abstained answer still carries what the model said (``answer``); ``abstained`` and ``reason`` mark it.
"""

from __future__ import annotations

from ..constants import REASON_CONTRADICTION, REASON_IMAGE_INDEPENDENT, REASON_LOW_CONFIDENCE, REASON_OUT_OF_DOMAIN

__all__ = [
    "DEFAULT_MIN_IMAGE_RELIANCE",
    "REASONS",
    "REASON_CONTRADICTION",
    "REASON_IMAGE_INDEPENDENT",
    "REASON_LOW_CONFIDENCE",
    "REASON_OUT_OF_DOMAIN",
    "TRUST_FIELDS",
    "abstention_reason",
]

#: every value ``reason`` may take besides ``None``.
REASONS = (REASON_LOW_CONFIDENCE, REASON_IMAGE_INDEPENDENT, REASON_OUT_OF_DOMAIN, REASON_CONTRADICTION)
#: the per-answer trust fields, in the order they are written (``gate_distance`` is ``None`` without a gate).
TRUST_FIELDS = ("confidence", "image_reliance", "abstained", "reason", "gate_distance")
#: image reliance below which an answer counts as coming from the question alone, unless a calibration says
#: otherwise: a move of less than 5 points of probability when the image is blanked.
DEFAULT_MIN_IMAGE_RELIANCE = 0.05


def abstention_reason(
    confidence: float,
    min_confidence: float,
    image_reliance: float | None,
    min_image_reliance: float,
    gate_distance: float | None = None,
    gate_threshold: float | None = None,
    contradicts: bool = False,
) -> str | None:
    """The one reason to abstain, or ``None`` to answer.

    The checks run from the input to the answer, and the first that fails names the reason: the input gate
    (``gate_distance > gate_threshold``), then image reliance (``image_reliance < min_image_reliance``; skipped for a
    text-only question, whose reliance is ``None``), then confidence (``confidence < min_confidence``), then the
    paired probe (``contradicts``: the question and its negated form got the same yes/no).

    Args:
        confidence: the calibrated confidence of the answer, in [0, 1].
        min_confidence: the abstention threshold on confidence (0 never abstains).
        image_reliance: how far the answer's probability moves without the image, or ``None`` without an image.
        min_image_reliance: the threshold on image reliance (0 never abstains).
        gate_distance: the image's distance to the in-domain features, or ``None`` without a gate or an image.
        gate_threshold: the gate's refusal distance, or ``None`` without a gate.
        contradicts: the answer contradicts the answer to its negated question (paired probes).
    """
    if gate_distance is not None and gate_threshold is not None and gate_distance > gate_threshold:
        return REASON_OUT_OF_DOMAIN
    if image_reliance is not None and image_reliance < min_image_reliance:
        return REASON_IMAGE_INDEPENDENT
    if confidence < min_confidence:
        return REASON_LOW_CONFIDENCE
    if contradicts:
        return REASON_CONTRADICTION
    return None
