# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Prepared images kept between requests, keyed by what the image is.

An OpenAI-style client sends the whole conversation, image included, with every turn; the web page asks for the
views, then for the answer. :class:`PreparedImages` keeps the last ``capacity`` outputs of the pixel pipeline
(least recently used first out), so such an image is read once. The key is the image's fingerprint
(:func:`image_fingerprint`): the sha256 of a ``data:`` URL's decoded bytes, or a ``file://`` path with the size and
modification time of the file, or of every file of a series folder, so a changed file is read again. Access checks
(:mod:`.images`) run on every request before the cache is consulted. Reader failures are not kept.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PreparedImages", "image_fingerprint"]


def image_fingerprint(path: Path, data: bytes | None = None,
                      files: Iterable[tuple[str, int, int]] = ()) -> str:
    """What identifies an image's content: ``data:sha256`` of uploaded bytes, else the path and its files' stat.

    Args:
        path: the checked path (a file, or a series folder).
        data: the decoded bytes of a ``data:`` URL, if the image came as one.
        files: ``(name, size, mtime_ns)`` of the file, or of every file of the folder, as the access checks read
            them (:func:`.images.resolve_file_url`).
    """
    if data is not None:
        return "data:" + hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256(str(path).encode())
    for name, size, mtime_ns in sorted(files):
        digest.update(f"\0{name}\0{size}\0{mtime_ns}".encode())
    return "path:" + digest.hexdigest()


class PreparedImages:
    """A bounded LRU of the pixel pipeline's outputs, shared by the server's worker threads.

    Args:
        preprocess: the pipeline (``path -> {"pixel_values", "views", ...}``, the predictor's).
        capacity: most images kept (0: none; every request reads its image).
    """

    def __init__(self, preprocess: Callable[[str], Mapping[str, Any]], capacity: int) -> None:
        self.preprocess = preprocess
        self.capacity = max(0, int(capacity))
        self.hits = self.misses = 0
        self._items: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def for_key(self, key: str) -> Callable[[str], Mapping[str, Any]]:
        """The pipeline for one request's image: the kept output when ``key`` was prepared before, else a read."""

        def preprocess(path: str) -> Mapping[str, Any]:
            with self._lock:
                found = self._items.get(key)
                if found is not None:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return found
                self.misses += 1
            prepared = self.preprocess(path)  # outside the lock: other requests' images are read meanwhile
            if self.capacity:
                with self._lock:
                    self._items[key] = prepared
                    self._items.move_to_end(key)
                    while len(self._items) > self.capacity:
                        self._items.popitem(last=False)
            return prepared

        return preprocess

    def stats(self) -> dict[str, int]:
        """``{"images", "capacity", "hits", "misses"}`` for ``/health``."""
        with self._lock:
            return {"images": len(self._items), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}
