# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Errors of the server in OpenAI's schema: ``{"error": {"message", "type", "param", "code"}}``.

:class:`ApiError` carries the HTTP status; :func:`from_input_error` maps the library's typed input errors to a
fixed message per class (an image reader's text can quote DICOM header values, so it is never echoed).
"""

from __future__ import annotations

from typing import Any

from ...errors import CheckpointError, ImageReadError, LlavaMedInputError, VolumeError
from ..monailabel.redaction import input_error_detail

__all__ = ["ApiError", "error_body", "from_input_error"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    504: "server_error",
}


class ApiError(Exception):
    """A request the server refuses or cannot answer, with its HTTP status.

    Args:
        status: the HTTP status code.
        message: what went wrong, in words a client can act on (never a header value or a traceback).
        param: the request field at fault (``"messages.0.content.1"``), if any.
        code: a short machine-readable code (``"queue_full"``), if any.
        error_type: OpenAI's error type; default derived from ``status``.
    """

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        """The JSON body of the response."""
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An error response body in OpenAI's schema."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def from_input_error(err: LlavaMedInputError, param: str | None) -> ApiError:
    """The API error for a typed input error raised while an image or a prompt was prepared.

    Unreadable images and unusable content are 422 with a fixed description per error class; prompt problems
    (empty question, too long for the model's context) are 400 with the library's reason, which names no file
    content; a model that cannot be used is a 500.

    Args:
        err: the typed error.
        param: the request field the input came from.
    """
    if isinstance(err, CheckpointError):
        return ApiError(500, "the model cannot be used", None, "model_error")
    if isinstance(err, (ImageReadError, VolumeError)):
        return ApiError(422, input_error_detail(err), param, "image_unreadable")
    return ApiError(400, f"{input_error_detail(err)}: {err.reason}", "messages", "invalid_prompt")
