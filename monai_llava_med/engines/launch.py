# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Command line of a training stage, for every launcher.

::

    python -m monai_llava_med.engines.launch --config run.json                      # one process
    torchrun --nproc_per_node 8 -m monai_llava_med.engines.launch --config run.json
    deepspeed --num_gpus 8 --module monai_llava_med.engines.launch --config run.json
    deepspeed --hostfile training/hostfile.example --module monai_llava_med.engines.launch --config run.json

The run file is parsed like a bundle config (``_target_`` components, ``@references``).
``--set key=value`` overrides a :class:`~monai_llava_med.engines.TrainingConfig` field (the value is parsed as
JSON when it can be, e.g. ``--set max_steps=100 --set deepspeed=zero2``), or one of the run file's own keys
(``init_from``, ``data_json``, ``image_root``, ``export_name``, ``max_views``, ``view_options``), e.g.
``--set data_json=/data/train.json`` or ``--set 'view_options={"token_pool": 2}'``. Each rank prints the run's summary as
one JSON line. ``--restart`` starts over in an output folder that holds checkpoints (they are moved aside).
A run that cannot start or continue (bad data or batch sizes, checkpoints that cannot be resumed, a full
disk) ends with one clear message and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import LlavaMedError
from .training import load_run_config, run_training

__all__ = ["RUN_KEYS", "parse_overrides", "main"]

#: ``--set`` keys that override the run file itself rather than its ``training`` section.
RUN_KEYS = frozenset({"init_from", "data_json", "image_root", "export_name", "max_views", "view_options"})


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "stage=stage1"]`` -> ``{"lr": 0.001, "stage": "stage1"}`` (JSON values where they parse)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage from a run config; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m monai_llava_med.engines.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="run config (JSON/YAML): build_trainer arguments")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training override")
    parser.add_argument("--restart", action="store_true",
                        help="start from scratch although the output folder holds checkpoints (moved aside)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        overrides = {k if k in RUN_KEYS else f"training#{k}": v for k, v in parse_overrides(args.set).items()}
        if args.restart:
            overrides["training#restart"] = True
        summary = run_training(load_run_config(args.config, overrides))
    except LlavaMedError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    # one write per summary line: ranks share stdout, and a print's text and newline may be two writes (unbuffered)
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
