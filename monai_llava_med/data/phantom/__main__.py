# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Command line: ``python -m monai_llava_med.data.phantom --out DIR --n N --seed S``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from .export import FORMATS, write_phantom_dataset

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and write a phantom data set; prints the manifest.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    p = argparse.ArgumentParser(prog="python -m monai_llava_med.data.phantom", description=__doc__)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of cases (split 80/10/10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="in-plane size in pixels")
    p.add_argument("--fraction-3d", type=float, default=0.25, help="fraction of cases that are volumes")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated among dcm,nii,png")
    p.add_argument("--image-format", default="dcm", help="the file the JSON 'image' fields point to")
    a = p.parse_args(argv)
    manifest = write_phantom_dataset(
        a.out,
        a.n,
        seed=a.seed,
        size=a.size,
        fraction_3d=a.fraction_3d,
        formats=[f for f in a.formats.split(",") if f],
        image_format=a.image_format,
    )
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
