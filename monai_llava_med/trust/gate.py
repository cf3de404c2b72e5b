# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The input gate: how far an image's vision features lie from those of the in-domain images.

An image is summarised by the mean and the standard deviation over its tokens (averaged over its views) of the
projector's input, the vision tower's selected (and pooled) features, which ``generate`` computes anyway
(:class:`ProjectorInputs` reads them with a hook, so the gate costs no extra pass). The in-domain images give a mean and a Ledoit-Wolf
shrinkage covariance (:func:`ledoit_wolf_covariance`); an image's score is its Mahalanobis distance
``sqrt((x - mean)^T cov^-1 (x - mean))``. The refusal distance is a split-conformal quantile of the distances of
held-out in-domain images (:func:`fit_feature_gate`). The tensors are saved in ``gate.safetensors``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from types import TracebackType

import torch
from safetensors.torch import load_file, save
from torch import nn

from ..atomic_files import atomic_write_bytes
from ..errors import CalibrationError

__all__ = ["GATE_FILE", "FeatureGate", "ProjectorInputs", "fit_feature_gate", "ledoit_wolf_covariance"]

#: the gate's tensors, beside ``calibration.json``.
GATE_FILE = "gate.safetensors"


class ProjectorInputs:
    """Context manager recording the inputs of ``network.projector`` (the vision features) during a forward pass.

    Args:
        projector: the network's projector module.

    Attributes:
        batches: one ``(N, tokens, width)`` tensor per projector call, detached, in float32.
    """

    def __init__(self, projector: nn.Module) -> None:
        self.projector = projector
        self.batches: list[torch.Tensor] = []
        self._handle = None

    def _record(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.batches.append(args[0].detach().float())

    def __enter__(self) -> ProjectorInputs:
        self._handle = self.projector.register_forward_pre_hook(self._record)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def pooled(self) -> torch.Tensor:
        """``(N, 2 * width)``: each recorded image's features summarised over its tokens, their mean and their
        standard deviation side by side (the spread tells a uniform image from one with structure)."""
        if not self.batches:
            return torch.empty(0, 0)
        tokens = [b.reshape(b.shape[0], -1, b.shape[-1]) for b in self.batches]
        return torch.cat([torch.cat([t.mean(1), t.std(1, correction=0)], -1) for t in tokens])


def ledoit_wolf_covariance(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The Ledoit-Wolf (2004) shrinkage of the sample covariance towards a scaled identity.

    With ``S`` the (biased) sample covariance of the centred rows ``x_k``, ``mu = tr(S) / d``,
    ``delta = ||S - mu I||_F^2`` and ``beta = min(delta, sum_k ||x_k x_k^T - S||_F^2 / n^2)``, the estimate is
    ``(beta / delta) mu I + (1 - beta / delta) S``: well conditioned even with fewer images than dimensions.

    Args:
        x: ``(n, d)`` features, ``n >= 2``.

    Returns:
        ``(covariance (d, d) float64, shrinkage in [0, 1])``.
    """
    x = x.double()
    n, d = x.shape
    centred = x - x.mean(0)
    sample = centred.T @ centred / n
    mu = float(torch.trace(sample)) / d
    target = mu * torch.eye(d, dtype=torch.float64)
    delta = float(((sample - target) ** 2).sum())
    norms = (centred**2).sum(1)
    spread = float((norms**2 - 2 * ((centred @ sample) * centred).sum(1) + (sample**2).sum()).sum()) / n**2
    shrinkage = 1.0 if delta <= 0 else min(max(spread, 0.0), delta) / delta
    return shrinkage * target + (1 - shrinkage) * sample, shrinkage


@dataclass
class FeatureGate:
    """Mahalanobis distance to the in-domain features, with a refusal distance.

    Args:
        mean: ``(d,)`` mean in-domain feature (``d`` = twice the projector's input width: token mean and spread).
        precision: ``(d, d)`` inverse of the shrinkage covariance.
        threshold: images farther than this are refused.
        refusal_rate: the in-domain refusal rate the threshold was chosen for.
        shrinkage: the Ledoit-Wolf shrinkage used.
        n_fit: images behind the mean and covariance.
        n_calibration: held-out images behind the threshold.
    """

    mean: torch.Tensor
    precision: torch.Tensor
    threshold: float
    refusal_rate: float = 0.01
    shrinkage: float = 0.0
    n_fit: int = 0
    n_calibration: int = 0

    @property
    def width(self) -> int:
        """Feature width the gate expects (twice the projector's input width)."""
        return int(self.mean.shape[0])

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """``(N,)`` Mahalanobis distances of ``(N, d)`` features.

        Raises:
            ValueError: the features are not ``d`` wide (a gate fitted for another vision tower).
        """
        if features.ndim != 2 or features.shape[1] != self.width:
            raise ValueError(f"the gate was fitted on {self.width}-wide features, got shape {tuple(features.shape)}")
        centred = features.double().cpu() - self.mean.double()
        return ((centred @ self.precision.double()) * centred).sum(1).clamp(min=0).sqrt()

    def summary(self) -> dict[str, float | int | str]:
        """The gate's numbers for ``calibration.json`` (the tensors go to :data:`GATE_FILE`)."""
        return {"file": GATE_FILE, "threshold": self.threshold, "refusal_rate": self.refusal_rate,
                "shrinkage": self.shrinkage, "n_fit": self.n_fit, "n_calibration": self.n_calibration,
                "width": self.width}

    def save_tensors(self, folder: str | PathLike) -> Path:
        """Write :data:`GATE_FILE` into ``folder`` atomically (temporary file, fsync, rename)."""
        tensors = {"mean": self.mean.float().contiguous(), "precision": self.precision.float().contiguous()}
        return atomic_write_bytes(Path(folder) / GATE_FILE, save(tensors, metadata={"format": "pt"}))

    @classmethod
    def load(cls, folder: str | PathLike, summary: dict) -> FeatureGate:
        """The gate whose numbers are ``summary`` (from ``calibration.json``) and tensors in ``folder``.

        Raises:
            CalibrationError: the tensor file is missing or does not match the summary.
        """
        path = Path(folder) / str(summary.get("file", GATE_FILE))
        if not path.is_file():
            raise CalibrationError("calibration.json names an input gate but its tensor file is missing", path)
        tensors = load_file(str(path))
        mean, precision = tensors.get("mean"), tensors.get("precision")
        width = int(summary.get("width", -1))
        if mean is None or precision is None or mean.shape != (width,) or precision.shape != (width, width):
            raise CalibrationError(
                f"the gate tensors must be 'mean' ({width},) and 'precision' ({width}, {width})", path
            )
        return cls(mean=mean, precision=precision, threshold=float(summary["threshold"]),
                   refusal_rate=float(summary.get("refusal_rate", 0.01)), shrinkage=float(summary.get("shrinkage", 0)),
                   n_fit=int(summary.get("n_fit", 0)), n_calibration=int(summary.get("n_calibration", 0)))


def fit_feature_gate(fit: torch.Tensor, calibration: torch.Tensor, refusal_rate: float = 0.01) -> FeatureGate:
    """Fit the gate on in-domain features: mean and covariance on ``fit``, refusal distance on ``calibration``.

    The threshold is the ``k``-th smallest of the ``m`` held-out distances with ``k = ceil((m + 1)(1 - rate))``,
    the split-conformal quantile: a new in-domain image exchangeable with the held-out ones is then refused with
    probability at most ``rate``. With too few held-out images for that (``k > m``, i.e. ``m < 1 / rate - 1``) the
    largest distance is used and the guarantee does not hold.

    Args:
        fit: ``(n, d)`` features of in-domain images (``n >= 2``).
        calibration: ``(m, d)`` features of other in-domain images (``m >= 1``).
        refusal_rate: the in-domain refusal rate aimed at, in (0, 1).

    Raises:
        ValueError: too few images or a rate outside (0, 1).
    """
    if not 0 < refusal_rate < 1:
        raise ValueError(f"refusal_rate must lie in (0, 1), got {refusal_rate}")
    if fit.ndim != 2 or fit.shape[0] < 2 or calibration.ndim != 2 or calibration.shape[0] < 1:
        raise ValueError(f"the gate needs >= 2 fit images and >= 1 held-out image, got {tuple(fit.shape)} and "
                         f"{tuple(calibration.shape)}")
    covariance, shrinkage = ledoit_wolf_covariance(fit)
    precision = torch.linalg.pinv(covariance, hermitian=True)
    gate = FeatureGate(mean=fit.double().mean(0), precision=precision, threshold=math.inf,
                       refusal_rate=refusal_rate, shrinkage=shrinkage, n_fit=int(fit.shape[0]),
                       n_calibration=int(calibration.shape[0]))
    distances = torch.sort(gate.distance(calibration)).values
    m = int(distances.shape[0])
    k = min(math.ceil((m + 1) * (1 - refusal_rate)), m)
    gate.threshold = float(distances[k - 1])
    return gate
