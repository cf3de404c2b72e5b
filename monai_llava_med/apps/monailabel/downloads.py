# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Datastore routes that read stored files, replacing MONAI Label 0.8.5's: downloads, the archive, the image check.

* ``GET /datastore/image`` and ``GET /datastore/label``: the file is opened by its resolved path without following
  a link (``O_NOFOLLOW``) and what was opened is checked again (``/proc/self/fd``) before a byte is sent, so a
  link swapped in between the datastore's check and the read is refused (403), not served. Stock 0.8.5 hands
  ``FileResponse`` a path that is opened later.

* ``GET /datastore/dataset``: stock 0.8.5 writes the archive with ``NamedTemporaryFile(delete=False)`` and never
  removes it (a full copy of the dataset stays in ``$TMPDIR`` on every call); an empty datastore is a 500. Here
  the archive goes to an anonymous temporary file that is streamed and closed (nothing named is ever created),
  only from files that resolve inside the studies folder; an empty datastore is a 404.
* ``HEAD /datastore/image?check_sum=ALGO:HEX``: stock 0.8.5 answers 500 for an algorithm name in lower case or
  unknown, and never matches a correct digest. Here the algorithm (``SHA256`` default, ``SHA512``, ``MD5``) and the
  digest are checked (400), and a matching digest is 200.

Both are plain ``def`` routes: FastAPI runs them in a worker thread, so hashing or zipping never blocks the event
loop. Needs ``monailabel``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from fastapi import Depends, HTTPException
from fastapi.responses import StreamingResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import file_checksum, get_mime_type

from .datastore import checked_id, image_not_found, label_not_found, outside_studies
from .http_errors import as_http_error
from .request_checks import RequestError

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "open_inside",
    "download_image_endpoint",
    "download_label_endpoint",
    "dataset_endpoint",
    "check_image_endpoint",
]

#: Digest algorithms ``check_sum`` may name (those MONAI Label's ``file_checksum`` computes).
CHECKSUM_ALGORITHMS = ("SHA256", "SHA512", "MD5")
_HEX = re.compile(r"[0-9a-fA-F]{32,128}")
_CHUNK = 1 << 20


def _stream_and_close(stream: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := stream.read(_CHUNK):
            yield chunk
    finally:
        stream.close()


def open_inside(store: Any, path: str, what: str) -> IO[bytes]:
    """Open a resolved datastore file for reading without following a link, then check what was opened.

    Args:
        store: the :class:`~.datastore.LlavaMedDatastore` (its ``resolved_inside`` check).
        path: the file's resolved path (from ``get_image_uri``/``get_label_uri``).
        what: how to name the entry in an error.

    Raises:
        HTTPException: 403 when the path is (now) a link or what was opened lies outside the studies folder; 404
            when it is missing or not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise outside_studies(what) from None
        raise HTTPException(status_code=404, detail=f"{what} has no file in the datastore") from None
    stream = os.fdopen(fd, "rb")
    try:
        proc = f"/proc/self/fd/{fd}"
        opened = os.readlink(proc) if os.path.islink(proc) else path
        if not store.resolved_inside(opened):
            raise outside_studies(what)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HTTPException(status_code=404, detail=f"{what} is not a file")
    except BaseException:
        stream.close()
        raise
    return stream


def _file_response(stream: IO[bytes], name: str) -> StreamingResponse:
    size = os.fstat(stream.fileno()).st_size
    return StreamingResponse(
        _stream_and_close(stream), media_type=get_mime_type(name),
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Content-Length": str(size)},
    )


def download_image_endpoint(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))) -> Any:
    """``GET /datastore/image``: the stored file of a datastore image (404 unknown, 403 outside the studies folder)."""
    image = checked_id(image, "image")
    store = app_instance().datastore()
    uri = store.get_image_uri(image)
    if not uri:
        raise image_not_found(image)
    return _file_response(open_inside(store, uri, f"image {image!r}"), os.path.basename(uri))


def download_label_endpoint(
    label: str, tag: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
) -> Any:
    """``GET /datastore/label``: the stored label file (404 unknown, 403 outside the studies folder)."""
    label, tag = checked_id(label, "label"), checked_id(tag, "tag")
    store = app_instance().datastore()
    uri = store.get_label_uri(label, tag)
    if not uri:
        raise label_not_found(label, tag)
    return _file_response(open_inside(store, uri, f"label {tag!r} of {label!r}"), os.path.basename(uri))


def dataset_endpoint(
    limit_cases: int | None = None, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
) -> Any:
    """``GET /datastore/dataset``: the images with a final label, their labels and the datastore record as a ZIP.

    The archive is written to ``tempfile.TemporaryFile`` (on Linux an ``O_TMPFILE`` that never has a name) and
    streamed from it; closing it, at the end of the response or when the client goes away, frees the space.
    """
    stream = tempfile.TemporaryFile(prefix="llava_med_dataset_")
    try:
        app_instance().datastore().write_dataset_archive(stream, limit_cases)
        size = stream.tell()
        stream.seek(0)
    except BaseException:
        stream.close()
        raise
    return StreamingResponse(
        _stream_and_close(stream), media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="dataset.zip"', "Content-Length": str(size)},
    )


def check_image_endpoint(
    image: str, check_sum: str | None = None, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
) -> dict[str, Any]:
    """``HEAD /datastore/image``: 200 when the image exists (and, with ``check_sum=[ALGO:]HEX``, has that digest).

    Raises:
        HTTPException: 400 for a bad id, algorithm or digest; 403 for an image that resolves outside the studies
            folder; 404 for an unknown image or a digest that does not match.
    """
    image = checked_id(image, "image")
    uri = app_instance().datastore().get_image_uri(image)
    if not uri or not os.path.isfile(uri):
        raise image_not_found(image)
    if check_sum:
        algo, _, digest = check_sum.rpartition(":")
        algo = (algo or "SHA256").upper()
        if algo not in CHECKSUM_ALGORITHMS or not _HEX.fullmatch(digest):
            raise as_http_error(RequestError(
                f"check_sum must be [ALGO:]HEX with ALGO one of {', '.join(CHECKSUM_ALGORITHMS)}", "check_sum"
            ))
        if file_checksum(uri, algo=algo).split(":", 1)[1] != digest.lower():
            raise HTTPException(status_code=404, detail=f"image {image!r} does not have that {algo} checksum")
    return {}
