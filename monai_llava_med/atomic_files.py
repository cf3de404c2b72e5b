# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Atomic file writes: a reader sees the old content or the new, never half a file (a leaf: stdlib only)."""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

__all__ = ["atomic_write_bytes"]


def atomic_write_bytes(path: str | PathLike, data: bytes, sync_folder: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then rename over ``path``.

    Args:
        path: the file (its folder is created).
        data: the whole content.
        sync_folder: also fsync the folder, so that the rename itself survives a crash.

    Returns:
        ``path``.

    Raises:
        OSError: the write failed; no temporary file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        if sync_folder:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)
    return path
