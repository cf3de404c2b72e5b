# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A real server for the serving tests: ``python -m monai_llava_med.apps.serve`` on a free loopback port.

The server runs the shipped demo model (``bundles/llava_med/models``) with an API key, an allowed root holding
copies of the bundle's sample images (and a DICOM with planted patient identifiers), a small body limit and a
batching window wide enough for concurrent test requests to share ``generate`` calls. It is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "bundles" / "llava_med" / "models"
SAMPLE = REPO / "bundles" / "llava_med" / "sample"
API_KEY = "test-key-5f1c"
MAX_BODY = 2 * 1024 * 1024
#: Planted in the header of ``root/phi.dcm``: must never appear in a response or the server's log.
PHI = {"PatientName": "ZZSERVE^PLANTED", "PatientID": "MRN90817263"}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """A running server: its URL, key, allowed root, outside folder and log file."""

    url: str
    key: str
    root: Path
    outside: Path
    log: Path
    pid: int

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def build_root(base: Path) -> tuple[Path, Path]:
    """``root/`` (sample copies, a PHI DICOM, a link out) and ``outside/`` (a DICOM the server must not read)."""
    import pydicom

    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(SAMPLE / "ct_slice.dcm", root / "ct_slice.dcm")
    shutil.copy(SAMPLE / "mr_slice.dcm", root / "mr_slice.dcm")
    shutil.copytree(SAMPLE / "ct_series", root / "ct_series")
    ds = pydicom.dcmread(SAMPLE / "ct_slice.dcm")
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.save_as(root / "phi.dcm")
    shutil.copy(SAMPLE / "ct_slice.dcm", outside / "secret.dcm")
    os.symlink(outside / "secret.dcm", root / "leak.dcm")
    return root, outside


def start_server(base: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    """Start the server; wait (bounded) until ``/health`` answers."""
    import urllib.request

    port = free_port()
    log = base / f"server-{port}.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TMPDIR=str(base))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "monai_llava_med.apps.serve", "--model_dir", str(MODEL_DIR), "--port", str(port),
           "--threads", "1", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(base))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # bounded; a cold first start in a fresh venv under load can take minutes
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url, log
        except OSError:
            time.sleep(0.25)
    stop_server(proc)
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited within 20 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    """The running server (session-wide)."""
    base = tmp_path_factory.mktemp("serve")
    root, outside = build_root(base)
    proc, url, log = start_server(base, "--api_key", API_KEY, "--allowed_root", str(root), "--max_body_bytes",
                                  str(MAX_BODY), "--batch_wait_ms", "40")
    yield Served(url, API_KEY, root, outside, log, proc.pid)
    stop_server(proc)


@pytest.fixture(scope="session")
def predictor():
    """The demo model in the test process: the reference the server's answers are compared with."""
    import torch

    from monai_llava_med.engines import LlavaMedPredictor

    torch.set_num_threads(1)
    return LlavaMedPredictor.from_pretrained(MODEL_DIR, device="cpu")
