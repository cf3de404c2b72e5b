# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Helpers every checkpoint layout shares: JSON and weight files, strict loading, writing weights.

Weights are only read with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from monai.utils import optional_import

from ..errors import CheckpointError

safetensors_torch, _ = optional_import("safetensors.torch")

__all__ = [
    "IGNORED_KEYS",
    "TEXT_FIELDS",
    "architecture",
    "load_state_dict_strict",
    "model_name",
    "read_json",
    "read_state_dict",
    "read_weight_file",
    "resolve_folder",
    "save_weights",
    "staged_folder",
    "weight_files",
]

#: Buffers some writers store but that are recomputed at construction.
IGNORED_KEYS = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")
#: Language-model config fields carried into ``LlavaMedConfig.text_config`` from a foreign config.
TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "sliding_window",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file; any failure is a :class:`CheckpointError` naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read JSON: {err}", path) from err


def architecture(raw: Mapping[str, Any]) -> str:
    """The first entry of a config's ``architectures`` ("" when absent)."""
    architectures = raw.get("architectures") or [""]
    return str(architectures[0]) if isinstance(architectures, list) else str(architectures)


def model_name(folder: Path) -> str:
    """The folder's name; the repo name for a hub-cache snapshot ``models--{org}--{name}/snapshots/{sha}``."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--", 2)[-1]
    return folder.name


def _shard_name(name: str, index_path: Path) -> str:
    """A shard named by an index must be a plain file name inside the model folder (no path, no ``..``)."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if not name or pure.is_absolute() or len(pure.parts) != 1 or pure.name in (".", "..") or ":" in name:
        raise CheckpointError(f"refused: the index names a shard outside the model folder: {name[:80]!r}", index_path)
    return pure.name


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder: the shards an index lists, or a single weights file."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = folder / index_name
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError("index has no weight_map", index_path)
            files = [folder / _shard_name(name, index_path) for name in sorted(set(map(str, weight_map.values())))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"shards listed in the index are missing: {missing}", index_path)
            return files
    for name in ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth"):
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError("no weights found (model.safetensors, shards + index, or pytorch_model.bin)", folder)


def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """Read one safetensors file, or a torch file with ``weights_only=True`` (code-carrying pickles refused)."""
    if path.suffix == ".safetensors":
        try:
            return safetensors_torch.load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError / OSError
            raise CheckpointError(f"cannot read safetensors file: {err}", path) from err
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) torch.save files cannot be memory-mapped; still weights_only
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            "refused: this pickle needs arbitrary code to load (torch.load(weights_only=True) failed); "
            "convert it to safetensors with a trusted tool",
            path,
        ) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"cannot read weights: {err}", path) from err
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError("file does not hold a state dict of tensors", path)
    return dict(loaded)


def read_state_dict(folder: str | PathLike) -> dict[str, torch.Tensor]:
    """Read every weight of a checkpoint folder (single file, or shards listed in an index)."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(Path(folder)):
        state.update(read_weight_file(path))
    return state


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | PathLike) -> None:
    """Load weights, refusing missing keys, unexpected keys and shape mismatches with a full list.

    Args:
        model: target module (may hold meta tensors; they are replaced).
        state: weights with the module's names.
        source: the folder, named in errors.

    Raises:
        CheckpointError: listing every missing / unexpected key and every mismatched shape (both shapes).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_preview(mismatched)}")
    if problems:
        raise CheckpointError("; ".join(problems), source)
    model.load_state_dict(state, strict=True, assign=True)


def _preview(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def resolve_folder(path: str | PathLike) -> Path:
    """A local folder as given, or the snapshot of a hub id ``org/name`` (honours ``HF_HUB_OFFLINE``)."""
    folder = Path(path)
    if folder.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
        return folder
    from huggingface_hub import snapshot_download  # hub ids only; honours HF_HUB_OFFLINE

    try:
        return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja"]))
    except Exception as err:  # network / offline / auth errors of the hub client
        raise CheckpointError(f"not a local folder and the hub download failed: {err}", path) from err


def save_weights(state: dict[str, torch.Tensor], out_dir: Path, max_shard_size: int | str) -> None:
    """Write safetensors weights (sharded above ``max_shard_size``, with an index)."""
    from huggingface_hub import save_torch_state_dict

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_torch_state_dict(state, out_dir, max_shard_size=max_shard_size, metadata={"format": "pt"})


# weight and index files of any sharding: a new save removes the ones it did not write (stale shards mislead loaders)
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")
_WRITTEN_LAST = ("config.json", "llava_med_config.json")


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _publish(staging: Path, out: Path) -> None:
    """Move every file of ``staging`` into ``out`` with ``os.replace`` (each file appears whole).

    Weights go first and the model config last (it is what makes a folder a model folder), each file is
    flushed to disk and gets the usual ``0o666 & ~umask`` mode (``0644``), and weight / index files of an
    earlier save that this one did not write are removed.
    """
    names = sorted(p.name for p in staging.iterdir() if p.is_file())
    order = sorted(names, key=lambda n: (0 if _WEIGHT_FILE.match(n) and not n.endswith(".json") else
                                         2 if n in _WRITTEN_LAST else 1, n))
    mode = _file_mode()
    for name in order:
        path = staging / name
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(path, mode)
        os.replace(path, out / name)
    for stale in out.iterdir():
        if stale.is_file() and _WEIGHT_FILE.match(stale.name) and stale.name not in names:
            stale.unlink()
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_folder(out_dir: str | PathLike) -> Iterator[Path]:
    """Write a model folder atomically, file by file: yield a staging folder, then publish its files.

    Everything is written into a hidden staging folder inside ``out_dir`` (same file system) and moved into
    place only when the writer finished without an error; on an error ``out_dir`` keeps its earlier files.

    Args:
        out_dir: the destination folder (created).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield staging
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
