# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""MONAI Label integration: ask LLaVA-Med about the image being annotated.

Modules that need only the standard library (importable in any environment):

* :mod:`.request_checks` -- id validation, question and generation-setting limits, upload extensions;
* :mod:`.guard` -- an ASGI wrapper that refuses unknown routes, bad ids and oversized bodies early;
* :mod:`.redaction` -- fixed error details, the closed modality vocabulary, withheld image-reader messages.

Modules that need ``monailabel`` (install it in the separate ``.venv-label``, see ``docs/monailabel.md``):

* :mod:`.infer_task` -- :class:`~.infer_task.LlavaMedInferTask`, an ``InferTask`` of type ``OTHERS``;
* :mod:`.datastore` -- :class:`~.datastore.LlavaMedDatastore`, a ``LocalDatastore`` that checks ids and uploads;
* :mod:`.endpoints` -- the replacement ``POST /infer/{model}`` route (params cannot override the image/model) and
  upload/info routes;
* :mod:`.downloads` -- downloads that never follow a link out of the studies folder, the streamed dataset archive;
* :mod:`.http_errors` -- typed and unexpected errors as ``HTTPException`` without header values;
* :mod:`.label_app` -- :class:`~.label_app.LlavaMedLabelApp`, the ``MONAILabelApp`` tying them together.

The ready app folder is :func:`app_dir` (``app/main.py``): pass it to ``monailabel.main start_server --app``.
"""

from __future__ import annotations

from pathlib import Path

from .request_checks import (
    ID_PATTERN,
    IMAGE_EXTENSIONS,
    RequestError,
    RequestLimits,
    image_extension,
    parse_infer_params,
    validate_id,
)

__all__ = [
    "ID_PATTERN",
    "IMAGE_EXTENSIONS",
    "RequestError",
    "RequestLimits",
    "app_dir",
    "image_extension",
    "parse_infer_params",
    "validate_id",
]


def app_dir() -> Path:
    """The folder of the ready MONAI Label app (``--app`` of ``monailabel.main start_server``)."""
    return Path(__file__).resolve().parent / "app"
