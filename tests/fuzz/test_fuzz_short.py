# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The short fuzz run of ``make test``: a fixed Hypothesis seed, a bounded number of inputs and seconds.

It fails on any untyped error, crash, hang, input over the memory bound, NaN/inf pixels or a typed message that
misses the file name or shows a header value. ``make fuzz`` runs the long campaign with the same harness.
"""

from __future__ import annotations

import os

from fuzz.campaign import run_campaign

#: Inputs and wall-clock seconds of the short run (the whole test stays under 30 s on a 2-core machine).
SHORT_N = int(os.environ.get("FUZZ_SHORT_N", "150"))
SHORT_SECONDS = float(os.environ.get("FUZZ_SHORT_SECONDS", "15"))


def test_short_fuzz_run_has_only_typed_errors(tmp_path):
    report = run_campaign(SHORT_N, seed=0, seconds=SHORT_SECONDS, failures_dir=tmp_path / "failures",
                          timeout_s=10.0, memory_mb=1024.0)
    print(report.text())
    assert report.inputs >= min(SHORT_N, 50), report.text()
    assert report.counts["ok"] > 0 and report.counts["typed"] > 0, report.text()
    assert report.failed == 0, f"failing inputs kept in {tmp_path / 'failures'}\n{report.text()}"
