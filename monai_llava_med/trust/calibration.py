# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Calibration of answer confidences and the abstention threshold, saved as ``calibration.json``.

* **Platt scaling per question type** (``closed`` / ``open``): ``confidence = sigmoid(a * logit(raw) + b)``, fitted
  by Newton's method on the log-loss of the correctness labels with Platt's smoothed targets
  ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` (so a split with no errors does not drive ``a`` to infinity). The
  identity ``a = 1, b = 0`` is the uncalibrated confidence; ``b = 0`` is temperature scaling with ``T = 1 / a``.
* **The abstention threshold** by split-conformal risk control (:func:`conformal_risk_threshold`) on answers not
  used for the scaling, one per question type.

The file also holds the threshold on image reliance and the input gate's numbers (its tensors are in
``gate.safetensors`` beside it, see :mod:`.gate`). Both files are written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_write_bytes
from ..errors import CalibrationError
from .abstention import DEFAULT_MIN_IMAGE_RELIANCE
from .gate import FeatureGate

__all__ = [
    "CALIBRATION_FILE", "KIND_FALLBACK", "QUESTION_KINDS", "Calibration", "PlattScaling",
    "conformal_risk_threshold", "load_calibration",
]

#: the calibration's file name, beside the weights (or in the folder ``calibrate.json`` writes).
CALIBRATION_FILE = "calibration.json"
_FORMAT, _VERSION = "monai-llava-med-calibration", 1
#: answer types, each with its own scaling and threshold: ``closed`` (the answer's first token is yes/no),
#: ``number`` (an open answer that states a number first, :func:`~monai_llava_med.metrics.is_numeric_answer`: counts
#: and measurements, whose confidence behaves unlike free text) and ``open`` (any other answer).
QUESTION_KINDS = ("closed", "open", "number")
#: the type whose scaling and threshold stand in for one a file or a fit lacks (calibration files before the
#: ``number`` type scaled numeric answers as open ones).
KIND_FALLBACK = {"number": "open"}
_EPS = 1e-6


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # stable for large |z|


@dataclass
class PlattScaling:
    """``confidence = sigmoid(a * logit(raw) + b)``.

    Args:
        a: slope on the raw log-odds (``1 / temperature``).
        b: offset.
        n: answers it was fitted on (0: the identity, never fitted).
    """

    a: float = 1.0
    b: float = 0.0
    n: int = 0

    def __call__(self, raw: float | np.ndarray) -> np.ndarray:
        """The calibrated confidence of raw probabilities, in [0, 1]."""
        return _sigmoid(self.a * _logit(raw) + self.b)

    @classmethod
    def fit(cls, raw: Sequence[float], correct: Sequence[bool], iterations: int = 100) -> PlattScaling:
        """Fit ``a`` and ``b`` on raw confidences and whether each answer was right.

        Args:
            raw: raw confidences in [0, 1].
            correct: correctness labels, one per confidence.
            iterations: Newton steps at most (with step halving; it stops when the step is below 1e-10).

        Returns:
            the fitted scaling (the identity when ``raw`` is empty).
        """
        z, y = _logit(np.asarray(raw, dtype=np.float64)), np.asarray(correct, dtype=bool)
        if z.shape != y.shape:
            raise ValueError(f"{z.size} confidences but {y.size} correctness labels")
        if z.size == 0:
            return cls()
        positives, negatives = int(y.sum()), int((~y).sum())
        target = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))
        design = np.stack([z, np.ones_like(z)], 1)

        def loss(w: np.ndarray) -> float:
            s = design @ w
            return float(np.sum(np.logaddexp(0, s) - target * s))

        w = np.array([1.0, 0.0])
        for _ in range(iterations):
            q = _sigmoid(design @ w)
            grad = design.T @ (q - target)
            hess = (design * (q * (1 - q))[:, None]).T @ design + 1e-9 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            scale, before = 1.0, loss(w)
            while scale > 1e-4 and loss(w - scale * step) > before:
                scale /= 2
            w = w - scale * step
            if np.abs(scale * step).max() < 1e-10:
                break
        return cls(a=float(w[0]), b=float(w[1]), n=int(z.size))


def conformal_risk_threshold(confidence: Sequence[float], correct: Sequence[bool], target_error: float) -> float:
    """The abstention threshold of split-conformal risk control (Angelopoulos et al., 2024) for ``target_error``.

    An answer is given when its confidence is ``>= lambda`` and withheld otherwise. The loss of calibration answer
    ``i`` is ``L_i(lambda) = 1[wrong_i and c_i >= lambda]`` (a wrong answer that was given), non-increasing in
    ``lambda`` and bounded by ``B = 1``. With ``n`` calibration answers and ``R_n(lambda) = sum_i L_i(lambda) / n``,

        lambda_hat = inf { lambda : n / (n + 1) * R_n(lambda) + B / (n + 1) <= alpha },

    i.e. the smallest threshold with ``(#wrong answers given + 1) / (n + 1) <= alpha``. Then, for a new answer
    exchangeable with the calibration answers, ``E[L_{n+1}(lambda_hat)] <= alpha``: the probability that a question
    is answered *and* wrongly is at most ``alpha`` (not the error rate among the answers given).

    Args:
        confidence: calibrated confidences of held-out answers (not those the scaling was fitted on).
        correct: whether each was right.
        target_error: ``alpha`` in (0, 1).

    Returns:
        ``lambda_hat``: 0.0 when every answer may be given; just above the confidence of the first wrong answer
        that must be withheld otherwise; just above 1 (withhold everything) when even that cannot meet ``alpha``
        (fewer than ``1 / alpha - 1`` calibration answers).
    """
    if not 0 < target_error < 1:
        raise ValueError(f"target_error must lie in (0, 1), got {target_error}")
    c, y = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if c.shape != y.shape:
        raise ValueError(f"{c.size} confidences but {y.size} correctness labels")
    allowed = math.floor(target_error * (c.size + 1) - 1 + 1e-12)  # the most wrong answers that may be given
    if allowed < 0:
        return math.nextafter(1.0, 2.0)
    wrong = np.sort(c[~y])[::-1]
    if wrong.size <= allowed:
        return 0.0
    return math.nextafter(float(wrong[allowed]), math.inf)  # withholds that answer and every one below it


@dataclass
class Calibration:
    """Everything fitted for trust on held-out labelled data.

    Args:
        scaling: per answer type (:data:`QUESTION_KINDS`), the Platt scaling of raw confidences; a type left out
            takes its stand-in's (:data:`KIND_FALLBACK`), else the identity.
        thresholds: per answer type, abstain when the calibrated confidence is below it (0: never); a type left
            out takes its stand-in's, else 0.
        target_error: the ``alpha`` the thresholds were chosen for (``None``: not chosen by risk control).
        min_image_reliance: abstain when image reliance is below it.
        gate: the input gate, or ``None``.
        model: name of the model it was fitted for.
        fit_summary: counts and risks of the fit, for the record.
    """

    scaling: dict[str, PlattScaling] = field(default_factory=lambda: {k: PlattScaling() for k in QUESTION_KINDS})
    thresholds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUESTION_KINDS, 0.0))
    target_error: float | None = None
    min_image_reliance: float = DEFAULT_MIN_IMAGE_RELIANCE
    gate: FeatureGate | None = None
    model: str | None = None
    fit_summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scaling, self.thresholds = dict(self.scaling), dict(self.thresholds)
        for kind in QUESTION_KINDS:
            self.scaling.setdefault(kind, self.scaling.get(KIND_FALLBACK.get(kind), PlattScaling()))
            self.thresholds.setdefault(kind, self.thresholds.get(KIND_FALLBACK.get(kind), 0.0))

    def confidence(self, raw: float, kind: str) -> float:
        """The calibrated confidence of a raw one for an answer of type ``kind`` (:data:`QUESTION_KINDS`), in [0, 1]."""
        return float(np.clip(self.scaling.get(kind, PlattScaling())(raw), 0.0, 1.0))

    def min_confidence(self, kind: str) -> float:
        """The abstention threshold on calibrated confidence for the question type."""
        return float(self.thresholds.get(kind, 0.0))

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of ``calibration.json``."""
        return {
            "format": _FORMAT, "version": _VERSION, "model": self.model, "target_error": self.target_error,
            "scaling": {k: {"method": "platt", "a": s.a, "b": s.b, "n": s.n} for k, s in self.scaling.items()},
            "thresholds": dict(self.thresholds), "min_image_reliance": self.min_image_reliance,
            "gate": None if self.gate is None else self.gate.summary(), "fit_summary": self.fit_summary,
        }

    def save(self, folder: str | PathLike) -> Path:
        """Write ``calibration.json`` (and ``gate.safetensors``) into ``folder`` (created), each file atomically.

        Returns:
            the path of ``calibration.json``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.gate is not None:
            self.gate.save_tensors(folder)
        return atomic_write_bytes(folder / CALIBRATION_FILE, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], folder: str | PathLike, where: str | PathLike) -> Calibration:
        """Read the content of a ``calibration.json`` (gate tensors from ``folder``; ``where`` names it in errors).

        Raises:
            CalibrationError: another format or version, or a malformed field.
        """
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT or data.get("version") != _VERSION:
            raise CalibrationError(f"not a {_FORMAT} file of version {_VERSION}", where)
        try:
            scaling = {k: PlattScaling(float(v["a"]), float(v["b"]), int(v.get("n", 0)))
                       for k, v in dict(data.get("scaling") or {}).items()}
            thresholds = {k: float(v) for k, v in dict(data.get("thresholds") or {}).items()}
            target = data.get("target_error")
            gate = None if data.get("gate") is None else FeatureGate.load(folder, dict(data["gate"]))
            return cls(scaling=scaling, thresholds=thresholds,
                       target_error=None if target is None else float(target),
                       min_image_reliance=float(data.get("min_image_reliance", DEFAULT_MIN_IMAGE_RELIANCE)),
                       gate=gate, model=data.get("model"), fit_summary=dict(data.get("fit_summary") or {}))
        except CalibrationError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise CalibrationError(f"malformed field ({type(err).__name__})", where) from None

    @classmethod
    def load(cls, path: str | PathLike) -> Calibration:
        """Read ``calibration.json`` (``path`` is the file or its folder).

        Raises:
            CalibrationError: the file is missing, not JSON, or malformed.
        """
        path = Path(path)
        path = path / CALIBRATION_FILE if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CalibrationError("no calibration file here", path) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CalibrationError(f"cannot be read as JSON ({type(err).__name__})", path) from None
        return cls.from_dict(data, path.parent, path)


def load_calibration(folder: str | PathLike | None) -> Calibration | None:
    """The calibration in ``folder`` (or the file ``folder`` names), or ``None`` when there is none.

    Args:
        folder: a model folder, a folder ``calibrate.json`` wrote, or a ``calibration.json`` path; ``None``.

    Raises:
        CalibrationError: a calibration file is present but cannot be used.
    """
    if folder is None:
        return None
    path = Path(folder)
    path = path / CALIBRATION_FILE if path.is_dir() else path
    return Calibration.load(path) if path.is_file() else None
