# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Turn the library's typed input errors into ``fastapi.HTTPException`` (a 4xx, never a bare 500).

Needs ``fastapi`` (installed with ``monailabel``).
"""

from __future__ import annotations

from fastapi import HTTPException

from ...errors import LlavaMedInputError
from .request_checks import RequestError

__all__ = ["as_http_error"]


def as_http_error(err: LlavaMedInputError, name: str | None = None) -> HTTPException:
    """The HTTP error for a typed input error, without server paths in the message.

    Args:
        err: a :class:`RequestError` (its own status) or any other input error (422: the image cannot be used).
        name: what the client called the file (its datastore id or upload name); replaces the server path
            the error names.
    """
    status = err.status_code if isinstance(err, RequestError) else 422
    if isinstance(err, RequestError) or err.path is None:
        return HTTPException(status_code=status, detail=str(err))
    return HTTPException(status_code=status, detail=f"{name or 'image'}: {err.reason} ({type(err).__name__})")
