# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
""":class:`LlavaMedPredictor`: load a model once, then ``ask`` about images (MONAI Label, the apps, research code).

It prepares items with :class:`~.inference.PrepareVqaItem`, batches them with :func:`~.inference.collate_vqa` and
answers with :class:`~.inferer.LlavaMedInferer`: the same pieces as the bundle's ``inference.json``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import Any

import torch

from ..errors import CalibrationError
from ..networks import LlavaMedNet, load_pretrained
from ..trust.assessment import AnswerScores
from ..trust.calibration import Calibration, load_calibration
from .inference import PrepareVqaItem, collate_vqa, prepare_vqa_batch
from .inferer import LlavaMedInferer

__all__ = ["LlavaMedPredictor"]


class LlavaMedPredictor:
    """Ask questions about medical images with a loaded network: one object, loaded once.

    Args:
        model: the network.
        tokenizer: its tokenizer.
        preprocess: image path -> pixels (default :func:`build_preprocess`).
        template: conversation template (default the model's).
        max_new_tokens: default answer length bound.
        calibration: the :class:`~monai_llava_med.trust.Calibration` applied to every answer's trust fields, or
            ``None`` (raw confidences, no gate).
        trust: compute the trust fields (``confidence``, ``image_reliance``, ``abstained``, ``reason``,
            ``gate_distance``; see ``docs/trust.md``).
        paired_probes: also ask each yes/no question in its negated form, as extra rows of the same ``generate``
            call; an answer that contradicts its probe abstains ("contradicts its paired question") and every
            result gets ``paired_question`` and ``paired_answer`` (``None`` when the question has no probe). Needs
            ``trust``.

    Raises:
        ValueError: ``paired_probes`` without ``trust``.
    """

    def __init__(
        self,
        model: LlavaMedNet,
        tokenizer: Any,
        preprocess: Callable[[str], Mapping[str, Any]] | None = None,
        template: str | None = None,
        max_new_tokens: int = 128,
        calibration: Calibration | None = None,
        trust: bool = True,
        paired_probes: bool = False,
    ) -> None:
        if paired_probes and not trust:
            raise ValueError("paired_probes abstain through the trust fields: they need trust=True")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.paired_probes = paired_probes
        self.prepare = PrepareVqaItem(tokenizer, model, preprocess=preprocess, template=template, raise_errors=True,
                                      paired_probes=paired_probes)
        self.max_new_tokens = max_new_tokens
        gate = calibration.gate if calibration is not None else None
        if gate is not None and gate.width != 2 * model.projector[0].in_features:
            raise CalibrationError(f"its input gate was fitted on {gate.width // 2}-wide vision features; this model's "
                                   f"are {model.projector[0].in_features}-wide (a calibration of another model?)",
                                   calibration.model or "calibration")
        self.calibration = calibration
        self.trust = trust

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | PathLike,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        preprocess: Callable[[str], Mapping[str, Any]] | None = None,
        calibration: Calibration | str | PathLike | None = "auto",
        **kwargs: Any,
    ) -> LlavaMedPredictor:
        """Load the network and tokenizer from a folder (our layout, LLaVA-Med v1.5, or HF Llava).

        Args:
            model_dir: the model folder.
            device: target device; default CUDA when available, else CPU.
            dtype: parameter dtype (default fp32 on CPU, bf16 on GPU).
            preprocess: image pipeline override.
            calibration: ``"auto"`` loads ``model_dir/calibration.json`` when present; a folder or file path loads
                that one; a :class:`~monai_llava_med.trust.Calibration` is used as is; ``None`` uses none.
            kwargs: passed to the constructor (``template``, ``max_new_tokens``, ``trust``, ``paired_probes``).

        Raises:
            CalibrationError: the calibration file is present (or named) but unusable.
        """
        model, tokenizer = load_pretrained(model_dir, dtype=dtype, device=device or "auto")
        if isinstance(calibration, str) and calibration == "auto":
            calibration = load_calibration(model_dir)
        elif calibration is not None and not isinstance(calibration, Calibration):
            calibration = Calibration.load(calibration)
        return cls(model, tokenizer, preprocess=preprocess, calibration=calibration, **kwargs)

    @property
    def model_name(self) -> str:
        """The loaded model's name."""
        return self.model.config.name

    def _run(self, prepared: Sequence[Mapping[str, Any]], raw: bool = False, **generation: Any) -> tuple[list, list]:
        generation.setdefault("max_new_tokens", self.max_new_tokens)
        inferer = LlavaMedInferer(self.tokenizer, **generation, trust=self.trust or raw,
                                  calibration=None if raw else self.calibration)
        batch = collate_vqa(prepared, pad_token_id=self.tokenizer.pad_token_id or 0)
        batch, _, _, _ = prepare_vqa_batch(batch, self.model.device)
        return inferer.answer(batch, self.model)

    def ask(
        self, image: str | PathLike | None, question: str | Sequence[Any], **generation: Any
    ) -> dict[str, Any]:
        """Answer one question about one image (file, DICOM series folder, NIfTI, PNG, slide) or none.

        Args:
            image: the image path, or ``None`` for a text-only question.
            question: the question, or a multi-turn conversation ending with a user turn (earlier answers
                included, e.g. ``[("user", "Describe it."), ("assistant", "..."), ("user", "Any lesion?")]``);
                the image goes with the first turn.
            generation: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``.

        Returns:
            ``{"answer", "views", "modality", "source", "model", "latency_s", ...}`` and the trust fields
            ``confidence``, ``image_reliance``, ``abstained``, ``reason``, ``gate_distance`` (``docs/trust.md``).

        Raises:
            LlavaMedInputError: for an unreadable image or an invalid question (file and cause named).
        """
        start = time.perf_counter()
        item = {"image": str(image) if image is not None else None, "question": question}
        result = self._run([self.prepare(item)], **generation)[0][0]
        result["latency_s"] = round(time.perf_counter() - start, 4)
        return result

    def ask_all(
        self, image: str | PathLike | None, questions: Sequence[str], batch_size: int = 8, **generation: Any
    ) -> list[dict[str, Any]]:
        """Answer several questions about one image: it is read once, the questions share ``generate`` calls.

        Each entry is what :meth:`ask` returns for that question (``latency_s``: the whole call's time).

        Args:
            image: as for :meth:`ask`.
            questions: the questions, in order.
            batch_size: prompts per ``generate``.
            generation: as for :meth:`ask`.

        Raises:
            LlavaMedInputError: for an unreadable image or an invalid question (file and cause named).
        """
        start = time.perf_counter()
        items = [{"image": str(image) if image is not None else None, "question": q} for q in questions]
        results = [entry for entry, _ in self._batches(items, batch_size, False, True, **generation)]
        for result in results:
            result["latency_s"] = round(time.perf_counter() - start, 4)
        return results

    def preparer(
        self, preprocess: Callable[[str], Mapping[str, Any]] | None = None, raise_errors: bool = True
    ) -> PrepareVqaItem:
        """A :class:`PrepareVqaItem` like :attr:`prepare` (same tokenizer, template, probes), with another pixel
        pipeline: e.g. one that keeps images already read (the server's cache, a chat's current image).

        Args:
            preprocess: ``path -> {"pixel_values", ...}`` (default :attr:`prepare`'s own).
            raise_errors: raise input errors instead of recording them in the item.
        """
        return PrepareVqaItem(
            self.tokenizer, self.model, preprocess=preprocess or self.prepare.preprocess,
            template=self.prepare.template, raise_errors=raise_errors, paired_probes=self.paired_probes,
        )

    def _batches(
        self, items: Sequence[Mapping[str, Any]], batch_size: int, raw: bool, raise_errors: bool, **generation: Any
    ) -> list[tuple[dict[str, Any], AnswerScores | None]]:
        """Answer ``items`` ``batch_size`` at a time, each image read once for the questions about it (the last four
        images read are kept for the call)."""
        prepare = self.preparer(functools.lru_cache(maxsize=4)(self.prepare.preprocess), raise_errors=raise_errors)
        out: list[tuple[dict[str, Any], AnswerScores | None]] = []
        for start in range(0, len(items), batch_size):
            entries, scores = self._run([prepare(it) for it in items[start : start + batch_size]], raw=raw,
                                        **generation)
            out += zip(entries, scores)
        return out

    def ask_batch(
        self, items: Sequence[Mapping[str, Any]], batch_size: int = 8, **generation: Any
    ) -> list[dict[str, Any]]:
        """Answer many ``{"image", "question", "id"?}`` items, ``batch_size`` prompts per ``generate``.

        A failing item yields ``{"error": "ErrorType: <file>: cause"}`` in its place, whatever raised it (see
        :func:`~monai_llava_med.errors.as_input_error`); the others are answered.

        Args:
            items: the questions.
            batch_size: prompts per ``generate``.
            generation: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``.

        Returns:
            one entry per item, in order.
        """
        return [entry for entry, _ in self.score_batch(items, batch_size, raw=False, **generation)]

    def score_batch(
        self, items: Sequence[Mapping[str, Any]], batch_size: int = 8, raw: bool = True, **generation: Any
    ) -> list[tuple[dict[str, Any], AnswerScores | None]]:
        """Like :meth:`ask_batch`, with each entry's :class:`~monai_llava_med.trust.AnswerScores` (``None`` for an
        error entry): the uncalibrated numbers a calibration is fitted on
        (:func:`~monai_llava_med.engines.fit_calibration`).

        Args:
            items: the questions.
            batch_size: prompts per ``generate``.
            raw: leave the calibration out of the entries' trust fields.
            generation: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``.
        """
        return self._batches(items, batch_size, raw, False, **generation)

