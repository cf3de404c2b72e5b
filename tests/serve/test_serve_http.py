# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The server with curl and raw HTTP: SSE framing, the API key, allowed-root checks, limits, error schema, logs."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest

from .conftest import MAX_BODY, PHI

MODEL = "llava-med-phantom-demo"
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl(served, path: str, body: dict | bytes | None = None, key: str | None = "default", *args: str):
    """``curl -s`` to the server; returns ``(status, body text)``."""
    cmd = ["curl", "-s", "-N", "--max-time", "60", "-w", "\n%{http_code}", *args]
    if key is not None:
        cmd += ["-H", f"Authorization: Bearer {served.key if key == 'default' else key}"]
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    out = subprocess.run([*cmd, f"{served.url}{path}"], input=data, capture_output=True, timeout=90, check=True)
    text, _, status = out.stdout.decode().rpartition("\n")
    return int(status), text


def chat(question: str, url: str | None = None, **extra) -> dict:
    content: list[dict] = [{"type": "text", "text": question}]
    if url is not None:
        content.append({"type": "image_url", "image_url": {"url": url}})
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def assert_openai_error(text: str, code: str | None = None) -> dict:
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in text and "File \"" not in text
    if code is not None:
        assert err["code"] == code, err
    return err


def test_curl_plain_and_streamed(served):
    status, text = curl(served, "/v1/chat/completions", chat("Is this a CT image?", f"file://{served.root}/ct_slice.dcm"))
    assert status == 200
    plain = json.loads(text)["choices"][0]["message"]["content"]
    status, text = curl(served, "/v1/chat/completions",
                        chat("Is this a CT image?", f"file://{served.root}/ct_slice.dcm", stream=True))
    assert status == 200
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and all(line.startswith("data: ") for line in text.strip().split("\n\n"))
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == plain
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "llava_med" in chunks[-1]["choices"][0]


def test_health_models_key_and_cors(served):
    status, text = curl(served, "/health", key=None)
    assert status == 200 and json.loads(text)["model"] == MODEL
    status, text = curl(served, "/v1/models", key=None)
    assert status == 401 and assert_openai_error(text, "invalid_api_key")["type"] == "authentication_error"
    status, text = curl(served, "/v1/models", key="not-the-key")
    assert status == 401
    status, text = curl(served, "/v1/models")
    assert status == 200 and json.loads(text)["data"][0]["id"] == MODEL
    out = subprocess.run(["curl", "-s", "-i", "-H", "Origin: http://evil.example", "-H",
                          f"Authorization: Bearer {served.key}", f"{served.url}/v1/models"],
                         capture_output=True, timeout=30, check=True)
    assert b"access-control-allow-origin" not in out.stdout.lower()  # CORS is off by default


