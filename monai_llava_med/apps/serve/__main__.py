# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``python -m monai_llava_med.apps.serve --model_dir DIR [--host 127.0.0.1] [--port 8000] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .settings import ServeSettings

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of the server."""
    d = ServeSettings()
    p = argparse.ArgumentParser(prog="llava-med-serve", description="OpenAI-compatible LLaVA-Med server")
    p.add_argument("--model_dir", required=True, help="model folder (ours, LLaVA-Med v1.5 or HF Llava)")
    p.add_argument("--host", default=d.host, help="interface to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--allowed_root", default=None, help="folder file:// images may come from (default: none)")
    p.add_argument("--api_key", default=os.environ.get("LLAVA_MED_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $LLAVA_MED_API_KEY, else none)")
    p.add_argument("--cors_origin", action="append", default=[], help="allow this origin by CORS (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    for name in ("max_body_bytes", "max_image_bytes", "max_tokens_limit", "default_max_tokens", "queue_size",
                 "max_batch", "image_cache"):
        p.add_argument(f"--{name}", type=int, default=getattr(d, name))
    p.add_argument("--batch_wait_ms", type=float, default=d.batch_wait_ms)
    p.add_argument("--request_timeout_s", type=float, default=d.request_timeout_s)
    p.add_argument("--log_level", default="info")
    return p


def _settings(args: argparse.Namespace) -> ServeSettings:
    """The server's settings from its command line (``ValueError`` for a limit out of range)."""
    return ServeSettings(
        host=args.host, port=args.port, api_key=args.api_key or None, allowed_root=args.allowed_root,
        cors_origins=args.cors_origin, max_body_bytes=args.max_body_bytes, max_image_bytes=args.max_image_bytes,
        max_tokens_limit=args.max_tokens_limit, default_max_tokens=args.default_max_tokens,
        queue_size=args.queue_size, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
        request_timeout_s=args.request_timeout_s, image_cache=args.image_cache, model_dir=args.model_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Load the model once and serve until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ValueError as err:  # a limit out of range: one line, not a traceback
        parser.error(str(err))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    import uvicorn

    from ...engines.bundle_run import report_errors_without_traceback
    from ...engines.predictor import LlavaMedPredictor
    from .app import create_app

    report_errors_without_traceback()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = LlavaMedPredictor.from_pretrained(args.model_dir, device=args.device)
    app = create_app(predictor, settings)
    logging.getLogger("monai_llava_med.serve").info("serving %s on http://%s:%d", predictor.model_name, args.host,
                                                    args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
