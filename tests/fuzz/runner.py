# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Run fuzz inputs through the loading entry point, one forked child per input, under a time and memory limit.

The parent builds :class:`~monai_llava_med.transforms.MedicalImageToPixels` once and warms it up on every seed
(so imports and first-use caches are not counted), then forks a child per input. The child resets its peak RSS
(``/proc/self/clear_refs``), caps its address space (``RLIMIT_AS``: start + 3 x the memory bound), runs the
pipeline and reports the outcome and its peak RSS above its start (``VmHWM``) through a pipe; the parent kills
it after the time limit. Outcomes:

* ``ok``: pixels came back, all finite;
* ``typed``: a :class:`~monai_llava_med.errors.LlavaMedInputError` whose message names the file and shows no
  header value or identifier;
* ``untyped``: any other exception (or a child that died without reporting: ``crash``);
* ``hang``: still running at the time limit;
* ``memory``: peak RSS over the bound, a MemoryError, or a typed error caused by a failed allocation;
* ``nonfinite``: NaN/inf pixels reached the output;
* ``leak``: a typed error whose message misses the file name or shows a header value or identifier.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CATEGORIES", "FAILURES", "Outcome", "Runner"]

CATEGORIES = ("ok", "typed", "untyped", "crash", "hang", "memory", "nonfinite", "leak")
#: Outcomes that fail a run.
FAILURES = ("untyped", "crash", "hang", "memory", "nonfinite", "leak")


@dataclass
class Outcome:
    """What one input did: ``category`` (see the module docstring), details, peak RSS and time."""

    category: str
    error_type: str = ""
    message: str = ""
    where: str = ""
    peak_mb: float = 0.0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What tells distinct failures apart: category, exception type and where it was raised."""
        return f"{self.category} {self.error_type} {self.where}".strip()


def _status_kb(name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def _where(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame, and of the innermost frame of the package."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    inner = frames[-1]
    ours = [f for f in frames if "monai_llava_med" in f.filename]
    text = f"{Path(inner.filename).name}:{inner.lineno} in {inner.name}"
    if ours and ours[-1] is not inner:
        text += f" (from {Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name})"
    return text


def _allocation_failed(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Runner:
    """Forks a child per input and classifies what it did.

    Args:
        pipeline: the loading entry point (called with a path, returns a dict with ``pixel_values``).
        timeout_s: wall-clock limit per input.
        memory_mb: peak RSS allowed above the child's start.
    """

    def __init__(self, pipeline: Any, timeout_s: float = 20.0, memory_mb: float = 1024.0) -> None:
        self.pipeline = pipeline
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb

    def _child(self, path: Path, names: list[str], forbidden: list[str], wfd: int) -> None:
        import torch

        from monai_llava_med.errors import LlavaMedInputError

        torch.set_num_threads(1)
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)  # nibabel and tifffile log every header fix they make
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak RSS to the current RSS
        except OSError:
            pass
        start_kb = _status_kb("VmRSS")
        vm = _status_kb("VmSize") * 1024
        limit = vm + int(3 * self.memory_mb * (1 << 20))
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        t0 = time.perf_counter()
        try:
            out = self.pipeline(str(path))
            finite = bool(torch.isfinite(out["pixel_values"]).all())
            res = {"category": "ok" if finite else "nonfinite"}
        except LlavaMedInputError as e:
            text = str(e)
            res = {"category": "typed", "error_type": type(e).__name__, "message": text, "where": _where(e)}
            if _allocation_failed(e):
                res["category"] = "memory"
            elif not any(n in text for n in names):
                res.update(category="leak", extra={"problem": "message does not name the file"})
            elif any(v in text for v in forbidden):
                res.update(category="leak", extra={"problem": "message shows a header value or identifier"})
        except BaseException as e:  # noqa: BLE001 - anything else is what the fuzzer looks for
            res = {"category": "memory" if _allocation_failed(e) else "untyped", "error_type": type(e).__name__,
                   "message": " ".join(str(e).split())[:300], "where": _where(e)}
        res["seconds"] = time.perf_counter() - t0
        res["peak_mb"] = max(0, _status_kb("VmHWM") - start_kb) / 1024
        if res["category"] in ("ok", "typed", "nonfinite", "leak") and res["peak_mb"] > self.memory_mb:
            res["extra"] = {**res.get("extra", {}), "was": res["category"]}
            res["category"] = "memory"
        os.write(wfd, json.dumps(res).encode())

    def run(self, path: Path, names: list[str], forbidden: list[str]) -> Outcome:
        """Run one input in a child process.

        Args:
            path: the file or folder to load.
            names: file names of which one must appear in a typed error's message.
            forbidden: texts no message may show (identifiers, mutated header values).
        """
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(rfd)
            try:
                self._child(path, names, forbidden, wfd)
            finally:
                os._exit(0)
        os.close(wfd)
        chunks, t0, hung = [], time.monotonic(), False
        while True:
            left = self.timeout_s - (time.monotonic() - t0)
            if left <= 0:
                hung = True
                break
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        if hung:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(rfd)
        seconds = time.monotonic() - t0
        if hung:
            return Outcome("hang", seconds=seconds)
        if not chunks:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            return Outcome("crash", error_type=f"signal {sig}" if sig else f"exit {os.WEXITSTATUS(status)}",
                           seconds=seconds)
        res = json.loads(b"".join(chunks))
        return Outcome(**res)
