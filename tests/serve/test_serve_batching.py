# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The batcher in process: rows of one ``generate`` end on their own; a full queue is a 503, a stall a 504."""

from __future__ import annotations

import pytest

from .conftest import SAMPLE

pytest.importorskip("fastapi")


def _request(predictor, question: str, sink, **kw):
    from monai_llava_med.apps.serve.batching import GenerationRequest

    prepared = predictor.prepare({"image": str(SAMPLE / "ct_slice.dcm"), "question": question})
    return GenerationRequest(prepared, sink, **kw)


def _ends(count: int):
    """A sink collecting the ends of ``count`` requests, and the event set once all have ended."""
    import threading

    ends: list = []
    all_ended = threading.Event()

    def sink(kind, value):
        if kind in ("done", "error"):
            ends.append(value)
            if len(ends) == count:
                all_ended.set()

    return sink, ends, all_ended


def test_one_generate_serves_rows_with_their_own_limits(predictor):
    from monai_llava_med.apps.serve.batching import DynamicBatcher

    events: dict[int, list] = {0: [], 1: [], 2: []}
    reqs = [
        _request(predictor, "Describe the image.", lambda k, v: events[0].append((k, v)), max_tokens=6),
        _request(predictor, "Describe the image.", lambda k, v: events[1].append((k, v)), max_tokens=2),
        _request(predictor, "Is there a lesion in this image?", lambda k, v: events[2].append((k, v)), max_tokens=6),
    ]
    batcher = DynamicBatcher(predictor, queue_size=4, max_batch=8)
    batcher.run_group(reqs)
    assert batcher.generate_calls == 1
    done = [next(v for k, v in events[i] if k == "done") for i in range(3)]
    assert [d.batch_size for d in done] == [3, 3, 3]
    assert done[1].completion_tokens == 2 and done[1].finish_reason == "length"
    assert done[0].completion_tokens <= 6
    for i in range(3):  # the pieces add up to the answer; nothing follows the end
        assert "".join(v for k, v in events[i] if k == "delta") == done[i].text
        assert events[i][-1][0] == "done"
    alone = predictor.ask(SAMPLE / "ct_slice.dcm", "Is there a lesion in this image?", max_new_tokens=6)
    assert done[2].text == alone["answer"]  # batching with longer prompts changes no answer


def test_queue_full_is_503_and_a_stall_is_504(predictor):
    from fastapi.testclient import TestClient

    from monai_llava_med.apps.serve import ServeSettings, create_app

    app = create_app(predictor, ServeSettings(queue_size=2, request_timeout_s=0.5))
    client = TestClient(app)  # no lifespan: the batcher never starts, so the queue only fills
    body = {"messages": [{"role": "user", "content": "Is there a lesion?"}]}
    for _ in range(2):
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"] == "1"
    assert client.get("/health").json()["batcher"]["queued"] == 2


def test_a_failing_generate_answers_every_waiting_request(predictor):
    from monai_llava_med.apps.serve.batching import DynamicBatcher

    got: list = []
    req = _request(predictor, "Is there a lesion?", lambda k, v: got.append((k, v)))
    req.prepared = dict(req.prepared, pixel_values=req.prepared["pixel_values"][:, :1])  # wrong channel count
    batcher = DynamicBatcher(predictor)
    batcher.run_group([req])
    assert got and got[-1][0] == "error"
    ok: list = []
    batcher.run_group([_request(predictor, "Is there a lesion?", lambda k, v: ok.append((k, v)))])
    assert ok[-1][0] == "done"


def test_cancelled_request_stops_its_row():
    from monai_llava_med.apps.serve.batching import GenerationRequest, RowTracker

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(97 + i) for i in ids)

    import torch

    pieces: list[str] = []
    cancel = GenerationRequest({}, lambda k, v: pieces.append(v), max_tokens=10, stop=("cd",))
    other = GenerationRequest({}, lambda k, v: None, max_tokens=10)
    tracker = RowTracker(Tok(), [cancel, other], eos_token_ids=[25])
    ids = torch.empty(2, 0, dtype=torch.long)
    for step, token in enumerate([0, 1, 2, 3]):
        ids = torch.cat([ids, torch.tensor([[token], [token]])], 1)
        done = tracker(ids)
    assert done.tolist() == [True, False]
    assert tracker.rows[0].text == "ab" and "".join(pieces) == "ab"  # 'c' was held back: it began the stop string
    other.cancelled.set()
    assert tracker(torch.cat([ids, torch.tensor([[4], [4]])], 1)).tolist() == [True, True]
    assert tracker.rows[1].reason == "cancelled"


