# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The ``POST /infer/{model}`` route of the LLaVA-Med app, replacing MONAI Label's stock one.

The stock route merges ``params`` into the request after the URL's ``image`` and ``model`` (so params can
replace them) and treats an ``image`` that exists on disk as a server path. This route keeps the same
signature (``image`` query, ``params`` form field, optional ``file`` upload, ``output``) but:

* checks ``params`` first (:func:`~.request_checks.parse_infer_params`: reserved keys refused, caps applied);
* resolves ``image`` only as a validated datastore id;
* copies an inline ``file`` into a private temporary folder with a size cap and removes it afterwards;
* answers JSON (``{"answer", "views", "model", "latency_s", ...}``) or a 4xx with the cause.

Needs ``monailabel`` (and its ``fastapi``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Any

from fastapi import Depends, File, Form, UploadFile
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from ...errors import LlavaMedInputError
from .http_errors import as_http_error
from .request_checks import ID_PATTERN, RequestError, check_file_content, image_extension, parse_infer_params

__all__ = ["INFER_PATH", "copy_limited", "infer_endpoint", "install_infer_route"]

INFER_PATH = "/infer/{model}"
_CHUNK = 1 << 20


def copy_limited(source: IO[bytes], dest: Path, max_bytes: int) -> int:
    """Copy a stream to ``dest``, refusing (and removing ``dest``) once more than ``max_bytes`` arrive.

    Raises:
        RequestError: (413) when the stream is larger than ``max_bytes``.
    """
    total = 0
    with open(dest, "wb") as out:
        while chunk := source.read(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                out.close()
                dest.unlink(missing_ok=True)
                raise RequestError(f"upload exceeds the limit of {max_bytes} bytes", "file", 413)
            out.write(chunk)
    return total


def infer_endpoint(
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: str | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
) -> dict[str, Any]:
    """Answer ``params.question`` about datastore image ``image`` (or the uploaded ``file``) with ``model``.

    A plain ``def``: FastAPI runs it in a worker thread, so ``/info/`` and uploads stay responsive while the
    model generates.
    """
    instance = app_instance()
    try:
        if label is not None:
            raise RequestError("this model takes no label upload", "label")
        if session_id:
            raise RequestError("sessions are not offered: upload the image or send it as 'file'", "session_id")
        if output not in (None, "", "json", "all"):
            raise RequestError(f"output={output!r} is not available: this model answers with JSON", "output")
        checked = parse_infer_params(params, instance.limits)
        request = {"question": checked.question, **checked.generation}
        if file is None:
            result = instance.answer(model, instance.image_path(image), image, request)
        else:
            if image:
                raise RequestError("send either image (a datastore id) or file, not both", "image")
            ext = image_extension(file.filename or "")
            name = Path(file.filename or "").name
            name = name if ID_PATTERN.fullmatch(name) else "upload" + ext
            with tempfile.TemporaryDirectory(prefix="llava_med_infer_") as folder:
                path = Path(folder) / ("upload" + ext)
                copy_limited(file.file, path, instance.limits.max_upload_bytes)
                check_file_content(path, ext)
                result = instance.answer(model, str(path), name, request)
    except RequestError as err:
        raise as_http_error(err) from err
    except LlavaMedInputError as err:
        raise as_http_error(err, image or "file") from err
    if checked.ignored:
        result["ignored_params"] = sorted(set(result.get("ignored_params", [])) | set(checked.ignored))
    return result


def install_infer_route(server_app: Any, prefix: str = "") -> APIRoute:
    """Replace the stock ``POST /infer/{model}`` route of a FastAPI app with :func:`infer_endpoint` (idempotent).

    Args:
        server_app: the running ``FastAPI`` app (``monailabel.app.app``).
        prefix: the API prefix (``MONAI_LABEL_API_STR``).
    """
    path = prefix.rstrip("/") + INFER_PATH
    routes = server_app.router.routes
    for route in routes:
        if isinstance(route, APIRoute) and route.path == path and route.endpoint is infer_endpoint:
            return route
    routes[:] = [r for r in routes if not (isinstance(r, APIRoute) and r.path == path and "POST" in r.methods)]
    server_app.router.add_api_route(
        path, infer_endpoint, methods=["POST"], tags=["Infer"], summary="Ask LLaVA-Med a question about an image"
    )
    routes.insert(0, routes.pop())
    server_app.openapi_schema = None
    return routes[0]