@pytest.mark.parametrize(
    "url, status, code",
    [
        ("file://{root}/../outside/secret.dcm", 403, "path_not_allowed"),  # traversal
        ("file://{outside}/secret.dcm", 403, "path_not_allowed"),  # absolute path outside the root
        ("file:///etc/passwd", 403, "path_not_allowed"),
        ("file://{root}/leak.dcm", 403, "path_not_allowed"),  # a link inside the root pointing out
        ("file://otherhost/{root}/ct_slice.dcm", 403, "path_not_allowed"),
        ("file://{root}/missing.dcm", 404, "image_not_found"),
        ("file://{root}/../root/ct_slice.dcm", 403, "path_not_allowed"),  # '..' even when it lands inside
        ("http://127.0.0.1:1/x.png", 400, "invalid_image_url"),
        ("data:text/plain;base64," + base64.b64encode(b"hello, not an image").decode(), 415, "unsupported_image"),
        ("data:image/png;base64,@@@notbase64", 400, "invalid_image_url"),
        ("data:image/png," + "x" * 10, 400, "invalid_image_url"),
        ("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode(), 422, "image_unreadable"),
    ],
)
def test_image_urls_refused(served, url, status, code):
    body = chat("Is there a lesion?", url.format(root=served.root, outside=served.outside))
    got, text = curl(served, "/v1/chat/completions", body)
    assert got == status, text
    err = assert_openai_error(text, code)
    assert err["param"] == "messages.0.content.1"
    assert str(served.outside) not in text or "outside" in url


def test_request_errors_in_openai_schema(served):
    cases = [
        (b"{not json", 400, None),
        (chat("hi", n=2), 400, "unsupported_parameter"),
        (chat("hi", max_tokens=100000), 400, "invalid_value"),
        (chat("hi", temperature=9), 400, "invalid_request"),
        ({"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
        ({"model": MODEL, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "invalid_messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}, 400, "invalid_prompt"),
    ]
    for body, status, code in cases:
        got, text = curl(served, "/v1/chat/completions", body)
        assert got == status, (body if isinstance(body, bytes) else body.get("messages"), text)
        assert_openai_error(text, code)
    got, text = curl(served, "/v1/nothing-here")
    assert got == 404 and assert_openai_error(text)
    two = chat("Is there a lesion?", f"file://{served.root}/ct_slice.dcm")
    two["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": f"file://{served.root}/mr_slice.dcm"}})
    got, text = curl(served, "/v1/chat/completions", two)
    assert got == 400 and assert_openai_error(text, "too_many_images")


def test_body_limit(served):
    big = chat("Is there a lesion?", "data:image/png;base64," + "A" * (MAX_BODY + 10))
    got, text = curl(served, "/v1/chat/completions", big)
    assert got == 413 and assert_openai_error(text, "body_too_large")
    got, text = curl(served, "/v1/chat/completions", big, "default", "-H", "Transfer-Encoding: chunked")
    assert got == 413 and assert_openai_error(text, "body_too_large")


def test_no_patient_identifiers_in_responses_or_logs(served):
    question = "Is there a lesion in this planted image?"
    for stream in (False, True):
        got, text = curl(served, "/v1/chat/completions", chat(question, f"file://{served.root}/phi.dcm", stream=stream))
        assert got == 200
        assert not any(v in text for v in PHI.values())
    got, text = curl(served, "/v1/views", {"image_url": f"file://{served.root}/phi.dcm"})
    assert got == 200 and json.loads(text)["views"][0]["png"].startswith("data:image/png;base64,")
    log = served.log_text()
    assert "status=200" in log  # the server does log each request...
    for secret in (*PHI.values(), question, "phi.dcm", str(served.root)):
        assert secret not in log  # ...but never identifiers, questions or paths


def test_a_resent_image_is_read_once_and_a_changed_file_again(served):
    import os
    import time

    def cache() -> dict:
        return json.loads(curl(served, "/health", key=None)[1])["image_cache"]

    image = served.root / "cached_slice.dcm"
    shutil.copy(served.root / "ct_slice.dcm", image)
    question = chat("Is there a lesion in this image?", f"file://{image}", max_tokens=4, temperature=0)
    before = cache()
    answers = []
    for _ in range(2):  # a conversation sends its image again with every turn
        status, text = curl(served, "/v1/chat/completions", question)
        assert status == 200, text
        answers.append(json.loads(text)["choices"][0]["message"]["content"])
    after = cache()
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 1)
    assert answers[0] == answers[1]
    stamp = time.time() + 5
    os.utime(image, (stamp, stamp))  # the file changed: read again
    assert curl(served, "/v1/chat/completions", question)[0] == 200
    assert cache()["misses"] == after["misses"] + 1
    payload = base64.b64encode((served.root / "mr_slice.dcm").read_bytes()).decode()
    upload = chat("Is there a lesion in this image?", f"data:application/dicom;base64,{payload}", max_tokens=4)
    for _ in range(2):
        assert curl(served, "/v1/chat/completions", upload)[0] == 200
    final = cache()
    assert final["hits"] == after["hits"] + 1 and final["images"] <= final["capacity"]


@pytest.mark.parametrize("flag, value, message", [("--image_cache", "-1", "image_cache must be 0"),
                                                  ("--max_batch", "0", "max_batch must be at least 1")])
def test_a_limit_out_of_range_is_one_line_not_a_traceback(flag, value, message):
    import os
    import sys

    from .conftest import MODEL_DIR, REPO

    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "monai_llava_med.apps.serve", "--model_dir", str(MODEL_DIR), flag,
                          value], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and message in out.stderr.splitlines()[-1]
    assert "Traceback" not in out.stderr + out.stdout
