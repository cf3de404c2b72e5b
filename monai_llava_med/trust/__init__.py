# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""How far to trust an answer: confidence, image reliance, calibration, the input gate and abstention.

The layer sits above ``networks`` and ``data`` and below ``engines`` (a sibling of ``metrics``): it reads a
network's probabilities for an answer already generated (one teacher-forced forward pass, batched, the image and a
neutral image side by side), calibrates them, measures how far an image lies from the in-domain images, and says
whether to abstain and why. Nothing in it depends on particular weights. See ``docs/trust.md``.

Names are imported on first use (PEP 562 ``__getattr__`` via ``lazy_loader``), so importing the package
costs nothing until one of them is needed.
"""

from __future__ import annotations

import lazy_loader as _lazy

_SUBMODULE_ATTRS = {
    "abstention": [
        "DEFAULT_MIN_IMAGE_RELIANCE", "REASONS", "REASON_CONTRADICTION", "REASON_IMAGE_INDEPENDENT",
        "REASON_LOW_CONFIDENCE", "REASON_OUT_OF_DOMAIN", "TRUST_FIELDS", "abstention_reason",
    ],
    "assessment": [
        "AnswerScores", "contradicts", "image_features", "neutral_pixels", "score_answers", "trust_fields",
    ],
    "calibration": [
        "CALIBRATION_FILE", "KIND_FALLBACK", "QUESTION_KINDS", "Calibration", "PlattScaling", "conformal_risk_threshold",
        "load_calibration",
    ],
    "confidence": [
        "answer_lengths", "closed_choice_probability", "sequence_probability", "yes_no_token_ids",
    ],
    "gate": ["GATE_FILE", "FeatureGate", "ProjectorInputs", "fit_feature_gate", "ledoit_wolf_covariance"],
}

__getattr__, __dir__, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = list(_lazy_all)
