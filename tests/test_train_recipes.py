# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The training commands of docs/training.md run as written on what ships in the repository.

Every launcher command in the document's ``bash`` blocks is parsed: its run file, hostfile, ``init_from``, data
and images exist (or are the export of a command before it), its ``--set`` keys are known, and its batch
arithmetic fits the shipped 3-sample set for its number of ranks (checked without a model). The two-process
command is then run for real: the ranks agree, and each kind of output appears once.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_llava_med.engines import TrainingConfig
from monai_llava_med.engines.launch import RUN_KEYS, parse_overrides
from monai_llava_med.engines.schedule import TrainingPlanError
from monai_llava_med.engines.training import _check_batch_arithmetic, _resolve_training, load_run_config

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "training.md"
LAUNCHERS = ("python -m monai_llava_med.engines.launch", "torchrun ", "deepspeed ")


def _documented_commands() -> list[list[str]]:
    """The launcher commands of the doc's bash blocks, continuation lines joined, as argument lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(LAUNCHERS):
                commands.append(shlex.split(line))
    return commands


def _parse(argv: list[str]) -> tuple[int, Path, dict[str, object]]:
    """``(ranks, run file, --set overrides)`` of a documented command."""
    ranks = 1
    for flag in ("--nproc_per_node", "--num_gpus"):
        if flag in argv:
            ranks = int(argv[argv.index(flag) + 1])
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    return ranks, REPO / argv[argv.index("--config") + 1], parse_overrides(sets)


def test_every_documented_command_fits_the_shipped_sample(monkeypatch):
    commands = _documented_commands()
    assert len(commands) >= 7 and {c[0] for c in commands} == {"python", "torchrun", "deepspeed"}
    exported: set[Path] = set()
    fields = set(TrainingConfig.__dataclass_fields__)
    for argv in commands:
        ranks, run_file, sets = _parse(argv)
        assert run_file.is_file(), argv
        assert set(sets) <= fields | RUN_KEYS, argv
        overrides = {k if k in RUN_KEYS else f"training#{k}": v for k, v in sets.items()}
        run = load_run_config(run_file, overrides)
        config = _resolve_training(run.pop("training"), {})
        init_from = Path(run["init_from"])
        assert (REPO / init_from).is_dir() or init_from in exported, (argv, init_from)
        assert (REPO / run["data_json"]).is_file() and (REPO / run["image_root"]).is_dir(), argv
        monkeypatch.chdir(REPO)
        schedule = _check_batch_arithmetic(config, None, run["data_json"], run["image_root"], ranks)
        assert schedule.total_steps >= 1, argv
        exported.add(Path(config.output_dir) / "model")
    for hostfile in re.findall(r"--hostfile (\S+)", DOC.read_text()):
        assert (REPO / hostfile).is_file(), hostfile


def test_batch_arithmetic_is_refused_before_loading_with_the_numbers(monkeypatch):
    monkeypatch.chdir(REPO)
    run = load_run_config(REPO / "training" / "recipes" / "finetune.json")
    config = _resolve_training(run.pop("training"), {})
    with pytest.raises(TrainingPlanError) as err:
        _check_batch_arithmetic(config, None, run["data_json"], run["image_root"], 1)
    message = str(err.value)
    assert message.startswith("bundles/llava_med/sample/train.json: 3 training samples cannot fill one optimizer step")
    assert "micro_batch_size 4 x 1 rank(s) x 32 accumulation step(s) = 128 samples" in message
    assert "micro_batch_size 4 x 1 rank(s) x 32" in DOC.read_text().replace("\n", " ")  # the doc quotes it
    # LLaVA-Med's stage-2 batch (micro 16 x 2 ranks) on the sample: refused the same way, at once
    with pytest.raises(TrainingPlanError, match=r"micro_batch_size 16 x 2 rank\(s\)"):
        _check_batch_arithmetic(stage_config(micro_batch_size=16, global_batch_size=128), None,
                                run["data_json"], run["image_root"], 2)
    with pytest.raises(TrainingPlanError, match="not a multiple"):
        _check_batch_arithmetic(stage_config(micro_batch_size=2, global_batch_size=3), None,
                                run["data_json"], run["image_root"], 1)


def stage_config(**values) -> TrainingConfig:
    from monai_llava_med.engines import stage_preset

    return stage_preset("finetune", deepspeed="zero2", **values)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.deepspeed
def test_documented_two_process_command_runs_and_says_each_thing_once(tmp_path):
    pytest.importorskip("deepspeed")
    from monai_llava_med.engines.resume import verify_checkpoint
    from monai_llava_med.networks import load_pretrained

    argv = next(c for c in _documented_commands() if c[0] == "torchrun")
    argv = [str(Path(sys.executable).with_name("torchrun")), "--master_port", str(_free_port()), *argv[1:]]
    argv += ["--set", f"output_dir={tmp_path / 'out'}", "--set", "log_every_n_steps=1"]
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    # 3 samples, micro 1 x 2 ranks: 1 iteration an epoch, no accumulation; 2 steps
    assert all(s["iterations"] == 2 and s["optimizer_steps"] == 2 for s in summaries)
    assert summaries[0]["weights_checksum"] == summaries[1]["weights_checksum"]
    model, _ = load_pretrained(tmp_path / "out" / "model", dtype=torch.float32)  # LoRA merged into the weights
    start, _ = load_pretrained(REPO / "bundles" / "llava_med" / "models", dtype=torch.float32)
    trained = start.state_dict()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, trained[k])]
    assert changed and all(k.startswith(("projector.", "language_model.")) for k in changed)
    ckpt = tmp_path / "out" / "checkpoints" / "step00000002"
    assert sorted(p.name for p in ckpt.glob("rng_state_rank*")) == ["rng_state_rank0.safetensors", "rng_state_rank1.safetensors"]
    manifest = json.loads((ckpt / "manifest.json").read_text())  # both ranks' files, hashed by both ranks
    assert {"rng_state_rank0.safetensors", "rng_state_rank1.safetensors", "mp_rank_00_model_states.pt"} <= set(manifest["files"])
    assert verify_checkpoint(ckpt, collective=False) is None
    # each thing said once: no DeepSpeed FutureWarning, MONAI's nvImageCodec line at most once (the DICOM reads
    # mute reader loggers), losses and INFO on rank 0
    out = proc.stdout + proc.stderr
    assert out.count("all_gather_into_tensor") == 0
    assert out.count("nvImageCodec is not available") <= 1
    assert len(re.findall(r"Iter: \d+/\d+ -- loss: ", out)) == 2  # MONAI StatsHandler, one line per iteration
    assert out.count("Engine run finished") == 1 and out.count("saved checkpoint") == 1
    assert out.count("monai_llava_med.networks.checkpoint INFO loaded") == 1
    rows = (tmp_path / "out" / "loss_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["iteration"] for r in rows] == [1, 2]


def test_the_launcher_refuses_in_one_line_before_loading_the_model(monkeypatch, capsys, caplog):
    from monai_llava_med.engines.launch import main

    monkeypatch.chdir(REPO)
    with caplog.at_level("INFO"):  # the recipe as is on the 3-sample set: micro 4 x 32 accumulation
        status = main(["--config", "training/recipes/finetune.json"])
    out = capsys.readouterr()
    assert status == 2 and out.out == ""
    assert out.err.startswith("error: bundles/llava_med/sample/train.json: 3 training samples cannot fill")
    assert out.err.count("\n") == 1 and "Traceback" not in out.err
    assert not any("loaded" in r.getMessage() for r in caplog.records)  # refused before the model is read
