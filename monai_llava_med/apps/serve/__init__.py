# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""An OpenAI-compatible HTTP server for LLaVA-Med, with a web page (needs the ``serve`` extra: fastapi, uvicorn).

``python -m monai_llava_med.apps.serve --model_dir DIR`` (or the ``llava-med-serve`` console script) serves:

* ``POST /v1/chat/completions`` -- OpenAI's chat completions (text and ``image_url`` parts, streaming or not);
* ``GET /v1/models``, ``GET /health``, ``POST /v1/views`` (the views the model sees, as PNG);
* ``GET /`` -- a page to choose an image, see its views and chat with the model (:mod:`.web`, files in ``static/``).

Modules: :mod:`.settings` (limits), :mod:`.schema` (request bodies), :mod:`.images` (``data:``/``file://`` images),
:mod:`.batching` (dynamic batching and streaming), :mod:`.views` (views as PNG), :mod:`.guard` (API key, body
limit), :mod:`.api_errors` (OpenAI error schema), :mod:`.app` (the routes), :mod:`.web` (the page). See
``docs/serve.md``.
"""

from __future__ import annotations

from .settings import EXTENSION_FIELD, TRUST_KEYS, ServeSettings

__all__ = ["ServeSettings", "EXTENSION_FIELD", "TRUST_KEYS", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003 - see .app.create_app
    """Build the server's ASGI app (see :func:`.app.create_app`); imports FastAPI only when called."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
