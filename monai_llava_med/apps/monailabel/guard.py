# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""An ASGI wrapper that answers unsafe requests with a 4xx before MONAI Label sees them.

MONAI Label 0.8.5 builds its FastAPI app at import and offers no hook for middleware, so
:func:`install_request_guard` wraps the app's built middleware stack. :class:`RequestGuard`:

* lets through only the routes this app offers (info, infer, datastore, active learning, the API docs);
  training, batch inference, scoring, sessions, model upload/download, logs and the DICOMweb proxy get 404;
* refuses ids that are not :data:`~.request_checks.ID_PATTERN` in the query (``image``, ``id``, ``label``,
  ``tag``, ``session_id``) or in ``/infer/{model}``, and repeated id parameters (400);
* refuses bodies larger than ``max_body_bytes`` by their ``Content-Length`` (413) and bodies without one (411),
  so an oversized upload is never read, let alone written to disk.

Plain ASGI and the standard library: no dependency on Starlette or FastAPI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from .request_checks import RequestError, RequestLimits, validate_id

__all__ = ["ALLOWED_ROUTES", "ID_QUERY_KEYS", "RequestGuard", "install_request_guard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: (methods, path regex) of every route the app serves; anything else is answered 404.
ALLOWED_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = tuple(
    (frozenset(methods.split()), re.compile(path))
    for methods, path in (
        ("GET HEAD", r"/|/docs|/openapi\.json|/favicon\.ico|/static/[A-Za-z0-9._/-]+"),
        ("GET", r"/info/?"),
        ("POST", r"/infer/(?P<model>[^/]+)"),
        ("POST", r"/activelearning/[A-Za-z0-9_-]+"),
        ("GET", r"/datastore/?|/datastore/dataset"),
        ("GET HEAD PUT DELETE", r"/datastore/(image|label)"),
        ("GET PUT", r"/datastore/(image|label)/info"),
    )
)
#: Query parameters that name datastore entries.
ID_QUERY_KEYS = ("image", "id", "label", "tag", "session_id")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestGuard:
    """Wrap an ASGI app: refuse unknown routes, bad ids and oversized or unsized bodies.

    Args:
        app: the wrapped ASGI application (MONAI Label's middleware stack).
        limits: ``max_body_bytes`` comes from :attr:`RequestLimits.max_upload_bytes`.
        models: names accepted in ``/infer/{model}``; ``None`` accepts any valid id.
        prefix: the API prefix the routes are mounted under (MONAI Label's ``MONAI_LABEL_API_STR``).
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: RequestLimits | None = None,
        models: Collection[str] | None = None,
        prefix: str = "",
    ) -> None:
        self.app = app
        self.limits = limits or RequestLimits()
        self.models = None if models is None else frozenset(models)
        self.prefix = prefix.rstrip("/")

    def check(self, method: str, path: str, query: bytes, headers: dict[bytes, bytes]) -> None:
        """Raise :class:`RequestError` (with its HTTP status) when the request must be refused."""
        match = None
        if self.prefix and path.startswith(self.prefix + "/"):
            path = path[len(self.prefix) :]
        for methods, pattern in ALLOWED_ROUTES:
            found = pattern.fullmatch(path)
            if found and method in methods:
                match = found
                break
        if match is None:
            raise RequestError(f"{method} {path[:80]} is not offered by the LLaVA-Med MONAI Label app", None, 404)
        model = match.groupdict().get("model")
        if model is not None:
            validate_id(model, "model")
            if self.models is not None and model not in self.models:
                raise RequestError(f"unknown model {model!r}; this server offers {sorted(self.models)}", None, 404)
        seen: set[str] = set()
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key not in ID_QUERY_KEYS:
                continue
            if key in seen:
                raise RequestError(f"query parameter {key!r} given more than once", key)
            seen.add(key)
            if value or key != "session_id":
                validate_id(value, key)
        if method in _BODY_METHODS:
            length = headers.get(b"content-length")
            if length is None:
                if b"transfer-encoding" in headers:
                    raise RequestError("a request body needs a Content-Length header", status_code=411)
                return
            if not length.isdigit():
                raise RequestError("invalid Content-Length header", status_code=400)
            if int(length) > self.limits.max_upload_bytes:
                raise RequestError(
                    f"request body of {int(length)} bytes exceeds the limit of {self.limits.max_upload_bytes} bytes",
                    status_code=413,
                )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: HTTP requests are checked, everything else passes through."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            self.check(scope.get("method", "GET"), scope.get("path", ""), scope.get("query_string", b""), headers)
        except RequestError as err:
            body = json.dumps({"detail": str(err)}).encode()
            await send({
                "type": "http.response.start",
                "status": err.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")],
            })
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def install_request_guard(
    server_app: Any, limits: RequestLimits, models: Collection[str] | None = None, prefix: str = ""
) -> RequestGuard:
    """Put a :class:`RequestGuard` in front of a Starlette/FastAPI app's middleware stack (idempotent).

    The stack is built first when the app has not served yet; a guard already installed is updated in place.

    Args:
        server_app: the running ``FastAPI`` app (``monailabel.app.app``).
        limits: the request limits.
        models: the model names offered.
        prefix: the API prefix of the routes.
    """
    stack = server_app.middleware_stack
    if stack is None:
        stack = server_app.build_middleware_stack()
    if isinstance(stack, RequestGuard):
        stack.limits = limits
        stack.models = None if models is None else frozenset(models)
        stack.prefix = prefix.rstrip("/")
        return stack
    guard = RequestGuard(stack, limits, models, prefix)
    server_app.middleware_stack = guard
    return guard
