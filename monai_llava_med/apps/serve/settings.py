# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Settings of the OpenAI-compatible server: network exposure, limits, batching.

Every default is the safe one: loopback only, no CORS, no ``file://`` images (until ``allowed_root`` is set),
bounded bodies, images, answers and queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServeSettings", "TRUST_KEYS", "EXTENSION_FIELD"]

#: The per-answer trust fields of the predictor's result passed through to each choice (those present).
TRUST_KEYS = ("confidence", "image_reliance", "abstained", "reason", "gate_distance")
#: Name of the documented extension field of each choice (``choices[i].llava_med``).
EXTENSION_FIELD = "llava_med"


@dataclass
class ServeSettings:
    """What the server accepts and how it batches.

    Args:
        host: interface to bind (``127.0.0.1``: this machine only).
        port: TCP port.
        api_key: when set, ``/v1/*`` requests need ``Authorization: Bearer <api_key>``.
        allowed_root: folder whose DICOM/NIfTI files and series folders ``file://`` URLs may name; ``None``
            refuses every ``file://`` URL.
        cors_origins: origins allowed by CORS (empty: no CORS headers at all).
        max_body_bytes: largest request body (the JSON, base64 images included).
        max_image_bytes: largest image: a decoded ``data:`` URL, or a ``file://`` file or folder (sum of its files).
        max_folder_files: most files in a ``file://`` series folder.
        max_messages: most messages in one request.
        max_tokens_limit: largest ``max_tokens`` a request may ask for.
        default_max_tokens: ``max_tokens`` when a request gives none.
        max_stop: most ``stop`` strings.
        queue_size: requests waiting for the model beyond which the server answers 503.
        max_batch: most requests in one ``generate``.
        batch_wait_ms: how long the batcher waits for the next request while others are on their way, counted
            from the first request's arrival and again from each later one's (a request alone is answered at once).
        request_timeout_s: a request still unanswered after this many seconds gets a 504.
        image_cache: prepared images kept between requests (least recently used out; 0: none), so an image a
            conversation resends with every turn is read once (:mod:`.image_cache`).
        model_dir: the model folder (reported by ``/health``; the model itself is passed to ``create_app``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    allowed_root: Path | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 24 * 1024 * 1024
    max_image_bytes: int = 16 * 1024 * 1024
    max_folder_files: int = 2048
    max_messages: int = 64
    max_tokens_limit: int = 512
    default_max_tokens: int = 128
    max_stop: int = 4
    queue_size: int = 64
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    request_timeout_s: float = 300.0
    image_cache: int = 8
    model_dir: str | None = None

    def __post_init__(self) -> None:
        if self.allowed_root is not None:
            self.allowed_root = Path(self.allowed_root).expanduser().resolve()
        for name in ("max_body_bytes", "max_image_bytes", "max_messages", "max_tokens_limit", "queue_size", "max_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1")
        if int(self.image_cache) < 0:
            raise ValueError("image_cache must be 0 (off) or more")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError("default_max_tokens must lie between 1 and max_tokens_limit")
