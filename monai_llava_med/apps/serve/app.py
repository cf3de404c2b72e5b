# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The FastAPI app: OpenAI chat completions, models, health, the model's views and the web page (:mod:`.web`).

:func:`create_app` takes a loaded :class:`~monai_llava_med.engines.LlavaMedPredictor` and
:class:`~.settings.ServeSettings`. A request is checked (:mod:`.schema`), its image resolved (:mod:`.images`) and
prepared by the predictor's own :class:`~monai_llava_med.engines.PrepareVqaItem` in a worker thread (so a bad image
is a 4xx before anything is queued), then queued for the :class:`~.batching.DynamicBatcher`. Logs carry request
ids, statuses, token counts and timings only: never a question, an answer, a path or a header value.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...engines.predictor import LlavaMedPredictor
from ...errors import LlavaMedInputError, as_input_error
from ..monailabel.redaction import install_reader_redaction, safe_modality
from .api_errors import ApiError, error_body, from_input_error
from .batching import Completion, DynamicBatcher, GenerationRequest, QueueFull
from .guard import ServeGuard
from .image_cache import PreparedImages
from .images import ImageSource
from .schema import ChatCompletionRequest, Conversation, ViewsRequest, to_conversation
from .settings import EXTENSION_FIELD, TRUST_KEYS, ServeSettings
from .views import render_views
from .web import add_page_routes

__all__ = ["create_app"]

logger = logging.getLogger("monai_llava_med.serve")
CHAT_PATH = "/v1/chat/completions"


def _api_error_response(err: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 503 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class _Service:
    """What the routes share: the predictor, the batcher, the limits."""

    def __init__(self, predictor: LlavaMedPredictor, settings: ServeSettings) -> None:
        self.predictor = predictor
        self.settings = settings
        self.batcher = DynamicBatcher(predictor, settings.queue_size, settings.max_batch, settings.batch_wait_ms)
        self.images = PreparedImages(predictor.prepare.preprocess, settings.image_cache)
        self.created = int(time.time())

    def prepare(self, conv: Conversation) -> tuple[dict[str, Any], str | None]:
        """Run the product's item preparation (pixels and prompt) on a conversation; raises :class:`ApiError`."""
        s = self.settings
        if conv.image_url is None:
            return self._prepare_item(None, None, conv.question, None), None
        src = ImageSource(conv.image_url, s.allowed_root, s.max_image_bytes, s.max_folder_files, conv.image_param)
        with src as path:
            return self._prepare_item(path, src.fingerprint, conv.question, conv.image_param), src.display_name

    def _prepare_item(self, path: Path | None, fingerprint: str | None, question: Any,
                      param: str | None) -> dict[str, Any]:
        try:
            prepare = self.predictor.preparer(None if fingerprint is None else self.images.for_key(fingerprint))
            return prepare({"id": "request", "image": str(path) if path else None, "question": question})
        except LlavaMedInputError as err:
            raise from_input_error(err, param) from None

    def views(self, url: str) -> dict[str, Any]:
        """The model's views of an image as PNG data URLs (the same pipeline as the chat)."""
        s = self.settings
        src = ImageSource(url, s.allowed_root, s.max_image_bytes, s.max_folder_files, "image_url")
        with src as path:
            try:
                pre = self.images.for_key(src.fingerprint)(str(path))
            except Exception as err:  # noqa: BLE001 - any reader failure is a typed 4xx, its text withheld
                raise from_input_error(as_input_error(err, "image"), "image_url") from None
            return {"views": render_views(pre, self.predictor.model.config),
                    "modality": safe_modality(pre.get("modality")), "source": src.display_name}


class _InFlight:
    """ASGI middleware: a chat request is in the server (:meth:`DynamicBatcher.in_flight`) from the moment it
    reaches the app, before its body is read and checked, until its answer is sent; a batch waits (up to
    ``batch_wait_ms``) for such requests."""

    def __init__(self, app: Any, batcher: DynamicBatcher) -> None:
        self.app, self.batcher = app, batcher

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        with self.batcher.in_flight():
            await self.app(scope, receive, send)


def _extension(done: Completion, source: str | None) -> dict[str, Any]:
    result = done.result
    ext: dict[str, Any] = {k: result[k] for k in TRUST_KEYS if k in result}
    ext.update(
        views=result.get("views", []),
        modality=safe_modality(result.get("modality")) if source else None,
        source=source,
        batch_size=done.batch_size,
    )
    return ext


def _usage(done: Completion) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _generation_error(err: Any) -> ApiError:
    if isinstance(err, MemoryError):
        return ApiError(503, "the server ran out of memory answering this request", None, "out_of_memory")
    return ApiError(500, "the answer could not be generated", None, "generation_failed")


def create_app(predictor: LlavaMedPredictor, settings: ServeSettings | None = None) -> Any:
    """Build the server's ASGI app.

    Args:
        predictor: the loaded predictor.
        settings: limits, key, allowed root, CORS origins, batching.

    Returns:
        the ASGI app (a :class:`~.guard.ServeGuard` around the FastAPI app, which is its ``.app``).
    """
    settings = settings or ServeSettings()
    service = _Service(predictor, settings)
    install_reader_redaction()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        yield
        service.batcher.stop()

    api = FastAPI(title="LLaVA-Med (monai-llava-med)", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    api.state.service = service
    api.add_middleware(_InFlight, batcher=service.batcher)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        api.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @api.exception_handler(ApiError)
    async def _on_api_error(_: Request, err: ApiError) -> JSONResponse:
        return _api_error_response(err)

    @api.exception_handler(RequestValidationError)
    async def _on_invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = (err.errors() or [{}])[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request"))
        return _api_error_response(ApiError(400, f"{param}: {msg}" if param else msg, param, "invalid_request"))

    @api.exception_handler(StarletteHTTPException)
    async def _on_http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such route", 405: "method not allowed"}.get(err.status_code, "request refused")
        return _api_error_response(ApiError(err.status_code, message, None, None))

    @api.exception_handler(Exception)
    async def _on_unexpected(_: Request, err: Exception) -> JSONResponse:
        logger.error("unexpected %s while answering a request", type(err).__name__)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    @api.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.model_name, "batcher": service.batcher.stats(),
                "image_cache": service.images.stats()}

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": predictor.model_name, "object": "model", "created": service.created, "owned_by": "monai-llava-med"}]}

    @api.post("/v1/views")
    async def views(body: ViewsRequest) -> dict[str, Any]:
        return await run_in_threadpool(service.views, body.url)

    @api.post(CHAT_PATH, response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        start = time.perf_counter()
        if body.model is not None and body.model != predictor.model_name:
            raise ApiError(404, f"model {body.model[:64]!r} not found; this server offers {predictor.model_name!r}",
                           "model", "model_not_found")
        conv = to_conversation(body, settings)
        if service.batcher.queue.full():
            raise _queue_full()
        prepared, source = await run_in_threadpool(service.prepare, conv)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def sink(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        gen = GenerationRequest(prepared, sink, conv.max_tokens, conv.do_sample, conv.temperature, conv.top_p, conv.stop)
        try:
            service.batcher.submit(gen)
        except QueueFull:
            raise _queue_full() from None
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(cid, service, gen, events, source, include_usage, start),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            while True:
                kind, value = await asyncio.wait_for(events.get(), settings.request_timeout_s)
                if kind == "done":
                    break
                if kind == "error":
                    raise _generation_error(value)
        except asyncio.TimeoutError:
            gen.cancelled.set()
            raise _timed_out() from None
        except asyncio.CancelledError:
            gen.cancelled.set()
            raise
        _log(cid, 200, value, start)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": predictor.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": value.text}, "logprobs": None,
                         "finish_reason": _finish(value), EXTENSION_FIELD: _extension(value, source)}],
            "usage": _usage(value),
        })

    add_page_routes(api)
    return ServeGuard(api, settings.api_key, settings.max_body_bytes)


