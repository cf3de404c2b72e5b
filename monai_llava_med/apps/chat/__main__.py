# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``python -m monai_llava_med.apps.chat IMAGE [--model_dir DIR] [--max_new_tokens N]`` (or ``llava-med-chat``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BUNDLE_MODELS", "default_model_dir", "build_parser", "main"]

#: The bundle's demo model, relative to the repository root.
BUNDLE_MODELS = Path("bundles") / "llava_med" / "models"


def default_model_dir() -> Path | None:
    """The bundle's ``models/`` folder: below the working folder or one above it, else above this package."""
    here = Path(__file__).resolve()
    for start in (Path.cwd().resolve(), here.parent):
        for parent in (start, *start.parents):
            if (parent / BUNDLE_MODELS / "llava_med_config.json").is_file():
                return parent / BUNDLE_MODELS
    return None


def build_parser() -> argparse.ArgumentParser:
    """The command line of the chat."""
    p = argparse.ArgumentParser(prog="llava-med-chat", description="Chat with LLaVA-Med about a medical image")
    p.add_argument("image", help="image file (DICOM, NIfTI, PNG/JPEG...) or DICOM series folder")
    p.add_argument("--model_dir", default=None,
                   help=f"model folder (ours, LLaVA-Med v1.5 or HF Llava; default: the bundle's {BUNDLE_MODELS})")
    p.add_argument("--max_new_tokens", type=int, default=128, help="answer length bound in tokens (default 128)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def _readline_input() -> None:
    """Line editing and history at the prompt, where the platform has ``readline``."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - importing it is what makes input() edit lines
        except ImportError:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """Load the model once, open the image and chat; 0 on ``/quit`` or Ctrl-D, 2 for an unusable image or model."""
    args = build_parser().parse_args(argv)
    if args.max_new_tokens < 1:
        build_parser().error("--max_new_tokens must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Ctrl-C must stop an answer or drop a line even when the parent left SIGINT ignored (a shell's background job
    # does: Python then installs no handler of its own)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ...errors import LlavaMedError
    from .input_checks import check_image_path, error_line

    try:  # a missing or unreadable image is reported before anything heavy loads
        check_image_path(Path(args.image).expanduser())
    except LlavaMedError as err:
        sys.stderr.write(error_line(err) + "\n")
        return 2
    from ...engines.bundle_run import report_errors_without_traceback
    from ..monailabel.redaction import install_reader_redaction
    from .console import ChatConsole
    from .session import ChatSession

    report_errors_without_traceback()
    install_reader_redaction()
    model_dir = Path(args.model_dir).expanduser() if args.model_dir else default_model_dir()
    if model_dir is None or not model_dir.is_dir():
        name = model_dir.name if model_dir is not None else BUNDLE_MODELS.as_posix()
        sys.stderr.write(f"error: {name}: model folder not found (pass --model_dir DIR)\n")
        return 2
    import torch
    from transformers.utils import logging as hf_logging

    from ...engines.predictor import LlavaMedPredictor

    hf_logging.set_verbosity_error()  # the tokenizer's length warning: the chat prints its own error line
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"loading the model from {model_dir.name}/ ...", flush=True)
    try:
        predictor = LlavaMedPredictor.from_pretrained(model_dir, device=args.device)
    except LlavaMedError as err:
        sys.stderr.write(error_line(err) + "\n")
        return 2
    session = ChatSession(predictor, max_new_tokens=args.max_new_tokens)
    try:
        session.open_image(args.image)
    except LlavaMedError as err:
        sys.stderr.write(error_line(err) + "\n")
        return 2
    _readline_input()
    return ChatConsole(session).run()


if __name__ == "__main__":
    sys.exit(main())
