# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``python -m monai_llava_med.apps.pacs`` (one-shot over DICOMweb) and ``... pacs listen`` (C-STORE SCP node).

One-shot: ``--model_dir DIR --dicomweb URL [--user U --password P] --study UID --question TEXT`` prints the SR's
SOP Instance UID and exits 0. Bad input or a PACS failure prints one ``ERROR <type>: <cause>`` line (no
traceback, no header value) and exits 1. docs/pacs.md describes every flag.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ...errors import LlavaMedError, PacsConfigError
from .answering import load_questions
from .selection import DEFAULT_EXCLUDE_DESCRIPTION, DEFAULT_MODALITIES, SelectionRules

__all__ = ["build_parser", "main"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_dir", required=True, help="model folder (ours, LLaVA-Med v1.5 or HF Llava)")
    p.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    p.add_argument("--questions", default=None, help="file of questions: a JSON list, or one per line")
    p.add_argument("--modality", action="append", default=None,
                   help=f"accepted modality (repeatable; default {' '.join(DEFAULT_MODALITIES)})")
    p.add_argument("--body_part", action="append", default=[], help="accepted Body Part Examined (default any)")
    p.add_argument("--include_description", default=None, help="regex the Series Description must match")
    p.add_argument("--exclude_description", default=DEFAULT_EXCLUDE_DESCRIPTION,
                   help="regex that rejects a Series Description ('' for none)")
    p.add_argument("--min_instances", type=int, default=1)
    p.add_argument("--max_series", type=int, default=1, help="series answered per study (largest first)")
    p.add_argument("--rules", default=None, help="JSON file of selection rules (overrides the flags above)")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda... (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--log_level", default="warning")


def build_parser(listen: bool = False) -> argparse.ArgumentParser:
    """The command line: the one-shot mode, or ``listen`` with ``listen=True``."""
    if not listen:
        p = argparse.ArgumentParser(prog="python -m monai_llava_med.apps.pacs",
                                    description="Answer one study over DICOMweb; SR stored with STOW-RS "
                                                "(or: 'listen ...' for the C-STORE node)")
        _common(p)
        p.add_argument("--dicomweb", required=True, help="DICOMweb root, e.g. http://pacs:8042/dicom-web")
        p.add_argument("--user", default=None, help="HTTP basic-auth user")
        p.add_argument("--password", default=os.environ.get("LLAVA_MED_PACS_PASSWORD"),
                       help="its password (default $LLAVA_MED_PACS_PASSWORD; a flag is visible in ps)")
        p.add_argument("--study", required=True, help="Study Instance UID")
        p.add_argument("--work_dir", default=None, help="where the retrieved series are kept while answering")
        p.add_argument("--timeout_s", type=float, default=60.0, help="HTTP timeout")
        return p
    p = argparse.ArgumentParser(prog="python -m monai_llava_med.apps.pacs listen",
                                description="C-STORE SCP node: queue received studies, answer, send SRs back")
    _common(p)
    p.add_argument("--ae_title", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    p.add_argument("--queue", required=True, help="the job queue's SQLite file")
    p.add_argument("--storage", default=None, help="received studies (default: <queue folder>/studies)")
    p.add_argument("--destination", required=True, help="dimse://AE@host:port (C-STORE) or http(s)://.../dicom-web")
    p.add_argument("--dest_user", default=None, help="HTTP basic-auth user for a STOW-RS destination")
    p.add_argument("--dest_password", default=os.environ.get("LLAVA_MED_PACS_PASSWORD"),
                   help="its password (default $LLAVA_MED_PACS_PASSWORD)")
    p.add_argument("--idle_timeout_s", type=float, default=10.0, help="a study is complete after this idle time")
    p.add_argument("--max_attempts", type=int, default=8, help="delivery attempts before 'failed'")
    p.add_argument("--backoff_s", type=float, default=2.0, help="first retry delay (doubled each time)")
    p.add_argument("--max_backoff_s", type=float, default=300.0)
    p.add_argument("--network_timeout_s", type=float, default=30.0)
    return p


def _questions(args: argparse.Namespace) -> list[str]:
    questions = [q for q in args.question if q.strip()]
    if args.questions:
        try:
            questions += load_questions(args.questions)
        except (OSError, ValueError) as err:
            raise PacsConfigError(f"cannot read the questions ({type(err).__name__})", args.questions) from None
    if not questions:
        raise PacsConfigError("give at least one --question or a --questions file", "questions")
    return questions


def _rules(args: argparse.Namespace) -> SelectionRules:
    try:
        if args.rules:
            return SelectionRules.from_mapping(json.loads(Path(args.rules).read_text(encoding="utf-8")))
        return SelectionRules(modalities=tuple(args.modality or DEFAULT_MODALITIES), body_parts=tuple(args.body_part),
                              include_description=args.include_description,
                              exclude_description=args.exclude_description or None,
                              min_instances=args.min_instances, max_series=args.max_series)
    except (OSError, ValueError, TypeError) as err:
        raise PacsConfigError(f"bad selection rules ({err if isinstance(err, ValueError) else type(err).__name__})",
                              args.rules or "rules") from None


def _load_predictor(args: argparse.Namespace):  # noqa: ANN202 - the predictor type is imported lazily
    import torch

    from ...engines.predictor import LlavaMedPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    return LlavaMedPredictor.from_pretrained(args.model_dir, device=args.device)


def _oneshot(args: argparse.Namespace) -> int:
    from .answering import AlgorithmIdentity
    from .dicomweb import DicomWebStore
    from .oneshot import answer_study_over_dicomweb

    questions, rules = _questions(args), _rules(args)
    store = DicomWebStore(args.dicomweb, user=args.user, password=args.password, timeout_s=args.timeout_s)
    predictor = _load_predictor(args)
    identity = AlgorithmIdentity.from_model_dir(args.model_dir, predictor.model_name)
    result = answer_study_over_dicomweb(predictor, store, args.study, questions, rules=rules, identity=identity,
                                        work_dir=args.work_dir, max_new_tokens=args.max_new_tokens)
    print(result.sr_uid, flush=True)
    return 0


def _listen(args: argparse.Namespace) -> int:
    from .listener import PacsNode
    from .node_config import NodeConfig

    config = NodeConfig(
        ae_title=args.ae_title, port=args.port, host=args.host, model_dir=args.model_dir, queue=args.queue,
        storage=args.storage, destination=args.destination, questions=_questions(args), rules=_rules(args),
        idle_timeout_s=args.idle_timeout_s, max_attempts=args.max_attempts, backoff_s=args.backoff_s,
        max_backoff_s=args.max_backoff_s, network_timeout_s=args.network_timeout_s,
        max_new_tokens=args.max_new_tokens, dest_user=args.dest_user, dest_password=args.dest_password)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = PacsNode(config, _load_predictor(args)).start()
    print(f"listening as {config.ae_title} on {config.host}:{node.port}", flush=True)
    try:
        stop.wait()
    finally:
        node.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one mode; typed errors become one ``ERROR`` line and exit status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    listen = bool(argv) and argv[0] == "listen"
    args = build_parser(listen).parse_args(argv[1:] if listen else argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _listen(args) if listen else _oneshot(args)
    except LlavaMedError as err:
        print(f"ERROR {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    except ImportError as err:
        print(f"ERROR ImportError: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
