# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One conversation about one image with a loaded predictor: the state behind the terminal chat.

A :class:`ChatSession` keeps the current image (its pixels prepared once, by the predictor's own pipeline) and the
turns so far. Each question goes through the product's path, like a request to the server: the turns (``{"role",
"content"}`` dicts, the image with the first) are prepared by :class:`~monai_llava_med.engines.PrepareVqaItem` and
answered by :func:`~monai_llava_med.engines.streaming.stream_generate`, which hands the answer over piece by piece.

Errors are typed (:mod:`monai_llava_med.errors`) and their ``reason`` is safe to print: a cause the session
found itself (no such file, permission denied, empty file), a fixed description of what the image reader refused
(:func:`~monai_llava_med.apps.monailabel.redaction.input_error_detail`, since a reader's own text may quote header
values), or the prompt builder's reason (which names no file content).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from ...engines.predictor import LlavaMedPredictor
from ...engines.streaming import Completion, GenerationRequest, stream_generate
from ...errors import LlavaMedError, LlavaMedInputError, as_input_error
from ..monailabel.redaction import input_error_detail, safe_modality
from ..serve.views import save_views
from .input_checks import check_image_path

__all__ = ["CONVERSATION", "GenerationError", "ChatSession"]

#: The name errors about the prompt (too long for the model, empty question) are reported under.
CONVERSATION = "conversation"


class GenerationError(LlavaMedError):
    """The model failed while answering (the conversation is kept; the question can be asked again)."""


class ChatSession:
    """The current image and the turns so far.

    Args:
        predictor: the loaded predictor (loaded once, kept for every image).
        max_new_tokens: answer length bound.
    """

    def __init__(self, predictor: LlavaMedPredictor, max_new_tokens: int = 128) -> None:
        self.predictor = predictor
        self.max_new_tokens = max_new_tokens
        self.image: Path | None = None
        self.history: list[dict[str, str]] = []
        self._pixels: Mapping[str, Any] | None = None
        self._prepare = predictor.preparer(self._preprocess)

    def _preprocess(self, path: str) -> Mapping[str, Any]:
        if self._pixels is not None and self.image is not None and path == str(self.image):
            return self._pixels  # the image's pixels are prepared once per image, not once per question
        return self.predictor.prepare.preprocess(path)

    @property
    def views(self) -> list[dict[str, Any]]:
        """What the model is shown of the current image (``kind``, ``plane``, ``index``...), in its order."""
        return [dict(v) for v in (self._pixels or {}).get("views", []) if isinstance(v, Mapping)]

    @property
    def modality(self) -> str:
        """The current image's modality, from DICOM's defined terms only (else ``"unknown"``)."""
        return safe_modality((self._pixels or {}).get("modality"))

    def open_image(self, path: str | PathLike) -> None:
        """Switch to another image (file or DICOM series folder) and start a new conversation.

        On failure the current image and conversation are kept.

        Raises:
            ImageReadError, VolumeError...: the image cannot be used (the ``reason`` is safe to print).
        """
        path = Path(path).expanduser()
        check_image_path(path)
        try:
            pixels = self.predictor.prepare.preprocess(str(path))
        except Exception as err:  # noqa: BLE001 - any reader failure is a typed error, its text withheld
            typed = as_input_error(err, str(path))
            raise type(typed)(input_error_detail(typed), path) from None
        self.image, self._pixels, self.history = path, pixels, []

    def reset(self) -> None:
        """Forget the turns so far (same image)."""
        self.history = []

    def save_views(self, folder: str | PathLike) -> list[Path]:
        """Write the views the model sees of the current image as PNG files (``view_00.png``...) in ``folder``.

        Raises:
            LlavaMedInputError: no image is open, or the folder cannot be written.
        """
        if self._pixels is None:
            raise LlavaMedInputError("no image is open (/image PATH opens one)", "views")
        try:
            return save_views(self._pixels, self.predictor.model.config, Path(folder).expanduser())
        except OSError as err:
            raise LlavaMedInputError(f"cannot write the views ({err.strerror or type(err).__name__})", folder) from None

    def ask(self, question: str, on_piece: Callable[[str], None]) -> Completion:
        """Answer a question in the conversation, handing each piece of the answer to ``on_piece`` as it comes.

        The answer joins the conversation unless it was stopped (Ctrl-C while it streams: ``finish_reason`` is
        ``"cancelled"``, the question and its partial answer are dropped).

        Args:
            question: the user's text.
            on_piece: receives the answer's text, piece by piece (from a worker thread).

        Raises:
            TemplateError, RecordError: the prompt cannot be built (too long for the model, empty question).
            GenerationError: the model failed.
        """
        turns = [*self.history, {"role": "user", "content": question}]
        image = str(self.image) if self.image is not None else None
        asked = question if len(turns) == 1 else turns
        prepared = self._prepare({"id": CONVERSATION, "image": image, "question": asked})
        ended: dict[str, Any] = {}

        def sink(kind: str, value: Any) -> None:
            if kind == "delta":
                on_piece(value)
            else:
                ended[kind] = value

        request = GenerationRequest(prepared, sink, max_tokens=self.max_new_tokens)
        worker = threading.Thread(target=stream_generate, args=(self.predictor, [request]), name="llava-med-chat",
                                  daemon=True)
        worker.start()
        while worker.is_alive():  # the main thread keeps Ctrl-C: it stops the answer, not the chat
            try:
                worker.join(0.05)
            except KeyboardInterrupt:
                request.cancelled.set()
        if "done" not in ended:
            err = ended.get("error")
            raise GenerationError(f"the answer could not be generated ({type(err).__name__})")
        done: Completion = ended["done"]
        if done.finish_reason != "cancelled":
            self.history = [*turns, {"role": "assistant", "content": done.text}]
        return done
