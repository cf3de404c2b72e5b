# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""An ASGI wrapper in front of the server: the API key and the body size limit, before any route runs.

* ``/v1/*`` needs ``Authorization: Bearer <key>`` when a key is set (compared in constant time; 401 otherwise).
  ``/health`` and the web page stay open: they answer nothing about images (the page asks for the key itself).
* a body larger than the limit is refused by its ``Content-Length`` (413) without being read; a body sent without
  one (chunked) is read up to the limit and refused as soon as it goes beyond.

Errors are written in OpenAI's schema. Plain ASGI: no Starlette needed.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .api_errors import ApiError

__all__ = ["ServeGuard", "send_api_error"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_api_error(send: Send, err: ApiError, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer an :class:`ApiError` directly on an ASGI ``send``."""
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


class ServeGuard:
    """Check the API key and the body size of HTTP requests, then pass them to ``app``.

    Args:
        app: the wrapped ASGI app.
        api_key: the key ``/v1/*`` requests must present, or ``None``.
        max_body_bytes: largest request body.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key or b"")

    def _too_large(self) -> ApiError:
        return ApiError(413, f"request body over the limit of {self.max_body_bytes} bytes", None, "body_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.api_key is not None and path.startswith("/v1/") and scope.get("method") != "OPTIONS":
            if not self._authorised(headers):
                err = ApiError(401, "a valid API key is needed: Authorization: Bearer <key>", None, "invalid_api_key")
                await send_api_error(send, err, [(b"www-authenticate", b"Bearer")])
                return
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await send_api_error(send, ApiError(400, "invalid Content-Length header", None, "invalid_request"))
                return
            if int(length) > self.max_body_bytes:
                await send_api_error(send, self._too_large())
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            total += len(message.get("body", b""))
            if total > self.max_body_bytes:
                await send_api_error(send, self._too_large())
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return replayed
            return await receive()

        await self.app(scope, replay, send)
