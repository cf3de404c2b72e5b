# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI Label app: LLaVA-Med question answering over the standard REST API, with the 0.8.5 holes closed.

``--conf`` keys (all optional):

* ``models``: ``llava_med`` (the only model name offered; ``all`` means the same);
* ``model_dir``: the model folder (default: the bundle's ``bundles/llava_med/models`` found above the app);
* ``device``: ``cpu``, ``cuda``, ``cuda:1`` (default CUDA when available);
* ``max_question_chars``, ``max_new_tokens``, ``max_upload_mb``: request limits (:class:`RequestLimits`).

Needs ``monailabel``.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferTask

from ... import __version__
from ...errors import CheckpointError, LlavaMedInputError
from .datastore import LlavaMedDatastore
from .endpoints import install_datastore_routes, install_infer_route
from .guard import install_request_guard
from .http_errors import as_http_error
from .infer_task import TASK_KEYS, LlavaMedInferTask
from .redaction import install_reader_redaction
from .request_checks import RequestError, RequestLimits, is_utf8_text, parse_infer_params, validate_id

__all__ = ["MODEL_NAME", "BUNDLE_MODELS", "resolve_model_dir", "LlavaMedLabelApp"]

#: The model name clients use in ``/infer/{model}``.
MODEL_NAME = "llava_med"
#: Where the bundle's demo model lives, relative to the repository root.
BUNDLE_MODELS = Path("bundles") / "llava_med" / "models"


def resolve_model_dir(value: str | None, app_dir: str | os.PathLike) -> Path:
    """The model folder: ``value`` (relative to the working folder) or the bundle's demo model above ``app_dir``.

    Raises:
        CheckpointError: when the folder does not exist (the message says how to pass ``--conf model_dir``).
    """
    if value:
        folder = Path(value).expanduser().resolve()
        if not folder.is_dir():
            raise CheckpointError("model folder not found (check --conf model_dir)", folder)
        return folder
    start = Path(app_dir).resolve()
    for parent in (start, *start.parents):
        candidate = parent / BUNDLE_MODELS
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    raise CheckpointError(f"no {BUNDLE_MODELS} found above the app; pass --conf model_dir PATH", start)


class LlavaMedLabelApp(MONAILabelApp):
    """MONAI Label app serving :class:`LlavaMedInferTask` under :data:`MODEL_NAME`.

    On construction inside a running server it replaces the stock infer, upload and datastore-info routes
    (:mod:`.endpoints`) and puts a :class:`~.guard.RequestGuard` in front of the API; the local datastore is a
    :class:`LlavaMedDatastore`.

    Args:
        app_dir: the app folder.
        studies: the studies folder (or a DICOMweb/XNAT/DSA URL).
        conf: ``--conf`` key/values (see the module docstring).
    """

    def __init__(self, app_dir: str, studies: str, conf: Mapping[str, str] | None) -> None:
        conf = dict(conf or {})
        self.limits = RequestLimits.from_conf(conf)
        names = [n.strip() for n in conf.get("models", MODEL_NAME).split(",") if n.strip()]
        unknown = sorted(set(names) - {MODEL_NAME, "all"})
        if unknown:
            raise RequestError(f"unknown model(s) {unknown}: this app offers {MODEL_NAME!r}", "models")
        self.model_dir = resolve_model_dir(conf.get("model_dir"), app_dir)
        self.device = conf.get("device") or None
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="LLaVA-Med",
            description="Ask a biomedical vision-language model about the image being annotated",
            version=__version__,
        )
        self.install_server_hooks()

    def install_server_hooks(self) -> bool:
        """Replace the infer and datastore routes and install the request guard on the running server, if any.

        Also withholds the text of image readers' warnings and log records in the server process
        (:func:`~.redaction.install_reader_redaction`): they may quote DICOM header values.

        Returns:
            whether a server (``monailabel.app``) was found.
        """
        server = sys.modules.get("monailabel.app")
        if server is None:
            return False
        install_reader_redaction()
        prefix = settings.MONAI_LABEL_API_STR
        install_infer_route(server.app, prefix)
        install_datastore_routes(server.app, prefix)
        install_request_guard(server.app, self.limits, list(self._infers), prefix)
        return True

    def init_datastore(self) -> Datastore:
        """A :class:`LlavaMedDatastore` for a local folder; MONAI Label's own client for a remote URL."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return LlavaMedDatastore(
            self.studies,
            limits=self.limits,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        """One task, loaded once from :attr:`model_dir`."""
        return {MODEL_NAME: LlavaMedInferTask(self.model_dir, device=self.device, limits=self.limits)}

    def init_trainers(self) -> dict[str, Any]:
        """No training through the server (train with the bundle)."""
        return {}

    def init_scoring_methods(self) -> dict[str, Any]:
        """No scoring methods."""
        return {}

    def next_sample(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The active-learning pick (``POST /activelearning/{strategy}``) without the server path of the image.

        Clients fetch the image by its ``id`` (``GET /datastore/image?image=<id>``), as 3D Slicer does when the
        path is not on its own disk.

        Raises:
            HTTPException: 404 for a strategy the app does not offer (stock 0.8.5 answers 500); 400 for a
                ``client_id`` that is not a short string of valid Unicode (it is stored in the image info and sent
                back).
        """
        strategy = request.get("strategy") or "random"
        if not isinstance(strategy, str) or strategy not in self._strategies:
            shown = repr(strategy)[:64]
            raise as_http_error(RequestError(
                f"unknown active-learning strategy {shown}; this server offers {sorted(self._strategies)}", None, 404
            ))
        client_id = request.get("client_id")
        if client_id is not None and not (
            isinstance(client_id, str) and len(client_id) <= 128 and is_utf8_text(client_id)
        ):
            raise as_http_error(RequestError(
                "client_id must be a string of at most 128 characters (valid Unicode)", "client_id"
            ))
        result = super().next_sample(request)
        result.pop("path", None)
        return result

    def image_path(self, image_id: Any, datastore: Datastore | None = None) -> str:
        """The file or folder of a datastore image, for a validated id that the datastore holds.

        Raises:
            RequestError: 400 for an invalid id, 404 for an id the datastore does not hold.
        """
        image_id = validate_id(image_id, "image")
        store = datastore or self.datastore()
        if image_id not in store.list_images():
            raise RequestError(f"image {image_id!r} is not in the datastore", "image", 404)
        uri = store.get_image_uri(image_id)
        if not uri or not os.path.exists(uri):
            raise RequestError(f"image {image_id!r} has no file in the datastore", "image", 404)
        return uri

    def answer(self, model: str, image_path: str, image_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Run the task ``model`` on a resolved image path with checked params; returns the answer JSON.

        Raises:
            RequestError: (404) for an unknown model; (504) when the answer takes longer than
                ``MONAI_LABEL_INFER_TIMEOUT`` seconds.
        """
        task = self._infers.get(model)
        if task is None:
            raise RequestError(f"unknown model {model!r}; this server offers {sorted(self._infers)}", "model", 404)
        request = {"model": model, "image": image_path, "image_name": image_name, **params}
        if self._infers_threadpool:
            future = self._infers_threadpool.submit(task, request)
            try:
                _, result = future.result(settings.MONAI_LABEL_INFER_TIMEOUT)
            except concurrent.futures.TimeoutError as err:
                raise RequestError(
                    f"no answer within {settings.MONAI_LABEL_INFER_TIMEOUT} s (MONAI_LABEL_INFER_TIMEOUT)", None, 504
                ) from err
        else:
            _, result = task(request)
        return result

    def infer(self, request: Mapping[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's infer entry point: ``image`` must be a datastore id; other keys are the params.

        Returns:
            ``{"label": None, "tag": "original", "file": None, "params": <answer JSON>}`` as MONAI Label expects.

        Raises:
            HTTPException: 4xx for an invalid id, an unknown image or model, or bad params.
        """
        model = str(request.get("model", ""))
        image = request.get("image")
        try:
            params = parse_infer_params({k: v for k, v in request.items() if k not in TASK_KEYS}, self.limits)
            path = self.image_path(image, datastore)
            result = self.answer(model, path, str(image), {"question": params.question, **params.generation})
        except LlavaMedInputError as err:
            raise as_http_error(err, str(image)) from err
        result["ignored_params"] = params.ignored
        return {"label": None, "tag": DefaultLabelTag.ORIGINAL, "file": None, "params": result}
