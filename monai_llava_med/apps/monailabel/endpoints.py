# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The routes of the LLaVA-Med app that replace MONAI Label's stock ones: infer, uploads and datastore info.

``POST /infer/{model}``: the stock route merges ``params`` into the request after the URL's ``image`` and
``model`` (so params can replace them) and treats an ``image`` that exists on disk as a server path. This route
keeps the same signature (``image`` query, ``params`` form field, optional ``file`` upload, ``output``) but:

* checks ``params`` first (:func:`~.request_checks.parse_infer_params`: reserved keys refused, caps applied);
* resolves ``image`` only as a validated datastore id;
* copies an inline ``file`` into a private temporary folder with a size cap and removes it afterwards;
* answers JSON (``{"answer", "views", "model", "latency_s", ...}``) or a 4xx with the cause.

Datastore routes (:func:`install_datastore_routes`): the stock ``PUT /datastore/image`` and ``PUT /datastore/label``
write the upload to a temporary file *before* decoding ``params`` and leave it behind on any failure (their
clean-up is a background task that only runs after a successful response); the stock info routes answer bad JSON
and unknown ids with 500 or ``200 {}``. The replacements (same parameters, same answers on success):

* decode ``params``/``info`` as a JSON object and check ids, extension and (for labels) the image first, then copy
  the upload into a private temporary folder with a size cap, removed whatever happens;
* answer an unknown image or label with 404 and a field that is not a JSON object with 400;
* ``GET /datastore/image``, ``GET /datastore/label``, ``GET /datastore/dataset`` and ``HEAD /datastore/image`` come
  from :mod:`.downloads` (files opened without following links and checked; an archive streamed from an anonymous
  temporary file; a checked ``check_sum``).

Like the stock ones they are ``async`` (run on the event loop), so datastore updates stay serialised.

