# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Cold-start cost of importing the package: this tree against a baseline commit, in the same run.

Each measurement is one fresh interpreter (``python -c``) that times the import statement itself with
``time.perf_counter`` (interpreter start-up excluded) and checks which tree it imported. The baseline is the
package as it was at ``--baseline-ref`` (default ``f5a83b9``, the commit before the lazy imports), extracted
with ``git archive`` into a temporary folder (the repository is not touched). Runs alternate between the two
trees so that both see the same machine load; the figure is the best of ``--repeats`` runs, with the median
and the slowest beside it.

Statements: ``import monai_llava_med.engines`` / ``.transforms`` / ``.metrics`` (what the import costs before
anything is used) and a first real use of each: ``LlavaMedInferer`` needs MONAI, torch and transformers on
both sides, so it shows what laziness cannot save; ``MedicalImageToPixels`` needs MONAI but no longer the
network (transformers); ``evaluate_vqa`` / ``score_question`` need neither. A reference line times
``import torch, monai, transformers`` alone.

Run: ``python benchmarks/bench_import.py [--repeats 5] [--baseline-ref f5a83b9]``. One ``RESULT`` line per
statement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STATEMENTS = {
    "engines": "import monai_llava_med.engines",
    "transforms": "import monai_llava_med.transforms",
    "metrics": "import monai_llava_med.metrics",
    "engines_first_use": "from monai_llava_med.engines import LlavaMedInferer",
    "transforms_first_use": "from monai_llava_med.transforms import MedicalImageToPixels",
    "metrics_first_use": "from monai_llava_med.metrics import evaluate_vqa, score_question",
}
REFERENCE = "import torch, monai, transformers"

_TIMER = """
import time
t0 = time.perf_counter()
{statement}
dt = time.perf_counter() - t0
import sys
mod = sys.modules.get("monai_llava_med")
where = getattr(mod, "__file__", None) or ""
print(dt, where)
"""


def extract_tree(ref: str, dest: Path) -> Path:
    """Write the ``monai_llava_med`` package of commit ``ref`` under ``dest`` with ``git archive``."""
    archive = dest / "tree.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", ref, "monai_llava_med"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")
    return dest


def time_import(statement: str, tree: Path | None) -> float:
    """Seconds the statement takes in a fresh interpreter whose ``monai_llava_med`` comes from ``tree``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cwd = tree if tree is not None else Path(tempfile.gettempdir())
    out = subprocess.run(
        [sys.executable, "-c", _TIMER.format(statement=statement)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{statement!r} failed in {tree}: {out.stderr.strip().splitlines()[-1:]}")
    seconds, _, where = out.stdout.strip().partition(" ")
    if tree is not None and where and not Path(where).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"{statement!r} imported {where}, not the tree under test {tree}")
    return float(seconds)


def _stats(values: list[float]) -> str:
    return f"best={min(values):.3f} median={statistics.median(values):.3f} worst={max(values):.3f}"


def main() -> None:
    """Parse arguments, time every statement in both trees, print the RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per statement and tree")
    parser.add_argument("--baseline-ref", default="f5a83b9", help="git commit of the baseline package")
    parser.add_argument("--only", nargs="*", choices=sorted(STATEMENTS), help="time only these statements")
    args = parser.parse_args()
    names = args.only or list(STATEMENTS)
    with tempfile.TemporaryDirectory(prefix="bench_import_") as tmp:
        baseline = extract_tree(args.baseline_ref, Path(tmp))
        ref = [time_import(REFERENCE, None) for _ in range(args.repeats)]
        print(f"reference {REFERENCE!r}: {_stats(ref)} s", flush=True)
        results = {}
        for name in names:
            ours, base = [], []
            for _ in range(args.repeats):  # alternate so both trees see the same load
                ours.append(time_import(STATEMENTS[name], ROOT))
                base.append(time_import(STATEMENTS[name], baseline))
            results[name] = (ours, base)
            print(f"{STATEMENTS[name]!r}: ours {_stats(ours)} s | baseline {_stats(base)} s", flush=True)
    for name, (ours, base) in results.items():
        print(
            f"RESULT import={name} ours_s={min(ours):.3f} baseline_s={min(base):.3f} "
            f"saved_s={min(base) - min(ours):.3f} ours_median_s={statistics.median(ours):.3f} "
            f"baseline_median_s={statistics.median(base):.3f} reference_torch_monai_transformers_s={min(ref):.3f} "
            f"repeats={args.repeats} baseline_ref={args.baseline_ref}"
        )


if __name__ == "__main__":
    main()
