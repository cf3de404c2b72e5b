# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""benchmarks/bench_serve.py --smoke: the real server and client path end to end, its RESULT lines, the server gone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")

REPO = Path(__file__).resolve().parents[1]


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_bench_serve_smoke():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "--smoke"], env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    results = [_fields(line) for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 4, run.stdout
    *batchings, load = results
    assert [b["client"] for b in batchings] == ["http.client", "openai", "openai_processes"]
    for batching in batchings:
        assert int(batching["errors"]) == 0 and float(batching["serial_rps"]) > 0 and float(batching["batched_rps"]) > 0
        ratio = float(batching["batched_rps"]) / float(batching["serial_rps"])
        assert float(batching["speedup"]) == pytest.approx(ratio, rel=1e-2, abs=0.01)  # one round: their ratio
        assert float(batching["mean_batch"]) >= 1.0
        assert float(batching["client_cpu_ms_serial"]) >= 0 and float(batching["client_cpu_ms_batched"]) >= 0
    assert load["requests"] == "20" and load["errors"] == "0"
    assert 0 < float(load["ttft_p50_s"]) <= float(load["p50_s"]) and float(load["p50_s"]) <= float(load["p95_s"])
    assert "server flags: --max_batch 8 --batch_wait_ms 5" in run.stdout
    pid = int(re.search(r"server: pid (\d+) at http://127\.0\.0\.1:\d+", run.stdout).group(1))
    with pytest.raises(ProcessLookupError):  # stopped by its PID
        os.kill(pid, 0)
