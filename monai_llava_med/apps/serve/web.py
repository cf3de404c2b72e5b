# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The web page of the server: ``GET /`` (and ``/ui``) and its three static files, package data in ``static/``.

The page is plain HTML, CSS and JavaScript (no build step, nothing fetched from elsewhere) and talks to the server
through the same public API as any client: ``POST /v1/views`` and ``POST /v1/chat/completions`` with ``stream``.
It loads without the API key (the :class:`~.guard.ServeGuard` only guards ``/v1/*``) and sends the key the user
types as ``Authorization: Bearer``. Every page response carries a strict Content-Security-Policy (scripts and
styles from this server only, no inline script, images from this server or ``data:`` URLs, requests to this server
only), so model text, which the page writes with ``textContent`` only, cannot run as code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.responses import FileResponse

from .api_errors import ApiError

__all__ = ["STATIC_DIR", "PAGE_FILES", "PAGE_HEADERS", "add_page_routes"]

#: The web page's files (package data).
STATIC_DIR = Path(__file__).with_name("static")
#: The only static files served, with their media types.
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "chat.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
#: Headers of every page response.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _file(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type=PAGE_FILES[name], headers=PAGE_HEADERS)


def add_page_routes(api: Any) -> None:
    """Register ``GET /``, ``GET /ui`` (the page) and ``GET /static/{name}`` (its script and style) on ``api``.

    Args:
        api: the FastAPI app. Only the names of :data:`PAGE_FILES` are served; any other name is a 404 in OpenAI's
            error schema, so no path from a request ever reaches the file system.
    """

    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return _file("index.html")

    @api.get("/ui", include_in_schema=False)
    async def page_ui() -> FileResponse:
        return _file("index.html")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in PAGE_FILES:
            raise ApiError(404, "no such file", None, None)
        return _file(name)
