# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A fuzz campaign: Hypothesis draws cases from the seeds, each runs in a child, failing inputs are kept.

:func:`run_campaign` returns a :class:`Report` with the count of each outcome and one example per distinct
failure (category, exception type, where). Failing inputs are written to ``failures_dir`` as
``<category>-<n>-<seed name>`` (the file, or the series folder) with a ``.json`` beside it (the case and outcome).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed

from .mutations import apply_case, cases, header_values
from .runner import CATEGORIES, FAILURES, Outcome, Runner
from .seeds import IDENTIFIERS, build_seeds

__all__ = ["Report", "run_campaign", "make_pipeline"]


@dataclass
class Report:
    """Counts of each outcome, distinct failures (key -> (count, example)), inputs run and seconds taken."""

    counts: Counter = field(default_factory=Counter)
    distinct: dict[str, list[Any]] = field(default_factory=dict)
    inputs: int = 0
    seconds: float = 0.0
    max_peak_mb: float = 0.0
    max_seconds: float = 0.0
    slowest: str = ""

    @property
    def failed(self) -> int:
        """Inputs with a failing outcome."""
        return sum(self.counts[c] for c in FAILURES)

    def text(self) -> str:
        """A human-readable summary."""
        lines = [f"fuzz: {self.inputs} inputs in {self.seconds:.1f} s; slowest input {self.max_seconds:.2f} s, "
                 f"largest peak RSS above start {self.max_peak_mb:.0f} MB",
                 f"slowest: {self.slowest}",
                 "counts: " + ", ".join(f"{c} {self.counts[c]}" for c in CATEGORIES)]
        for key, (count, example) in sorted(self.distinct.items()):
            lines.append(f"  {count:5d} x {key}: {example}")
        return "\n".join(lines)


def make_pipeline() -> Any:
    """The loading entry point under test: file or folder -> CLIP pixels at 336 px, default options."""
    from monai_llava_med.transforms import MedicalImageToPixels

    return MedicalImageToPixels(image_size=336)


def _keep(failures_dir: Path, n: int, seed: Any, target: Path, case: dict, outcome: Outcome) -> None:
    failures_dir.mkdir(parents=True, exist_ok=True)
    name = f"{outcome.category}-{n:05d}-{seed.name}"
    if target.is_dir():
        shutil.copytree(target, failures_dir / name, dirs_exist_ok=True)
    else:
        shutil.copyfile(target, failures_dir / name)
    (failures_dir / f"{name}.json").write_text(json.dumps({**case, "outcome": outcome.__dict__}, indent=1,
                                                          default=repr))


def run_campaign(n: int, seed: int = 0, seconds: float = 3600.0, failures_dir: str | Path | None = None,
                 timeout_s: float = 20.0, memory_mb: float = 1024.0) -> Report:
    """Run ``n`` fuzz inputs (or fewer when ``seconds`` run out).

    Args:
        n: inputs to run.
        seed: Hypothesis seed (the same seed draws the same cases).
        seconds: stop drawing new inputs after this long.
        failures_dir: keep failing inputs here (None: keep nothing).
        timeout_s: per-input time limit (over it: ``hang``).
        memory_mb: per-input bound on peak RSS above the child's start (over it: ``memory``).
    """
    import torch

    seeds = build_seeds(seed)
    pipeline = make_pipeline()
    runner = Runner(pipeline, timeout_s, memory_mb)
    report = Report()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        warm = Path(tmp) / "warm"
        for s in seeds:  # import every reader and fill first-use caches before the first fork
            (warm / s.name).mkdir(parents=True)
            try:
                pipeline(str(s.write(warm / s.name)))
            except Exception:
                pass

        @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate], verbosity=Verbosity.quiet,
                  suppress_health_check=list(HealthCheck))
        @hypothesis_seed(seed)
        @given(case=cases(seeds))
        def one(case: tuple) -> None:
            if report.inputs >= n or time.monotonic() - t_start > seconds:
                return
            s, index, ops = case
            folder = Path(tempfile.mkdtemp(dir=tmp))
            target = s.write(folder, apply_case(s, index, ops))
            names = [target.name, *(p.name for p in target.iterdir())] if target.is_dir() else [target.name]
            outcome = runner.run(target, names, [*IDENTIFIERS, *header_values(ops)])
            report.inputs += 1
            report.counts[outcome.category] += 1
            report.max_peak_mb = max(report.max_peak_mb, outcome.peak_mb)
            if outcome.seconds > report.max_seconds:
                report.max_seconds = outcome.seconds
                report.slowest = f"{s.name} {ops!r:.160} -> {outcome.category} {outcome.error_type}"
            if outcome.category in FAILURES:
                example = f"{s.name} {ops!r:.160} -> {outcome.message[:200]!r}"
                count, first = report.distinct.get(outcome.key, (0, example))
                report.distinct[outcome.key] = [count + 1, first]
                if failures_dir is not None:
                    _keep(Path(failures_dir), report.inputs, s, target,
                          {"seed": s.name, "file": index, "ops": ops}, outcome)
            shutil.rmtree(folder, ignore_errors=True)

        try:
            one()
        finally:
            torch.set_num_threads(threads)
    report.seconds = time.monotonic() - t_start
    return report
