# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The server through the official ``openai`` client: plain, streamed, multi-turn, concurrent; answers equal the
predictor's own answers for the same image and question."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import SAMPLE

openai = pytest.importorskip("openai")

QUESTIONS = ["Is there a lesion in this image?", "Is this a CT image?", "Is there a lesion on the left side?",
             "Is there a lesion on the right side?"]


def _client(served):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.key, max_retries=0, timeout=60)


def _data_url(path) -> str:
    return "data:application/dicom;base64," + base64.b64encode(path.read_bytes()).decode()


def _ask(question: str, url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}]


def test_models_and_plain_answer_match_the_predictor(served, predictor):
    client = _client(served)
    assert [m.id for m in client.models.list().data] == [predictor.model_name]
    url = _data_url(SAMPLE / "ct_slice.dcm")
    for question in QUESTIONS[:2]:
        out = client.chat.completions.create(model=predictor.model_name, messages=_ask(question, url))
        ref = predictor.ask(SAMPLE / "ct_slice.dcm", question)
        choice = out.choices[0]
        assert choice.message.content == ref["answer"]
        assert choice.finish_reason == "stop"
        ext = choice.model_extra["llava_med"]
        assert ext["modality"] == "CT" and ext["views"] == ref["views"] and ext["source"] == "upload"
        for key in ("confidence", "image_reliance", "abstained", "reason"):  # passed through when the predictor has them
            assert (key in ext) == (key in ref)
        prompt = predictor.prepare({"image": str(SAMPLE / "ct_slice.dcm"), "question": question})["input_ids"]
        assert out.usage.prompt_tokens == prompt.numel()
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
        assert out.usage.completion_tokens >= 1


def test_streaming_pieces_add_up_to_the_plain_answer(served):
    client = _client(served)
    url = f"file://{served.root}/ct_series"
    messages = _ask("Is there a lesion in this image?", url)
    plain = client.chat.completions.create(model="llava-med-phantom-demo", messages=messages, max_tokens=12)
    stream = client.chat.completions.create(model="llava-med-phantom-demo", messages=messages, max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces and "".join(pieces) == plain.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == plain.choices[0].finish_reason
    assert finals[0].choices[0].model_extra["llava_med"]["source"] == "ct_series"
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_max_tokens_stop_and_multi_turn(served, predictor):
    client = _client(served)
    name = predictor.model_name
    url = _data_url(SAMPLE / "mr_slice.dcm")
    one = client.chat.completions.create(model=name, messages=_ask("Describe the image.", url), max_tokens=1)
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 1
    full = client.chat.completions.create(model=name, messages=_ask("Is there a lesion in this image?", url))
    answer = full.choices[0].message.content
    assert len(answer) >= 2
    cut = client.chat.completions.create(model=name, messages=_ask("Is there a lesion in this image?", url),
                                         stop=[answer[1:]])
    assert cut.choices[0].message.content == answer[:1] and cut.choices[0].finish_reason == "stop"
    turns = _ask("Is there a lesion in this image?", url) + [
        {"role": "assistant", "content": answer}, {"role": "user", "content": "Is this a CT image?"}]
    second = client.chat.completions.create(model=name, messages=turns)
    ref = predictor.ask(SAMPLE / "mr_slice.dcm", [("user", "Is there a lesion in this image?"), ("assistant", answer),
                                                  ("user", "Is this a CT image?")])
    assert second.choices[0].message.content == ref["answer"]
    assert second.usage.prompt_tokens > full.usage.prompt_tokens


def test_concurrent_requests_share_generate_calls(served, predictor):
    import httpx2 as httpx

    client = _client(served)
    url = f"file://{served.root}/ct_slice.dcm"
    jobs = [QUESTIONS[i % len(QUESTIONS)] for i in range(8)]
    before = httpx.get(f"{served.url}/health").json()["batcher"]

    def one(question: str) -> str:
        out = client.chat.completions.create(model=predictor.model_name, messages=_ask(question, url))
        return out.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, jobs))
    refs = {q: predictor.ask(SAMPLE / "ct_slice.dcm", q)["answer"] for q in set(jobs)}
    assert answers == [refs[q] for q in jobs]
    after = httpx.get(f"{served.url}/health").json()["batcher"]
    assert after["answered"] - before["answered"] == 8
    assert after["generate_calls"] - before["generate_calls"] < 8  # some requests were batched together


def test_typed_errors_reach_the_client(served):
    client = _client(served)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(model="llava-med-phantom-demo",
                                       messages=_ask("Is there a lesion?", f"file://{served.outside}/secret.dcm"))
    assert err.value.body["code"] == "path_not_allowed"
