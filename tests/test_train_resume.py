# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Resume never starts silently from scratch and never deletes a good checkpoint (DeepSpeed on CPU, in process).

A run that crashes after 7 of 8 iterations leaves complete checkpoints at iterations 4 and 6 (one every optimizer
step of 2 micro-batches, the last 2 kept). Each scenario then damages the folder the way a user or a machine
would and relaunches: the run resumes from the newest intact checkpoint, says which and why, and ends with the
weights of an uninterrupted run; or it refuses with a clear message and leaves every checkpoint in place.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")
pytest.importorskip("ignite")

from ignite.engine import Events  # noqa: E402

from monai_llava_med.data import PhantomVQADataset  # noqa: E402
from monai_llava_med.engines import build_trainer  # noqa: E402
from monai_llava_med.engines.resume import MANIFEST_NAME, verify_checkpoint, write_manifest  # noqa: E402
from monai_llava_med.errors import CheckpointError  # noqa: E402

pytestmark = pytest.mark.deepspeed
REPO = Path(__file__).resolve().parents[1]
TEXTS = ["Is there a lesion in this image? yes no", "How many lesions are there? zero one two three"]
MODEL_FILE, OPTIM_FILE, RNG_FILE = (
    "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng_state_rank0.safetensors"
)


class _Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def setup():
    from monai_llava_med.conversation import build_bpe_tokenizer
    from monai_llava_med.networks import LlavaMedConfig

    tokenizer = build_bpe_tokenizer(TEXTS * 4, vocab_size=300)
    config = LlavaMedConfig.tiny(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    data = PhantomVQADataset(16, size=32, split="train", tokenizer=tokenizer, num_image_tokens=config.num_image_tokens,
                             image_token_id=config.image_token_id, max_length=128)
    return tokenizer, config, data


def _launch(setup, out: Path, crash_at: int | None = None, **kwargs):
    tokenizer, config, data = setup
    # 16 samples / micro 4 = 4 iterations an epoch, accumulation 2, 2 epochs: 8 iterations, a checkpoint every step
    trainer = build_trainer(
        "stage1", train_data=data, model_config=config, tokenizer=tokenizer, output_dir=str(out), micro_batch_size=4,
        global_batch_size=8, num_epochs=2, learning_rate=1e-2, gradient_checkpointing=False, save_every_n_steps=1,
        keep_last_checkpoints=2, deepspeed="zero2", export=False, **kwargs,
    )
    if crash_at is not None:
        def crash(engine):
            raise _Crash(f"killed at iteration {crash_at}")

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=crash_at), crash)
        with pytest.raises(_Crash):
            trainer.run()
    else:
        trainer.run()
    return trainer


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def _max_diff(a, b) -> float:
    return max(float((v - b[k]).abs().max()) for k, v in a.items())


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    return _weights(_launch(setup, tmp_path_factory.mktemp("ref")))


