# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The LLaVA-Med question-answering operator of a MONAI Deploy application.

:class:`LlavaMedVQAOperator` takes the stock ``DICOMSeriesToVolumeOperator``'s ``Image`` and the series selector's
``study_selected_series_list``, asks the app's questions about the selected series and emits the answers.

Which pixels the model sees: the model input is built **from the selected series' instance files** by the
product's own loader (:class:`~monai_llava_med.engines.LlavaMedPredictor`, i.e. ``MedicalImageToPixels``), not
from the ``Image``'s voxel array. The SDK's ``Image`` holds rescaled voxels and the series geometry, but not what
our intensity step needs (window centre/width, MONOCHROME1 inversion from the photometric interpretation), and the
predictor takes paths; reading the files again makes the operator's answers (and whatever trust fields the
predictor returns) exactly those of ``predictor.ask(series)``, with patient axes handled once, by the product.
The ``Image`` is checked against the series (one plane per instance), so the operator answers about the series
the volume was built from. Needs the MONAI Deploy App SDK (``make deploy-venv``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from monai.deploy.core import Operator, OperatorSpec

from ...errors import LlavaMedInputError, RecordError, SeriesSelectionError, VolumeError
from .outcome import DeployOutcome

__all__ = ["LlavaMedVQAOperator", "first_selected_series", "series_files", "staged_series"]

logger = logging.getLogger(__name__)


def first_selected_series(study_selected_series_list: Sequence[Any] | None, where: str | None = None) -> Any:
    """The ``SelectedSeries`` the stock ``DICOMSeriesToVolumeOperator`` converts: the first of the first study.

    Args:
        study_selected_series_list: the selector's output (``List[StudySelectedSeries]``).
        where: the input named by the error.

    Raises:
        SeriesSelectionError: nothing was selected.
    """
    for study in study_selected_series_list or ():
        if study.selected_series:
            return study.selected_series[0]
    raise SeriesSelectionError("no DICOM series matched the selection rules", where)


def series_files(selected_series: Any, where: str | None = None) -> list[Path]:
    """The files of a selected series' SOP instances, in the loader's order.

    Args:
        selected_series: a ``SelectedSeries`` (its ``series`` is a ``DICOMSeries``).
        where: the input named by the error.

    Raises:
        SeriesSelectionError: the series has no instance read from a file.
    """
    files = []
    for sop in selected_series.series.get_sop_instances():
        name = getattr(sop.get_native_sop_instance(), "filename", None)
        if isinstance(name, (str, PathLike)) and Path(name).is_file():
            files.append(Path(name))
    if not files:
        raise SeriesSelectionError("the selected series has no instance read from a file", where)
    return files


@contextlib.contextmanager
def staged_series(files: Sequence[Path]) -> Iterator[Path]:
    """The path the predictor reads for these files: the file itself for one instance, else a temporary folder of
    links to them (the input folder may hold other series, and the loader reads one series per folder).

    Args:
        files: the series' instance files.
    """
    if len(files) == 1:
        yield Path(files[0])
        return
    with tempfile.TemporaryDirectory(prefix="llava_med_series_") as tmp:
        folder = Path(tmp) / "series"
        folder.mkdir()
        for index, file in enumerate(files):
            (folder / f"instance_{index:05d}.dcm").symlink_to(Path(file).resolve())
        yield folder


class LlavaMedVQAOperator(Operator):
    """Answer the app's questions about the selected DICOM series with LLaVA-Med.

    Named inputs:
        image: the stock ``DICOMSeriesToVolumeOperator``'s ``Image`` of the selected series.
        study_selected_series_list: the ``DICOMSeriesSelectorOperator``'s ``List[StudySelectedSeries]``.

    Named output:
        answers: ``list[dict]``, one per question, as ``LlavaMedPredictor.ask`` returns it (``question``,
        ``answer``, ``model``, ``views``, ``modality``, ``latency_s`` and the trust fields such as ``confidence``,
        ``image_reliance``, ``abstained``, ``reason`` when the predictor gives them), plus ``id``
        (``question-N``); ``image`` and ``source`` are the selection name, not the temporary folder read.

    Bad input (an unreadable series, an image that is not the series') is recorded in ``outcome`` as a typed
    error and nothing is emitted.

    Args:
        fragment: the application (or fragment) the operator belongs to.
        args: conditions and resources, as for any Holoscan operator.
        model_path: the model folder (ours, LLaVA-Med v1.5 or HF Llava); loaded once, on the first compute.
        questions: the questions asked about every series.
        outcome: where errors are recorded (default: a private one).
        device: ``cpu``, ``cuda``... (default: CUDA when available).
        max_new_tokens: longest answer in tokens.
        predictor: an already loaded ``LlavaMedPredictor`` (then ``model_path`` only names it).
        kwargs: ``name`` and the other Holoscan operator options.

    Raises:
        RecordError: no question, or a question that is not a non-empty string.
    """

    def __init__(
        self,
        fragment: Any,
        *args: Any,
        model_path: str | PathLike,
        questions: Sequence[str],
        outcome: DeployOutcome | None = None,
        device: str | None = None,
        max_new_tokens: int = 64,
        predictor: Any = None,
        **kwargs: Any,
    ) -> None:
        self.questions = [q for q in questions] if not isinstance(questions, str) else [questions]
        if not self.questions or not all(isinstance(q, str) and q.strip() for q in self.questions):
            raise RecordError("questions must be a non-empty list of non-empty strings", "questions")
        self.model_path = Path(model_path)
        self.outcome = outcome if outcome is not None else DeployOutcome()
        self.device = device
        self.max_new_tokens = int(max_new_tokens)
        self._predictor = predictor
        self.input_name_image = "image"
        self.input_name_series = "study_selected_series_list"
        self.output_name_answers = "answers"
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the ports: inputs ``image`` and ``study_selected_series_list``, output ``answers``."""
        spec.input(self.input_name_image)
        spec.input(self.input_name_series)
        spec.output(self.output_name_answers)

    @property
    def predictor(self) -> Any:
        """The ``LlavaMedPredictor``, loaded from ``model_path`` on first use."""
        if self._predictor is None:
            from ...engines.predictor import LlavaMedPredictor

            self._predictor = LlavaMedPredictor.from_pretrained(self.model_path, device=self.device,
                                                                max_new_tokens=self.max_new_tokens)
        return self._predictor

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        """Receive the image and the selection, answer, emit ``answers`` (nothing on a typed error)."""
        image = op_input.receive(self.input_name_image)
        selected = op_input.receive(self.input_name_series)
        try:
            answers = self.answer(image, selected)
        except LlavaMedInputError as err:
            self.outcome.fail(err)
            return
        op_output.emit(answers, self.output_name_answers)

    def answer(self, image: Any, study_selected_series_list: Sequence[Any] | None) -> list[dict[str, Any]]:
        """Ask every question about the selected series (what :meth:`compute` emits).

        Args:
            image: the ``Image`` of the selected series (``None`` skips the check against the series).
            study_selected_series_list: the selector's output.

        Raises:
            SeriesSelectionError: nothing selected, or a series without files.
            VolumeError: the image does not have one plane per instance of the series.
            LlavaMedInputError: the predictor cannot read the series (file and cause named).
        """
        selected = first_selected_series(study_selected_series_list)
        where = selected.selection_name or "selected series"
        files = series_files(selected, where)
        if image is not None:
            shape = tuple(image.asnumpy().shape)
            planes = shape[0] if len(shape) == 3 else 1
            if planes != len(files):
                raise VolumeError(f"the volume has {planes} planes but the series {len(files)} instances", where)
        predictor = self.predictor
        results = []
        with staged_series(files) as path:
            for index, answer in enumerate(predictor.ask_all(path, list(self.questions)), start=1):
                result = dict(answer)
                result["id"] = f"question-{index}"
                result["image"] = result["source"] = where  # not the temporary folder, gone after the run
                results.append(result)
        logger.info("answered %d questions about a series of %d instances", len(results), len(files))
        return results
