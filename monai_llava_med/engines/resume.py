# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Which checkpoint a run resumes from: manifests, verification, ``latest``, retention, restart.

A checkpoint folder ``checkpoints/stepNNNNNNNN`` is *complete* when its ``manifest.json`` exists and every file
it lists has the recorded size and sha256. The manifest is written last, atomically (temporary file, fsync,
rename), after every rank's files; ``latest`` is written after the manifest. So a run killed, or stopped by a
full disk, while saving leaves a folder without a manifest, which is never resumed from, and ``latest`` keeps
naming the previous checkpoint. Resume trusts manifests, not ``latest``: it takes the newest complete folder,
says why it skipped newer ones, and a folder holding checkpoints of which none is complete is refused (no
silent restart) unless ``restart=True``, which moves the old checkpoints aside instead of deleting them. A
folder holding only unfinished saves (no manifest anywhere, no ``latest``: the first save was interrupted)
starts from scratch, saying so.
Older checkpoints are deleted only after a newer one is complete.

The folder must be on a file system every rank sees (DeepSpeed's default layout); hashing is shared out
between the ranks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from ..atomic_files import atomic_write_bytes
from ..errors import CheckpointError

__all__ = [
    "MANIFEST_NAME",
    "ResumePlan",
    "checkpoint_tag",
    "step_folders",
    "read_latest",
    "write_manifest",
    "verify_checkpoint",
    "plan_resume",
    "commit_checkpoint",
    "prune_checkpoints",
    "move_aside",
    "atomic_write_text",
    "is_disk_full",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_FORMAT = 1
_TAG = re.compile(r"^step(\d{8})$")
_CHUNK = 1 << 22


def checkpoint_tag(step: int) -> str:
    """Folder name of the checkpoint after ``step`` iterations."""
    return f"step{int(step):08d}"


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shared_map(fn: Callable[[str], Any], items: Sequence[str], collective: bool = True) -> dict[str, Any]:
    """``{item: fn(item)}`` with the items shared out between the ranks (all ranks call, all get the result)."""
    rank, world = _rank_world() if collective else (0, 1)
    mine = {item: fn(item) for item in list(items)[rank::world]}
    if world == 1:
        return mine
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    out: dict[str, Any] = {}
    for part in gathered:
        out.update(part)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a failed write for lack of space."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        # torch.save reports a short write of its zip container as a RuntimeError
        if "No space left" in text or "file write failed" in text or "unexpected pos" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def atomic_write_text(path: str | PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file, fsync and rename (the old content or the new, never
    half a file).

    Raises:
        CheckpointError: the write failed (a full disk says so); no temporary file is left.
    """
    path = Path(path)
    try:
        atomic_write_bytes(path, text.encode(), sync_folder=True)
    except OSError as err:
        cause = "no space left on the device" if is_disk_full(err) else str(err)
        raise CheckpointError(f"cannot write {path.name}: {cause}", path.parent) from err
    return path


def step_folders(root: str | PathLike) -> list[str]:
    """Checkpoint folder names (``stepNNNNNNNN``) in ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if p.is_dir() and _TAG.match(p.name)), reverse=True)


def read_latest(root: str | PathLike) -> str | None:
    """The tag ``root/latest`` names (None when there is no such file).

    Raises:
        CheckpointError: ``latest`` holds something other than a checkpoint tag of this run (e.g. ``../..``).
    """
    latest = Path(root) / "latest"
    if not latest.is_file():
        return None
    try:
        tag = latest.read_text(errors="replace").strip()
    except OSError as err:
        raise CheckpointError(f"cannot read 'latest': {err}", root) from err
    if not _TAG.match(tag):
        shown = tag if len(tag) <= 40 else tag[:40] + "..."
        raise CheckpointError(
            f"'latest' names {shown!r}, which is not a checkpoint folder of this run (stepNNNNNNNN): refusing to "
            "resume from it; delete the file (resume then takes the newest complete checkpoint) or correct it",
            root,
        )
    return tag


def write_manifest(folder: str | PathLike, position: dict[str, int]) -> Path:
    """Hash every file of a written checkpoint (shared out between ranks) and write its manifest on rank 0.

    All ranks call, after every rank's files are written. ``position`` is the data position saved with it.
    """
    folder = Path(folder)
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    sums = _shared_map(lambda name: [(folder / name).stat().st_size, _sha256(folder / name)], names)
    manifest = {
        "format": _FORMAT,
        "tag": folder.name,
        **{k: int(v) for k, v in position.items()},
        "files": {name: {"size": sums[name][0], "sha256": sums[name][1]} for name in names},
    }
    if _rank_world()[0] == 0:
        atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return folder / MANIFEST_NAME


def _read_manifest(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None, "no manifest (it was being written when the run stopped, or an older version wrote it)"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != _FORMAT or manifest.get("tag") != folder.name or not isinstance(files, dict):
            return None, "its manifest is not one this version writes"
        for name, entry in files.items():
            if Path(name).is_absolute() or ".." in Path(name).parts or not isinstance(entry, dict):
                return None, "its manifest names a file outside the folder"
    except (OSError, ValueError, KeyError, TypeError):
        return None, "its manifest cannot be read"
    return manifest, None


def verify_checkpoint(folder: str | PathLike, checksums: bool = True, collective: bool = True) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is.

    Args:
        folder: a ``stepNNNNNNNN`` folder.
        checksums: compare sha256 too (else only the manifest and the file sizes: fast, catches truncation).
        collective: share the hashing out between the ranks (all ranks must call).
    """
    folder = Path(folder)
    manifest, reason = _read_manifest(folder)
    if manifest is None:
        return reason
    files: dict[str, Any] = manifest["files"]
    for name, entry in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{name} has {size} bytes, its manifest {entry.get('size')} (truncated or replaced)"
    if checksums:
        sums = _shared_map(lambda name: _sha256(folder / name), sorted(files), collective)
        for name in sorted(files):
            if sums[name] != files[name].get("sha256"):
                return f"{name} does not match its manifest's sha256 (damaged)"
    return None


@dataclass
class ResumePlan:
    """What :func:`plan_resume` found.

    Attributes:
        tag: the checkpoint to resume from (None: none is complete).
        position: its data position from the manifest (``iteration``, ``epoch_length``, ``optimizer_steps``).
        skipped: ``(tag, reason)`` of the newer folders that were not complete.
        latest: what ``latest`` named (None: no such file).
        holds_checkpoints: whether the folder holds a checkpoint that was once complete (a manifest, or a
            ``latest``); folders that never got a manifest are unfinished saves.
    """

    tag: str | None = None
    position: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    latest: str | None = None
    holds_checkpoints: bool = False

    def describe(self, root: str | PathLike) -> str:
        """One message: where the run resumes and why it skipped the others."""
        lines = [f"{tag}: {reason}" for tag, reason in self.skipped]
        if self.latest is not None and self.latest != self.tag and self.latest not in dict(self.skipped):
            lines.append(f"'latest' names {self.latest}, which is not there")
        elif self.latest is None and self.holds_checkpoints:
            lines.append("there is no 'latest' file")
        head = f"resuming from {Path(root) / self.tag}" if self.tag else f"no complete checkpoint in {root}"
        return head + ("; skipped: " + "; ".join(lines) if lines else "")


def plan_resume(
    root: str | PathLike, checksums: bool = True, collective: bool = True, below: str | None = None,
    latest: str | None = None,
) -> ResumePlan:
    """Find the newest complete checkpoint of ``root`` (all ranks call when ``collective``).

    Args:
        root: the run's ``checkpoints`` folder.
        checksums: verify sha256 (else manifest and sizes only).
        collective: share the hashing out between the ranks.
        below: only consider checkpoints older than this tag (the next candidate after one failed to load).
        latest: what ``latest`` named, when already read.

    Raises:
        CheckpointError: ``latest`` is not a tag of this run.
    """
    plan = ResumePlan(latest=latest if below is not None else read_latest(root))
    tags = step_folders(root)
    # folders that never got a manifest, without a 'latest', are only unfinished saves: nothing to lose
    plan.holds_checkpoints = plan.latest is not None or any((Path(root) / t / MANIFEST_NAME).exists() for t in tags)
    for tag in (t for t in tags if below is None or t < below):
        reason = verify_checkpoint(Path(root) / tag, checksums=checksums, collective=collective)
        if reason is None:
            manifest, _ = _read_manifest(Path(root) / tag)
            if manifest is None:  # removed between the two reads
                plan.skipped.append((tag, "its manifest disappeared"))
                continue
            plan.tag = tag
            plan.position = {k: int(manifest[k]) for k in ("iteration", "epoch_length", "optimizer_steps")}
            return plan
        plan.skipped.append((tag, reason))
    return plan


def commit_checkpoint(root: str | PathLike, tag: str, position: dict[str, int]) -> None:
    """Make a written checkpoint folder complete: its manifest, then ``latest`` (all ranks call)."""
    write_manifest(Path(root) / tag, position)
    if _rank_world()[0] == 0:
        atomic_write_text(Path(root) / "latest", tag)


def prune_checkpoints(root: str | PathLike, newest: str, keep_last: int) -> list[str]:
    """Delete what a newer complete checkpoint ``newest`` makes unneeded (rank 0 only; call after committing).

    Kept: ``newest`` and the ``keep_last - 1`` newest complete checkpoints before it (0 keeps all). Deleted:
    older complete ones beyond that, and incomplete folders (killed or failed saves). ``newest`` itself is
    checked first: nothing is deleted unless it is complete.

    Returns:
        The deleted tags.
    """
    root = Path(root)
    if verify_checkpoint(root / newest, checksums=False, collective=False) is not None:
        return []
    deleted, complete = [], 1
    for tag in step_folders(root):
        if tag == newest:
            continue
        good = verify_checkpoint(root / tag, checksums=False, collective=False) is None
        if good and tag < newest and (keep_last == 0 or complete < keep_last):
            complete += 1
            continue
        if good and tag > newest:
            continue  # never the case after a resume from the newest complete one; keep it all the same
        shutil.rmtree(root / tag, ignore_errors=True)
        deleted.append(tag)
    return deleted


def move_aside(root: str | PathLike) -> Path | None:
    """Rename a checkpoint folder to ``<name>.replaced-<UTC time>`` (for ``restart``: nothing is deleted)."""
    root = Path(root)
    if not root.exists():
        return None
    target = root.with_name(f"{root.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    n = 1
    while target.exists():
        target = target.with_name(f"{target.name.split('~')[0]}~{n}")
        n += 1
    root.rename(target)
    return target