def test_batcher_waits_only_for_requests_on_their_way(predictor):
    import threading
    import time

    from monai_llava_med.apps.serve.batching import DynamicBatcher

    batcher = DynamicBatcher(predictor, max_batch=8, batch_wait_ms=5000).start()
    try:
        done = threading.Event()
        got: list = []

        def sink(kind, value):
            got.append((kind, value))
            if kind in ("done", "error"):
                done.set()

        start = time.perf_counter()
        batcher.submit(_request(predictor, "Is there a lesion?", sink, max_tokens=2))
        assert done.wait(30)
        alone_s = time.perf_counter() - start
        assert alone_s < 2.5, alone_s  # nobody else on the way: no 5 s window waited out
        assert got[-1][0] == "done" and got[-1][1].batch_size == 1

        collect, ends, both = _ends(2)
        with batcher.in_flight():  # the first request, in the server until answered
            batcher.submit(_request(predictor, "Is there a lesion?", collect, max_tokens=2))
            with batcher.in_flight():  # a second request is being received: the first waits for it
                time.sleep(0.3)
                batcher.submit(_request(predictor, "Is the lesion bright?", collect, max_tokens=2))
                assert both.wait(30)
        assert [e.batch_size for e in ends] == [2, 2]
    finally:
        batcher.stop()


def test_each_arrival_restarts_the_wait(predictor):
    """Requests arriving one after another, each within ``batch_wait_ms`` of the one before but the last well after
    ``batch_wait_ms`` from the first, share one ``generate``: the wait starts again at every arrival."""
    import time

    from monai_llava_med.apps.serve.batching import DynamicBatcher

    batcher = DynamicBatcher(predictor, max_batch=8, batch_wait_ms=1500).start()
    try:
        collect, ends, all_three = _ends(3)
        with batcher.in_flight(), batcher.in_flight(), batcher.in_flight():  # three requests on their way
            start = time.perf_counter()
            batcher.submit(_request(predictor, "Is there a lesion?", collect, max_tokens=2))
            time.sleep(0.9)
            batcher.submit(_request(predictor, "Is the lesion bright?", collect, max_tokens=2))
            time.sleep(0.9)  # 1.8 s after the first: past its window, within the second's
            batcher.submit(_request(predictor, "Is there a lesion on the left side?", collect, max_tokens=2))
            assert all_three.wait(30)
        assert time.perf_counter() - start >= 1.8
        assert [e.batch_size for e in ends] == [3, 3, 3]
        assert batcher.generate_calls == 1
    finally:
        batcher.stop()


def test_batcher_waits_while_answers_are_still_being_sent(predictor):
    """A request alone in the server is answered at once; one queued while another request's answer is still being
    sent waits (up to ``batch_wait_ms``) for that client's next question."""
    import time

    from monai_llava_med.apps.serve.batching import DynamicBatcher

    batcher = DynamicBatcher(predictor, max_batch=8, batch_wait_ms=3000).start()
    try:
        collect, ends, finished = _ends(1)
        start = time.perf_counter()
        with batcher.in_flight():  # alone in the server: nobody to wait for
            batcher.submit(_request(predictor, "Is there a lesion?", collect, max_tokens=2))
            assert finished.wait(30)
        assert time.perf_counter() - start < 2.5 and ends[0].batch_size == 1

        collect_two, ends, both = _ends(2)
        sending = batcher.in_flight()
        sending.__enter__()  # a request whose answer is still being sent
        with batcher.in_flight():
            batcher.submit(_request(predictor, "Is there a lesion?", collect_two, max_tokens=2))
            time.sleep(0.3)
            with batcher.in_flight():  # its client comes back with the next question
                sending.__exit__(None, None, None)
                batcher.submit(_request(predictor, "Is the lesion bright?", collect_two, max_tokens=2))
                assert both.wait(30)
        assert [e.batch_size for e in ends] == [2, 2]
    finally:
        batcher.stop()


def test_a_request_still_being_received_is_waited_for(predictor):
    """A chat request counts as on its way from the moment it reaches the app, before its body is read: a request
    queued meanwhile waits (up to ``batch_wait_ms``) and the two share one ``generate``."""
    import asyncio
    import json

    from monai_llava_med.apps.serve.app import create_app
    from monai_llava_med.apps.serve.settings import EXTENSION_FIELD, ServeSettings

    guard = create_app(predictor, ServeSettings(batch_wait_ms=3000))
    batcher = guard.app.state.service.batcher.start()

    def body(question: str) -> bytes:
        return json.dumps({"messages": [{"role": "user", "content": question}], "max_tokens": 2}).encode()

    async def call(payload: bytes, body_sent: asyncio.Event | None) -> dict:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]}
        sent, out = False, []

        async def receive() -> dict:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)  # no disconnect while the answer is written
            if body_sent is not None:
                await body_sent.wait()  # the body is still on the wire
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body":
                out.append(message.get("body", b""))

        await guard(scope, receive, send)
        return json.loads(b"".join(out))

    async def scenario() -> tuple[dict, dict]:
        late = asyncio.Event()
        slow = asyncio.ensure_future(call(body("Is the lesion bright?"), late))
        await asyncio.sleep(0.2)  # the slow request has reached the app; its body has not arrived
        fast = asyncio.ensure_future(call(body("Is there a lesion?"), None))
        await asyncio.sleep(0.5)  # the fast one is queued and the batcher waits for the slow one
        late.set()
        return await asyncio.wait_for(asyncio.gather(fast, slow), 60)

    try:
        fast, slow = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert fast["choices"][0][EXTENSION_FIELD]["batch_size"] == 2, fast
    assert slow["choices"][0][EXTENSION_FIELD]["batch_size"] == 2, slow
