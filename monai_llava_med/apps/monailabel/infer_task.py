# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI Label infer task: a question about an image in, the answer (JSON) out.

MONAI Label has no text task type: :class:`LlavaMedInferTask` is an ``InferTask`` of type ``OTHERS`` whose
``__call__`` returns ``(None, {"answer", "views", "model", "latency_s", "modality", "source", ...})``. The model is
loaded once, through :meth:`~monai_llava_med.engines.LlavaMedPredictor.from_pretrained`, which runs the same
preprocessing as the bundle (DICOM file or series, NIfTI, PNG/JPEG, whole-slide TIFF). Needs ``monailabel``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ...engines.predictor import LlavaMedPredictor
from ...errors import LlavaMedInputError
from ...trust.abstention import TRUST_FIELDS
from .http_errors import as_http_error, unexpected_http_error
from .redaction import safe_modality
from .request_checks import RequestLimits, parse_infer_params

__all__ = ["TASK_KEYS", "LlavaMedInferTask"]

#: Request keys set by the server, not by the client's ``params``.
TASK_KEYS = frozenset({"model", "image", "image_name", "description", "save_label"})


class LlavaMedInferTask(InferTask):
    """Answer ``params.question`` about the request's image with a LLaVA-Med model loaded once.

    Args:
        model_dir: a model folder (our layout, released LLaVA-Med v1.5, or HF Llava); ignored when ``predictor``
            is given.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        limits: question length and generation bounds.
        predictor: an already loaded predictor (tests, or a model shared between tasks).
        description: shown by MONAI Label clients.

    Raises:
        CheckpointError: when ``model_dir`` cannot be loaded (at construction, so the server fails to start with
            the cause rather than on the first request).
    """

    def __init__(
        self,
        model_dir: str | PathLike | None = None,
        device: str | None = None,
        limits: RequestLimits | None = None,
        predictor: LlavaMedPredictor | None = None,
        description: str = "Ask LLaVA-Med a question about the image (params.question); answers as JSON",
    ) -> None:
        self.limits = limits or RequestLimits()
        if predictor is None:
            if model_dir is None:
                raise ValueError("LlavaMedInferTask needs model_dir or predictor")
            predictor = LlavaMedPredictor.from_pretrained(model_dir, device=device)
        self.predictor = predictor
        self._lock = threading.Lock()
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description=description,
            config={
                "question": "",
                "max_new_tokens": self.limits.default_max_new_tokens,
                "do_sample": False,
                "temperature": 1.0,
                "top_p": 1.0,
            },
        )

    def info(self) -> dict[str, Any]:
        """MONAI Label's task info plus the model name and the limits a client must respect."""
        info = super().info()
        info["model"] = self.predictor.model_name
        info["limits"] = {
            "max_question_chars": self.limits.max_question_chars,
            "max_new_tokens": self.limits.max_new_tokens,
            "min_temperature": self.limits.min_temperature,
            "max_temperature": self.limits.max_temperature,
        }
        return info

    def is_valid(self) -> bool:
        """The model is loaded at construction, so the task is always usable."""
        return True

    def __call__(self, request: Mapping[str, Any]) -> tuple[None, dict[str, Any]]:
        """Answer one request.

        Args:
            request: ``image`` (a path resolved by the app, or empty for a text-only question), ``image_name`` (how
                the client named it), and the client's params (``question``, generation settings).

        Returns:
            ``(None, {"answer", "views", "model", "latency_s", "modality", "source", "question", "ignored_params"})``.

        Raises:
            HTTPException: 400/413 for bad params; 422 for an image the library cannot read, with a fixed detail per
                error class (never the error's text) -- also for an untyped exception from deep inside a library
                (503 when memory ran out, 500 for a failure without an image).
        """
        name = str(request.get("image_name") or (Path(request["image"]).name if request.get("image") else "none"))
        try:
            checked = parse_infer_params({k: v for k, v in request.items() if k not in TASK_KEYS}, self.limits)
            with self._lock:
                result = self.predictor.ask(request.get("image") or None, checked.question, **checked.generation)
        except LlavaMedInputError as err:
            raise as_http_error(err, name) from err
        except Exception as err:  # noqa: BLE001 - one bad image must give its own error, not a bare 500
            raise unexpected_http_error(err, name, with_image=bool(request.get("image"))) from None
        return None, {
            "answer": result["answer"],
            "views": result.get("views", []),
            "model": result.get("model", self.predictor.model_name),
            "latency_s": result["latency_s"],
            "modality": safe_modality(result.get("modality")) if request.get("image") else None,
            "source": name if request.get("image") else None,
            "question": checked.question,
            "ignored_params": checked.ignored,
            **{k: result[k] for k in TRUST_FIELDS if k in result},
        }
