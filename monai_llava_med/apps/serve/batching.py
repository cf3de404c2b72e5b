# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Dynamic batching: concurrent requests answered by shared ``generate`` calls, each streamed on its own.

A :class:`DynamicBatcher` owns one worker thread. Requests (already prepared by the product's
:class:`~monai_llava_med.engines.PrepareVqaItem`) wait in a bounded queue; the worker takes the first and, while
others are queued or in the server (:meth:`DynamicBatcher.in_flight`: still being received, read and prepared, or
having their answers sent, whose clients often come straight back), waits up to ``batch_wait_ms`` for the next of
them, the wait starting again at each arrival (so at most ``(max_batch - 1) * batch_wait_ms`` in all; a lone request
waits for nothing), groups those with the same sampling settings and answers each group with
:func:`~monai_llava_med.engines.streaming.stream_generate` (one ``generate`` through ``collate_vqa`` ->
``prepare_vqa_batch`` -> :class:`~monai_llava_med.engines.LlavaMedInferer`, every row streamed and ended on its own
by a :class:`~monai_llava_med.engines.streaming.RowTracker`; the terminal chat uses the same function).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence

from ...engines.predictor import LlavaMedPredictor
from ...engines.streaming import Completion, GenerationRequest, RowTracker, Sink, stream_generate

__all__ = ["GenerationRequest", "Completion", "RowTracker", "Sink", "DynamicBatcher", "QueueFull"]


class QueueFull(Exception):
    """The request queue is full: the server is overloaded (answered 503)."""


class DynamicBatcher:
    """A worker thread answering queued requests in shared ``generate`` calls.

    Args:
        predictor: the loaded predictor (its model, tokenizer and model name are used).
        queue_size: most waiting requests; :meth:`submit` raises :class:`QueueFull` beyond.
        max_batch: most requests per ``generate``.
        batch_wait_ms: how long to wait for the next request while others are in the server, from the first
            request's arrival and again from each later one's.
    """

    def __init__(
        self, predictor: LlavaMedPredictor, queue_size: int = 64, max_batch: int = 8, batch_wait_ms: float = 5.0
    ) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.queue: queue.Queue[GenerationRequest] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.generate_calls = 0
        self.answered = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def start(self) -> DynamicBatcher:
        """Start the worker thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="llava-med-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current batch."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """A request in the server for the block: from the moment it is received (before its body is read) until
        its answer is sent. The batcher waits (up to ``batch_wait_ms``) while other requests are in the server:
        being received, read and prepared, queued, or having their answers sent (their clients often come straight
        back with their next question). The server marks every chat request so; one submitted without the mark is
        answered without waiting for others."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; raises :class:`QueueFull` when the queue is full."""
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            raise QueueFull from None

    def stats(self) -> dict[str, int]:
        """Queue length and bound, ``generate`` calls and answers so far."""
        return {"queued": self.queue.qsize(), "queue_size": self.queue.maxsize, "generate_calls": self.generate_calls,
                "answered": self.answered, "max_batch": self.max_batch}

    def _take(self) -> list[GenerationRequest]:
        try:
            first = self.queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.perf_counter() + self.batch_wait_s
        while len(batch) < self.max_batch:
            if self.queue.empty() and self._in_flight <= len(batch):
                break  # no other request in the server: waiting would only add latency
            left = deadline - time.perf_counter()
            try:
                batch.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
            deadline = time.perf_counter() + self.batch_wait_s  # each arrival restarts the wait for the next
        return [r for r in batch if not r.cancelled.is_set()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            groups: dict[tuple, list[GenerationRequest]] = {}
            for req in self._take():
                groups.setdefault(req.group_key, []).append(req)
            for group in groups.values():
                self.run_group(group)

    def run_group(self, group: Sequence[GenerationRequest]) -> None:
        """Answer requests of equal sampling settings with one ``generate``; every sink gets its end."""
        stream_generate(self.predictor, group, on_generated=self._count)

    def _count(self, n: int) -> None:
        with self._lock:
            self.generate_calls += 1
            self.answered += n