@pytest.fixture(scope="module")
def crashed_once(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("crashed") / "run"
    _launch(setup, out, crash_at=7)
    ckpt = out / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step00000004", "step00000006"]
    assert (ckpt / "latest").read_text() == "step00000006"
    return out


@pytest.fixture()
def crashed(crashed_once, tmp_path):
    """A copy of the crashed run's output folder for one scenario."""
    return Path(shutil.copytree(crashed_once, tmp_path / "run"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, resumed_at, said",
    [
        ("latest_missing", 6, "there is no 'latest' file"),
        ("latest_names_missing_step", 6, "'latest' names step00000012, which is not there"),
        ("newest_folder_removed", 4, "'latest' names step00000006, which is not there"),
        ("truncated_model", 4, f"step00000006: {MODEL_FILE} has"),
        ("truncated_optimizer", 4, f"step00000006: {OPTIM_FILE} has"),
        ("emptied_rng", 4, f"step00000006: {RNG_FILE} has 0 bytes"),
        ("killed_before_manifest", 4, "step00000006: no manifest"),
    ],
)
def test_resume_takes_the_newest_intact_checkpoint_and_says_why(setup, crashed, reference, caplog, damage, resumed_at, said):
    ckpt = crashed / "checkpoints"
    newest = ckpt / "step00000006"
    if damage == "latest_missing":
        (ckpt / "latest").unlink()
    elif damage == "latest_names_missing_step":
        (ckpt / "latest").write_text("step00000012")
    elif damage == "newest_folder_removed":
        shutil.rmtree(newest)
    elif damage == "truncated_model":
        _truncate(newest / MODEL_FILE)
    elif damage == "truncated_optimizer":
        _truncate(newest / OPTIM_FILE)
    elif damage == "emptied_rng":
        (newest / RNG_FILE).write_bytes(b"")
    elif damage == "killed_before_manifest":
        (newest / MANIFEST_NAME).unlink()
    with caplog.at_level(logging.INFO, logger="monai_llava_med.engines.checkpointing"):
        trainer = _launch(setup, crashed)
    assert trainer.resumed_from == resumed_at and trainer.state.iteration == 8
    message = " ".join(r.getMessage() for r in caplog.records if "resuming from" in r.getMessage())
    assert f"resuming from {ckpt / f'step{resumed_at:08d}'}" in message and said in message, message
    assert _max_diff(reference, _weights(trainer)) <= 1e-6
    # the checkpoint resumed from was deleted only once newer ones were complete
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step00000006", "step00000008"]
    assert all(verify_checkpoint(p, collective=False) is None for p in ckpt.glob("step*"))


def test_no_intact_checkpoint_is_refused_and_nothing_is_deleted(setup, crashed):
    ckpt = crashed / "checkpoints"
    for folder in ckpt.glob("step*"):
        _truncate(folder / MODEL_FILE)
    before = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*"))
    with pytest.raises(CheckpointError, match="Refusing to start from scratch") as err:
        _launch(setup, crashed)
    assert "step00000006: mp_rank_00_model_states.pt has" in str(err.value) and "--restart" in str(err.value)
    assert sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*")) == before
    with pytest.raises(CheckpointError, match="resume is off"):
        _launch(setup, crashed, resume=False)
    trainer = _launch(setup, crashed, restart=True)  # told to: starts over, the old folder is moved aside
    assert trainer.resumed_from is None and trainer.state.iteration == 8
    moved = [p for p in crashed.iterdir() if p.name.startswith("checkpoints.replaced-")]
    assert len(moved) == 1 and sorted(p.name for p in moved[0].glob("step*")) == ["step00000004", "step00000006"]


def test_only_unfinished_saves_start_over_and_say_so(setup, crashed, reference, caplog):
    ckpt = crashed / "checkpoints"  # as if the first save was killed before its manifest: nothing to lose
    (ckpt / "latest").unlink()
    for folder in ckpt.glob("step*"):
        (folder / MANIFEST_NAME).unlink()
    with caplog.at_level(logging.WARNING, logger="monai_llava_med.engines.checkpointing"):
        trainer = _launch(setup, crashed)
    assert trainer.resumed_from is None and trainer.state.iteration == 8
    assert any("only unfinished saves: starting from scratch" in r.getMessage() for r in caplog.records)
    assert _max_diff(reference, _weights(trainer)) <= 1e-6
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step00000006", "step00000008"]


def test_latest_pointing_outside_is_a_clear_refusal(setup, crashed):
    (crashed / "checkpoints" / "latest").write_text("../..")
    with pytest.raises(CheckpointError, match=r"'latest' names '\.\./\.\.', which is not a checkpoint folder"):
        _launch(setup, crashed)


def test_rng_state_cannot_carry_code(setup, crashed, reference, tmp_path):
    from monai_llava_med.engines import checkpointing

    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    newest = crashed / "checkpoints" / "step00000006"
    planted = pickle.dumps(Payload())
    (newest / RNG_FILE).write_bytes(planted)  # a pickle where the RNG state belongs
    (newest / "rng_state_rank0.pt").write_bytes(planted)  # and under the old pickled name
    (newest / MANIFEST_NAME).unlink()
    write_manifest(newest, {"iteration": 6, "epoch_length": 4, "optimizer_steps": 3})  # the manifest agrees
    assert verify_checkpoint(newest, collective=False) is None
    with pytest.raises(CheckpointError, match="empty, damaged or not an RNG state"):
        checkpointing._load_rng_state(newest / RNG_FILE)
    trainer = _launch(setup, crashed)  # cannot load step 6: falls back to step 4
    assert trainer.resumed_from == 4 and not marker.exists()
    assert _max_diff(reference, _weights(trainer)) <= 1e-6


def test_rng_state_round_trips_without_pickle(tmp_path):
    import random

    import numpy as np

    from monai_llava_med.engines import checkpointing

    random.random(), np.random.rand(), torch.rand(1)
    checkpointing._save_rng_state(tmp_path / RNG_FILE, checkpointing._rng_state())
    assert (tmp_path / RNG_FILE).read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a pickle
    expected = (random.random(), float(np.random.rand()), np.random.randn(), float(torch.rand(1)))
    checkpointing._set_rng_state(checkpointing._load_rng_state(tmp_path / RNG_FILE))
    assert (random.random(), float(np.random.rand()), np.random.randn(), float(torch.rand(1))) == expected


@pytest.fixture()
def small_disk(tmp_path, monkeypatch):
    """A folder on a 2.6 MB tmpfs (room for two checkpoints of the tiny run, not three), and a function that
    makes it larger. Without the right to mount (not root), writes into it fail with ENOSPC once 2.6 MB are
    written (DeepSpeed's ``torch.save`` patched), which is what the kernel does."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    size = 2600 * 1024
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    ).returncode == 0
    if mounted:
        try:
            yield folder, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
        finally:
            gc.collect()  # the file torch.save could not finish is closed when collected
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(folder)], check=True)
        return
    import errno

    from deepspeed.runtime.checkpoint_engine import torch_checkpoint_engine

    real_save, limit = torch.save, {"bytes": size}

    def save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        if Path(path).resolve().is_relative_to(folder.resolve()) and used > limit["bytes"]:
            Path(path).write_bytes(Path(path).read_bytes()[: max(0, Path(path).stat().st_size - (used - limit["bytes"]))])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch_checkpoint_engine.torch, "save", save)
    yield folder, lambda: limit.update(bytes=64 << 20)


def test_a_full_disk_is_a_clear_error_and_the_run_resumes_after(setup, reference, small_disk):
    folder, grow = small_disk
    out = folder.parent / "run"
    out.mkdir()
    (out / "checkpoints").symlink_to(folder, target_is_directory=True)
    with pytest.raises(CheckpointError, match="cannot write checkpoint step00000006: no space left on the device") as err:
        _launch(setup, out)
    assert "a relaunch resumes from step00000004" in str(err.value)
    ckpt = out / "checkpoints"
    assert (ckpt / "latest").read_text() == "step00000004"  # the half-written step 6 did not become latest
    assert all(verify_checkpoint(ckpt / t, collective=False) is None for t in ("step00000002", "step00000004"))
    assert verify_checkpoint(ckpt / "step00000006", collective=False) is not None
    grow()  # space freed
    trainer = _launch(setup, out)
    assert trainer.resumed_from == 4 and _max_diff(reference, _weights(trainer)) <= 1e-6
    assert sorted(p.name for p in ckpt.glob("step*")) == ["step00000006", "step00000008"]
