# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Run dicom3tools' ``dciodvfy`` (a DICOM IOD validator) on a file and return its error lines.

Without ``dciodvfy`` on PATH the calling test is skipped with a reason, unless ``LLAVA_MED_REQUIRE_DCIODVFY=1``
(set by ``.ci/run``), where it fails instead: CI must not pass by skipping the validator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["dciodvfy_errors", "require_dciodvfy"]


def require_dciodvfy() -> str:
    """The path of ``dciodvfy``; skips (or fails under ``LLAVA_MED_REQUIRE_DCIODVFY=1``) when it is missing."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        reason = "dciodvfy (Debian package dicom3tools) is not installed"
        if os.environ.get("LLAVA_MED_REQUIRE_DCIODVFY") == "1":
            pytest.fail(f"{reason}, and LLAVA_MED_REQUIRE_DCIODVFY=1")
        pytest.skip(reason)
    return exe


def dciodvfy_errors(path: str | os.PathLike) -> list[str]:
    """The lines of ``dciodvfy``'s report on one file that start with ``Error``.

    Args:
        path: a DICOM file.
    """
    exe = require_dciodvfy()
    proc = subprocess.run([exe, str(Path(path))], capture_output=True, text=True, timeout=60, check=False)
    lines = (proc.stdout + "\n" + proc.stderr).splitlines()
    if not any(line.strip() for line in lines):
        pytest.fail(f"dciodvfy printed nothing for {path} (exit {proc.returncode})")
    return [line for line in lines if line.startswith("Error")]
