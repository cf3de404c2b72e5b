# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Peak memory of a CT DICOM series -> 3-D tower input (``MedicalVolumeToPixels``), against the series' int16 size.

A CT phantom series (``bench_preprocess.write_series``: body, lungs, spine, noise) is written to a temporary folder;
a child process imports the library, runs the pipeline once on a 4-slice series (so lazily imported decoders count
in the baseline), reads ``ru_maxrss``, runs the pipeline on the series and reads ``ru_maxrss`` again. The ratio is
the growth over ``Rows x Columns x slices x 2`` bytes (goal: <= 2).

Run: ``python benchmarks/bench_volume_pixels.py [--size 512] [--slices 300]``. The last line is ``RESULT ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_preprocess import write_series  # noqa: E402

__all__ = ["measure_peak", "main"]

_CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from monai_llava_med.transforms import MedicalVolumeToPixels
pipeline = MedicalVolumeToPixels(volume_size=(32, 64, 64))
pipeline(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
out = pipeline(sys.argv[2])["pixel_values"]
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"growth": peak - base, "seconds": seconds, "shape": list(out.shape)}))
"""


def measure_peak(size: int, slices: int, workdir: str | Path) -> dict[str, float]:
    """Write the series under ``workdir`` and measure the pipeline's peak RSS growth in a child process.

    Args:
        size: Rows = Columns of each slice.
        slices: number of slices.
        workdir: a scratch folder.

    Returns:
        ``{"growth_mb", "int16_mb", "ratio", "seconds"}``.
    """
    workdir = Path(workdir)
    warm, series = workdir / "warm", workdir / "series"
    write_series(warm, 4, 64)
    nbytes = write_series(series, slices, size)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(warm), str(series)], capture_output=True, text=True,
                          check=True, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"growth_mb": result["growth"] / 1e6, "int16_mb": nbytes / 1e6, "ratio": result["growth"] / nbytes,
            "seconds": result["seconds"]}


def main(argv: list[str] | None = None) -> int:
    """Measure and print the ``RESULT vit3d_pixels_peak_rss`` line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_vit3d_") as tmp:
        r = measure_peak(args.size, args.slices, tmp)
    print(f"series {args.size}x{args.size}x{args.slices} int16 {r['int16_mb']:.0f} MB; pipeline peak growth "
          f"{r['growth_mb']:.0f} MB in {r['seconds']:.1f} s")
    print(f"RESULT vit3d_pixels_peak_rss ratio={r['ratio']:.3f} growth_mb={r['growth_mb']:.0f} "
          f"int16_mb={r['int16_mb']:.0f} seconds={r['seconds']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