Needs ``monailabel`` (and its ``fastapi``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fastapi import Depends, File, Form, UploadFile
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints.datastore import ResultType
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.utils.app import app_instance

from ...errors import LlavaMedInputError
from .datastore import checked_id, image_not_found, label_not_found
from .downloads import check_image_endpoint, dataset_endpoint, download_image_endpoint, download_label_endpoint
from .http_errors import as_http_error
from .request_checks import (
    ID_PATTERN,
    RequestError,
    check_file_content,
    image_extension,
    parse_infer_params,
    parse_json_object,
)

__all__ = [
    "INFER_PATH",
    "SERVER_INFO_KEYS",
    "copy_limited",
    "infer_endpoint",
    "install_infer_route",
    "add_image_endpoint",
    "save_label_endpoint",
    "get_image_info_endpoint",
    "put_image_info_endpoint",
    "get_label_info_endpoint",
    "put_label_info_endpoint",
    "install_datastore_routes",
    "datastore_endpoint",
]

INFER_PATH = "/infer/{model}"
#: Image info keys the server manages: the active-learning record (any other shape breaks ``/activelearning``).
SERVER_INFO_KEYS = frozenset({"strategy"})
_CHUNK = 1 << 20
_ROLE_USER = settings.MONAI_LABEL_AUTH_ROLE_USER
_ROLE_ANNOTATOR = settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR


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


def _replace_route(server_app: Any, path: str, method: str, endpoint: Callable[..., Any], **kwargs: Any) -> APIRoute:
    """Replace the ``method`` route at ``path`` of a FastAPI app with ``endpoint``, first in order (idempotent)."""
    routes = server_app.router.routes
    for route in routes:
        if isinstance(route, APIRoute) and route.path == path and route.endpoint is endpoint:
            return route
    routes[:] = [r for r in routes if not (isinstance(r, APIRoute) and r.path == path and method in r.methods)]
    server_app.router.add_api_route(path, endpoint, methods=[method], **kwargs)
    routes.insert(0, routes.pop())
    server_app.openapi_schema = None
    return routes[0]


def install_infer_route(server_app: Any, prefix: str = "") -> APIRoute:
    """Replace the stock ``POST /infer/{model}`` route of a FastAPI app with :func:`infer_endpoint` (idempotent).

    Args:
        server_app: the running ``FastAPI`` app (``monailabel.app.app``).
        prefix: the API prefix (``MONAI_LABEL_API_STR``).
    """
    return _replace_route(
        server_app, prefix.rstrip("/") + INFER_PATH, "POST", infer_endpoint, tags=["Infer"],
        summary="Ask LLaVA-Med a question about an image",
    )


def _json_field(text: str | None, name: str, refused: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A form field decoded as a JSON object without the ``refused`` keys, or a 400."""
    try:
        value = parse_json_object(text, name)
        taken = sorted(k for k in value if k in refused)
        if taken:
            raise RequestError(f"{name} may not set {', '.join(taken)}: the server manages these", name)
    except RequestError as err:
        raise as_http_error(err) from err
    return value


def _upload_extension(upload: UploadFile) -> str:
    try:
        return image_extension(Path(upload.filename or "").name)
    except RequestError as err:
        raise as_http_error(err) from err


def _require_image(store: Datastore, image_id: str) -> None:
    if image_id not in store.list_images():
        raise image_not_found(image_id)


def _require_label(store: Datastore, label_id: str, tag: str) -> None:
    if tag not in store.get_labels_by_image_id(label_id):
        raise label_not_found(label_id, tag)


def _store_upload(upload: UploadFile, ext: str, save: Callable[[str], Any]) -> Any:
    """Copy ``upload`` into a private temporary folder (size capped), call ``save`` on the copy, remove the folder."""
    with tempfile.TemporaryDirectory(prefix="llava_med_upload_") as folder:
        path = Path(folder) / ("upload" + ext)
        try:
            copy_limited(upload.file, path, app_instance().limits.max_upload_bytes)
        except RequestError as err:
            raise as_http_error(err) from err
        return save(str(path))


async def add_image_endpoint(
    image: str | None = None,
    params: str = Form("{}"),
    file: UploadFile = File(...),
    user: User = Depends(RBAC(_ROLE_ANNOTATOR)),
) -> dict[str, Any]:
    """``PUT /datastore/image``: store an upload under ``image`` (default: the file name without its extension).

    ``params`` (a JSON object) becomes the image info. Answers ``{"image": id}``; 400 for bad JSON or a bad id,
    413/415/422 for the file (see :meth:`~.datastore.LlavaMedDatastore.add_image`). No temporary file outlives the
    request.
    """
    info = _json_field(params, "params", SERVER_INFO_KEYS)
    ext = _upload_extension(file)
    image_id = checked_id(image or Path(file.filename or "").name[: -len(ext)], "image")
    if user.username:
        info["user"] = user.username
    store = app_instance().datastore()
    return {"image": _store_upload(file, ext, lambda path: store.add_image(image_id, path, info))}


async def save_label_endpoint(
    image: str,
    params: str = Form("{}"),
    tag: str = DefaultLabelTag.FINAL.value,
    label: UploadFile = File(...),
    user: User = Depends(RBAC(_ROLE_ANNOTATOR)),
) -> dict[str, Any]:
    """``PUT /datastore/label``: store an uploaded label of datastore image ``image`` under ``tag`` (default final).

    ``params`` (a JSON object) becomes the label info. Answers ``{"image", "label", ...}`` like the stock route; 400
    for bad JSON or ids, 404 for an unknown image, 413/415 for the file. No temporary file outlives the request.
    """
    info = _json_field(params, "params")
    image, tag = checked_id(image, "image"), checked_id(tag or DefaultLabelTag.FINAL.value, "tag")
    ext = _upload_extension(label)
    instance = app_instance()
    store = instance.datastore()
    _require_image(store, image)
    label_id = _store_upload(label, ext, lambda path: store.save_label(image, path, tag, info))
    result = instance.on_save_label(image, label_id) or {}
    result.update({"image": image, "label": label_id})
    return result


async def get_image_info_endpoint(image: str, user: User = Depends(RBAC(_ROLE_USER))) -> dict[str, Any]:
    """``GET /datastore/image/info``: the stored info of a datastore image (no server path); 404 when unknown."""
    store = app_instance().datastore()
    _require_image(store, checked_id(image, "image"))
    info = store.get_image_info(image)
    info.pop("path", None)
    return info


async def put_image_info_endpoint(
    image: str, info: str = Form("{}"), user: User = Depends(RBAC(_ROLE_ANNOTATOR))
) -> None:
    """``PUT /datastore/image/info``: merge the JSON object ``info`` into an image's info; 400 bad JSON, 404 unknown."""
    update = _json_field(info, "info", SERVER_INFO_KEYS)
    store = app_instance().datastore()
    _require_image(store, checked_id(image, "image"))
    if user.username:
        update["user"] = user.username
    store.update_image_info(image, update)


async def get_label_info_endpoint(label: str, tag: str, user: User = Depends(RBAC(_ROLE_USER))) -> dict[str, Any]:
    """``GET /datastore/label/info``: the stored info of a label (image id and tag); 404 when unknown."""
    store = app_instance().datastore()
    _require_label(store, checked_id(label, "label"), checked_id(tag, "tag"))
    return store.get_label_info(label, tag)


async def put_label_info_endpoint(
    label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(_ROLE_ANNOTATOR))
) -> None:
    """``PUT /datastore/label/info``: merge the JSON object ``info`` into a label's info; 400 bad JSON, 404 unknown."""
    update = _json_field(info, "info")
    store = app_instance().datastore()
    _require_label(store, checked_id(label, "label"), checked_id(tag, "tag"))
    if user.username:
        update["user"] = user.username
    store.update_label_info(label, tag, update)


async def datastore_endpoint(
    output: ResultType | None = None, user: User = Depends(RBAC(_ROLE_USER))
) -> Any:
    """``GET /datastore/``: ``stats`` (default), ``all`` or ``train``; the ``train`` pairs name files, not server paths.

    The stock route answers ``output=train`` with the absolute paths of every image/label pair on the server.
    """
    store = app_instance().datastore()
    if output == ResultType.all:
        return store.json()
    if output == ResultType.train:
        return [{key: Path(value).name for key, value in pair.items()} for pair in store.datalist()]
    return store.status()


#: (method, path, endpoint, summary) of the datastore routes :func:`install_datastore_routes` replaces.
_DATASTORE_ROUTES: tuple[tuple[str, str, Callable[..., Any], str], ...] = (
    ("GET", "/datastore/", datastore_endpoint, "Get Datastore Status"),
    ("PUT", "/datastore/image", add_image_endpoint, "Upload new Image"),
    ("PUT", "/datastore/label", save_label_endpoint, "Save Finished Label"),
    ("GET", "/datastore/image/info", get_image_info_endpoint, "Get Image Info"),
    ("PUT", "/datastore/image/info", put_image_info_endpoint, "Update Image Info"),
    ("GET", "/datastore/label/info", get_label_info_endpoint, "Get Label Info"),
    ("PUT", "/datastore/label/info", put_label_info_endpoint, "Update Label Info"),
    ("GET", "/datastore/dataset", dataset_endpoint, "Download full dataset as ZIP archive"),
    ("HEAD", "/datastore/image", check_image_endpoint, "Check If Image Exists"),
    ("GET", "/datastore/image", download_image_endpoint, "Download Image"),
    ("GET", "/datastore/label", download_label_endpoint, "Download Label"),
)


def install_datastore_routes(server_app: Any, prefix: str = "") -> list[APIRoute]:
    """Replace the stock upload and info routes of ``/datastore`` with the checked ones above (idempotent).

    Args:
        server_app: the running ``FastAPI`` app (``monailabel.app.app``).
        prefix: the API prefix (``MONAI_LABEL_API_STR``).
    """
    base = prefix.rstrip("/")
    return [
        _replace_route(server_app, base + path, method, endpoint, tags=["Datastore"], summary=summary)
        for method, path, endpoint, summary in _DATASTORE_ROUTES
    ]
