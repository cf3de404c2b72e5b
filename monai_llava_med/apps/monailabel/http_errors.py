# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Turn errors into ``fastapi.HTTPException`` (a 4xx or a clear 5xx, never a bare 500 with a traceback).

* :func:`as_http_error`: a :class:`~.request_checks.RequestError` keeps its message and status (the app wrote it
  from what the client sent); a :class:`~monai_llava_med.errors.TemplateError` or
  :class:`~monai_llava_med.errors.RecordError` (the question does not fit the prompt: built from the client's text
  and the template only) is 400 with its reason; any other typed input error -- raised while the image was read
  -- gets 422 and the fixed detail of its class (:func:`~.redaction.input_error_detail`), never its text, which
  may quote DICOM header values.
* :func:`unexpected_http_error`: an exception that is not typed (raised deep inside a library while an image was
  read or the answer generated) gets 422 (with an image) or 500 (without), a detail naming only its class, and one
  log line with its class and stack frames but not its message.

Needs ``fastapi`` (installed with ``monailabel``).
"""

from __future__ import annotations

import logging
import traceback

from fastapi import HTTPException

from ...errors import LlavaMedInputError, RecordError, TemplateError
from .redaction import input_error_detail
from .request_checks import RequestError

__all__ = ["as_http_error", "unexpected_http_error"]

logger = logging.getLogger(__name__)


def as_http_error(err: LlavaMedInputError, name: str | None = None) -> HTTPException:
    """The HTTP error for a typed input error, without server paths or header values in the message.

    Args:
        err: a :class:`RequestError` (its own status and message), a template/record error (400, its reason) or
            any other input error (422, fixed detail).
        name: what the client called the file (its datastore id or upload name).
    """
    if isinstance(err, RequestError):
        return HTTPException(status_code=err.status_code, detail=str(err))
    if isinstance(err, TemplateError | RecordError):
        return HTTPException(status_code=400, detail=f"the question cannot be used: {err.reason}")
    logger.info("%s refused: %s (422)", name or "image", type(err).__name__)
    return HTTPException(
        status_code=422, detail=f"{name or 'image'}: {input_error_detail(err)} ({type(err).__name__})"
    )


def unexpected_http_error(err: BaseException, name: str | None, with_image: bool = True) -> HTTPException:
    """The HTTP error for an exception no check anticipated; logs its class and frames, never its message.

    Args:
        err: the exception.
        name: what the client called the image.
        with_image: whether the request carried an image (then the image is the likely cause: 422).
    """
    kind = type(err).__name__
    frames = "".join(traceback.format_tb(err.__traceback__)[-8:])
    logger.error("request on %s failed with %s (message withheld: it may quote header values)\n%s",
                 name or "no image", kind, frames.rstrip())
    if isinstance(err, MemoryError):
        return HTTPException(status_code=503, detail=f"{name or 'request'}: the server ran out of memory ({kind})")
    if with_image:
        return HTTPException(
            status_code=422, detail=f"{name or 'image'}: the image could not be processed (unexpected {kind})"
        )
    return HTTPException(status_code=500, detail=f"the model could not answer (unexpected {kind}); see the server log")
