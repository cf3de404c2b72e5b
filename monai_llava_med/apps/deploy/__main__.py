# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``python -m monai_llava_med.apps.deploy -i DICOM_FOLDER -o OUTPUT_FOLDER -m MODEL_DIR [--questions FILE]``.

Runs :class:`~.app.LlavaMedDeployApp` once: prints the path of the SR it wrote and exits 0; on bad input (no
DICOM file, no series matching the selection rules, an unreadable series, a bad questions file) prints one line
``ERROR <ErrorClass>: <file>: <cause>`` on stderr, writes no SR and exits 1. ``-i`` / ``-o`` / ``-m`` / ``-l`` are the
SDK's options (default: ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH``, else
``input`` / ``output`` / ``models``); the log level defaults to WARN here, since the stock operators log series
descriptions and UIDs at INFO.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ...errors import LlavaMedInputError, SeriesSelectionError
from .questions import load_questions

__all__ = ["build_parser", "main"]

#: Most files looked at when checking that the input holds DICOM (the loader reads them all later).
MAX_FILES_CHECKED = 100_000


def build_parser() -> argparse.ArgumentParser:
    """The command line: the SDK's ``-i`` / ``-o`` / ``-m`` / ``-l`` and this app's own options."""
    p = argparse.ArgumentParser(prog="python -m monai_llava_med.apps.deploy",
                                description="LLaVA-Med MONAI Deploy app: a DICOM folder in, a DICOM SR of answers out")
    p.add_argument("-i", "--input", default=None, help="DICOM folder (default: $HOLOSCAN_INPUT_PATH, else input)")
    p.add_argument("-o", "--output", default=None, help="output folder (default: $HOLOSCAN_OUTPUT_PATH, else output)")
    p.add_argument("-m", "--model", default=None, help="model folder (default: $HOLOSCAN_MODEL_PATH, else models)")
    p.add_argument("-l", "--log-level", dest="log_level", default="WARN", type=str.upper,
                   choices=["DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"], help="log level (default: WARN)")
    p.add_argument("--questions", default=None,
                   help="questions file: a JSON list of strings or one question per line (default: the app's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when available)")
    p.add_argument("--max_new_tokens", type=int, default=64, help="longest answer in tokens")
    return p


def _has_dicom(folder: Path) -> bool:
    """Whether ``folder`` (or a file given instead) holds a file with the DICOM preamble."""
    from ...transforms.input_kind import is_dicom_file

    if folder.is_file():
        return is_dicom_file(folder)
    for count, path in enumerate(p for p in folder.rglob("*") if p.is_file()):
        if is_dicom_file(path):
            return True
        if count >= MAX_FILES_CHECKED:
            return True  # let the loader decide for very large inputs
    return False


def _error(err: BaseException) -> int:
    sys.stderr.write(f"ERROR {type(err).__name__}: {err}\n")
    sys.stderr.flush()
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app once; the exit status is 0 when one SR was written, else 1 (2 for a bad command line).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN" if args.log_level != "DEBUG" else "INFO")
    paths = {"input": (args.input, "HOLOSCAN_INPUT_PATH", "input"),
             "output": (args.output, "HOLOSCAN_OUTPUT_PATH", "output"),
             "model": (args.model, "HOLOSCAN_MODEL_PATH", "models")}
    resolved = {key: Path(value or os.environ.get(env) or default) for key, (value, env, default) in paths.items()}
    try:
        questions = load_questions(args.questions) if args.questions else None
        if not resolved["input"].exists():
            raise SeriesSelectionError("no such input file or folder", resolved["input"])
        if not resolved["model"].is_dir():
            raise LlavaMedInputError("no such model folder", resolved["model"])
        if not _has_dicom(resolved["input"]):
            raise SeriesSelectionError("the input holds no DICOM file", resolved["input"])
    except LlavaMedInputError as err:
        return _error(err)
    from ...engines.bundle_run import typed_cause
    from .app import LlavaMedDeployApp

    sdk_argv = [sys.argv[0] or "monai_llava_med.apps.deploy", "-i", str(resolved["input"]), "-o",
                str(resolved["output"]), "-m", str(resolved["model"]), "-l", args.log_level]
    app = LlavaMedDeployApp(sdk_argv, questions=questions, device=args.device, max_new_tokens=args.max_new_tokens)
    try:
        app.run()
    except Exception as err:  # a stock operator failed: its message may quote header values, so name its class only
        cause = typed_cause(err)
        if cause is not None:
            return _error(cause)
        sys.stderr.write(f"ERROR {type(err).__name__} raised in the MONAI Deploy pipeline; no SR written\n")
        return 1
    if app.outcome.error is not None:
        return _error(app.outcome.error)
    if not app.outcome.sr_files:
        sys.stderr.write("ERROR: the pipeline ended without writing an SR\n")
        return 1
    for path in app.outcome.sr_files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