def _queue_full() -> ApiError:
    """The 503 answered when the request queue is full."""
    return ApiError(503, "the server is busy (request queue full); retry shortly", None, "queue_full")


def _timed_out() -> ApiError:
    """The 504 answered when an answer outlasts ``request_timeout_s``."""
    return ApiError(504, "the answer took longer than the server's time limit", None, "timeout")


def _finish(done: Completion) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def _log(cid: str, status: int, done: Completion | None, start: float) -> None:
    if done is None:
        logger.info("%s status=%d latency_s=%.3f", cid, status, time.perf_counter() - start)
    else:
        logger.info("%s status=%d prompt_tokens=%d completion_tokens=%d batch=%d latency_s=%.3f", cid, status,
                    done.prompt_tokens, done.completion_tokens, done.batch_size, time.perf_counter() - start)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _stream(cid: str, service: _Service, gen: GenerationRequest, events: asyncio.Queue, source: str | None,
                  include_usage: bool, start: float) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, one chunk per piece of text, the finish chunk, usage, ``[DONE]``."""
    name, created = service.predictor.model_name, int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, ext: dict[str, Any] | None = None) -> str:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if ext is not None:
            choice[EXTENSION_FIELD] = ext
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                     "choices": [choice]})

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await asyncio.wait_for(events.get(), service.settings.request_timeout_s)
            if kind == "delta":
                yield chunk({"content": value})
            elif kind == "done":
                yield chunk({}, _finish(value), _extension(value, source))
                if include_usage:
                    yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                                "choices": [], "usage": _usage(value)})
                _log(cid, 200, value, start)
                break
            else:
                err = _generation_error(value)
                yield _sse(err.body())
                _log(cid, err.status, None, start)
                break
        finished = True
        yield "data: [DONE]\n\n"
    except asyncio.TimeoutError:
        yield _sse(_timed_out().body())
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            gen.cancelled.set()
