# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``python -m fuzz --n 5000 --seed 0 --seconds 3600 --failures .cache/fuzz-failures`` (``tests`` on PYTHONPATH).

Prints the counts of ok / typed / untyped / crash / hang / memory / nonfinite / leak and each distinct failure;
exits 1 when any input failed.
"""

from __future__ import annotations

import argparse
import sys

from .campaign import run_campaign


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the campaign, print the report; 1 when an input failed."""
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="inputs to run")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (also seeds the corpus contents)")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop drawing inputs after this long")
    parser.add_argument("--failures", default=".cache/fuzz-failures", help="folder for failing inputs")
    parser.add_argument("--timeout", type=float, default=20.0, help="per-input time limit (s)")
    parser.add_argument("--memory-mb", type=float, default=1024.0, help="per-input peak RSS bound above start (MB)")
    args = parser.parse_args(argv)
    report = run_campaign(args.n, args.seed, args.seconds, args.failures, args.timeout, args.memory_mb)
    print(report.text())
    print(f"failing inputs kept in {args.failures}" if report.failed else "no failing input")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
