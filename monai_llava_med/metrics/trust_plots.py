# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A reliability diagram and a risk-coverage curve as PNG files (matplotlib, Agg canvas, no pyplot state).

matplotlib comes in through ``optional_import`` (the ``eval`` extra); without it no plot is written and
:func:`write_trust_plots` says so by returning no paths.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.utils import optional_import

from .calibration_metrics import DEFAULT_BINS, reliability_bins, risk_coverage_curve

Figure, has_matplotlib = optional_import("matplotlib.figure", name="Figure")
FigureCanvasAgg, _ = optional_import("matplotlib.backends.backend_agg", name="FigureCanvasAgg")

__all__ = ["has_matplotlib", "write_trust_plots"]

logger = logging.getLogger(__name__)


def _figure() -> Any:
    figure = Figure(figsize=(4.8, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _reliability(path: Path, groups: Mapping[str, tuple[list[float], list[bool]]], bins: int) -> None:
    figure = _figure()
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for name, (conf, right) in groups.items():
        table = reliability_bins(conf, right, bins)
        kept = [(p, a) for p, a, c in zip(table["confidence"], table["accuracy"], table["count"]) if c]
        ax.plot([p for p, _ in kept], [a for _, a in kept], marker="o", label=f"{name} (n={len(conf)})")
    centres = [(b + 0.5) / bins for b in range(bins)]
    first = next(iter(groups))
    counts = reliability_bins(*groups[first], bins)["count"]
    share = ax.twinx()
    share.bar(centres, counts, width=1 / bins, alpha=0.15, color="tab:blue")
    share.set_ylabel(f"answers per bin ({first})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=f"Reliability diagram ({bins} bins)")
    ax.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")


def _risk_coverage(path: Path, groups: Mapping[str, tuple[list[float], list[bool]]]) -> None:
    figure = _figure()
    ax = figure.add_subplot()
    for name, (conf, right) in groups.items():
        coverage, risk = risk_coverage_curve(conf, right)
        ax.plot(coverage, risk, label=f"{name} (n={len(conf)})")
    ax.set(xlim=(0, 1), ylim=(0, None), xlabel="coverage (most confident answers kept)", ylabel="risk (error rate)",
           title="Risk-coverage curve")
    ax.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")


def write_trust_plots(
    records: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, name: str = "vqa_metrics",
    bins: int = DEFAULT_BINS,
) -> dict[str, Path]:
    """Write ``{name}_reliability.png`` and ``{name}_risk_coverage.png`` for the answers that have a confidence and a
    ground truth, one line per group (all, closed, open answers).

    Args:
        records: per-answer trust records (see :mod:`.trust_report`).
        out_dir: the folder (created if missing).
        name: the file stem.
        bins: equal-width bins of the reliability diagram.

    Returns:
        ``{"reliability_diagram": path, "risk_coverage": path}``; empty without matplotlib or without scored answers.
    """
    scored = [r for r in records if r.get("confidence") is not None and r.get("correct") is not None]
    if not scored:
        return {}
    if not has_matplotlib:
        logger.warning("matplotlib is not installed (the 'eval' extra): no reliability or risk-coverage plot")
        return {}
    groups: dict[str, tuple[list[float], list[bool]]] = {}
    for label, kind in (("all", None), ("closed", "CLOSED"), ("open", "OPEN")):
        chosen = [r for r in scored if kind is None or r.get("answer_type") == kind]
        if chosen:
            groups[label] = ([float(r["confidence"]) for r in chosen], [bool(r["correct"]) for r in chosen])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"reliability_diagram": out / f"{name}_reliability.png", "risk_coverage": out / f"{name}_risk_coverage.png"}
    _reliability(paths["reliability_diagram"], groups, bins)
    _risk_coverage(paths["risk_coverage"], groups)
    return paths
