# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Write ``models/MANIFEST.json``'s training record and file list for the files now in ``models/``.

Run from ``bundles/llava_med`` after the demo model was trained and ``scripts/export_model_pt.py`` run:
``python scripts/write_manifest.py --commit <sha> --command "<the training command>" [--arguments JSON]``.
With ``--continues``, the new weights were trained from the ones the manifest describes now (``bench_volumes.py
--init-from``): their training record is kept under ``training.continued_from``, so the record is the whole chain.
The ``evaluation`` section (``benchmarks/bench_demo_model.py --manifest``) is kept if present.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

MODELS = Path("models")


def file_entries(folder: Path) -> dict[str, dict[str, object]]:
    """sha256 and size of every file of ``folder`` but the manifest itself."""
    return {
        p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "MANIFEST.json"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commit", required=True, help="the commit the weights were trained with (40 hex digits)")
    parser.add_argument("--command", required=True, help="the training command, run from the repository root")
    parser.add_argument("--arguments", default="{}", help="JSON object of the training arguments")
    parser.add_argument("--seeds", default="{}", help="JSON object describing the seeds")
    parser.add_argument("--environment", default="CPU, DeepSpeed ZeRO-2 on the cpu accelerator")
    parser.add_argument("--calibration", default=None,
                        help="how calibration.json and gate.safetensors were fitted (the command), if shipped")
    parser.add_argument("--continues", action="store_true",
                        help="the command continued the weights the manifest describes now (their record is kept)")
    args = parser.parse_args()
    if not re.fullmatch(r"[0-9a-f]{40}", args.commit):
        raise SystemExit("--commit must be a full 40-digit commit hash")
    path = MODELS / "MANIFEST.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    config = json.loads((MODELS / "llava_med_config.json").read_text())
    manifest = {
        "name": config["name"],
        "training": {
            "command": f"git checkout {args.commit} && {args.command}",
            "commit": args.commit,
            "arguments": json.loads(args.arguments),
            "seeds": json.loads(args.seeds),
            "environment": args.environment,
        },
        "derived": {"model.pt": "cd bundles/llava_med && python scripts/export_model_pt.py (the state dict of "
                                "model.safetensors, for the MONAI bundle convention)"},
        "files": file_entries(MODELS),
    }
    if args.continues:
        if "training" not in old:
            raise SystemExit("--continues: the manifest has no training record to continue")
        manifest["training"]["continued_from"] = old["training"]
        manifest["training"]["replay"] = ("run the chain oldest record first, in one working tree: each command reads "
                                          "the weights the one before it wrote into bundles/llava_med/models")
    if args.calibration:
        manifest["derived"]["calibration.json, gate.safetensors"] = args.calibration
    if "evaluation" in old:
        manifest["evaluation"] = old["evaluation"]
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {path}: {len(manifest['files'])} files")


if __name__ == "__main__":
    main()
