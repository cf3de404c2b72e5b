# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The terminal chat under a real pseudo-terminal (pexpect), on the shipped demo model and the bundle's samples.

:func:`spawn_chat` starts ``python -m monai_llava_med.apps.chat`` in a pty; the ``chat`` fixture kills it by its
PID when the test ends. :func:`planted_dicom` writes a copy of the sample CT slice whose header holds patient
identifiers (and, optionally, a value invalid for its VR, so reading it fails): none may reach the terminal.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "bundles" / "llava_med" / "models"
SAMPLE = REPO / "bundles" / "llava_med" / "sample"
#: Planted in headers; must never be printed.
PHI = {"PatientName": "ZZCHAT^PLANTED", "PatientID": "MRN55501234"}
#: Bounds every wait for the chat (model load included) on a busy 2-core machine.
TIMEOUT_S = 300  # the first start in a fresh venv compiles every import (seen: > 90 s under load in CI)


def planted_dicom(path: Path, extra: dict[str, tuple[str, bytes]] | None = None) -> Path:
    """The sample CT slice with :data:`PHI` in its header and ``extra`` raw elements (keyword -> (VR, bytes))."""
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement

    ds = pydicom.dcmread(SAMPLE / "ct_slice.dcm")
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    for keyword, (vr, raw) in (extra or {}).items():
        tag = pydicom.tag.Tag(tag_for_keyword(keyword))
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True, True)
    ds.save_as(path)
    return path


def spawn_chat(*args: str, cwd: Path) -> pexpect.spawn:
    """The chat in a pseudo-terminal; its output (stdout and stderr) is kept in ``child.transcript``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TERM="dumb")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    child = pexpect.spawn(sys.executable, ["-m", "monai_llava_med.apps.chat", *args, "--threads", "1"], env=env,
                          cwd=str(cwd), encoding="utf-8", timeout=TIMEOUT_S, dimensions=(40, 220))
    child.transcript = io.StringIO()
    child.logfile_read = child.transcript
    return child


def kill(child: pexpect.spawn) -> None:
    """SIGKILL by PID if still running."""
    if child.isalive():
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


@pytest.fixture
def chat_factory(tmp_path):
    """Starts chats in ``tmp_path``; kills those still running at the end of the test."""
    children: list[pexpect.spawn] = []

    def start(*args: str) -> pexpect.spawn:
        child = spawn_chat(*args, cwd=tmp_path)
        children.append(child)
        return child

    yield start
    for child in children:
        kill(child)
