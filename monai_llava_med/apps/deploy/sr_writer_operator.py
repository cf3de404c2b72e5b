# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The DICOM SR writer operator of a MONAI Deploy application: the answers as a Comprehensive SR (TID 1500).

:class:`LlavaMedSRWriterOperator` writes the answers of :class:`~.vqa_operator.LlavaMedVQAOperator` with the
product's SR writer (:func:`~monai_llava_med.engines.write_bundle_answer_sr`, docs/dicom_sr.md): same study, new
series, the model as device observer with its weights' sha256, the trust fields, and evidence references to
**every** SOP instance of the selected series (the stock ``DICOMTextSRWriterOperator`` references none). Needs
the MONAI Deploy App SDK (``make deploy-venv``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from monai.deploy.core import Operator, OperatorSpec

from ...errors import LlavaMedInputError
from .outcome import DeployOutcome
from .vqa_operator import first_selected_series

__all__ = ["LlavaMedSRWriterOperator"]

logger = logging.getLogger(__name__)


class LlavaMedSRWriterOperator(Operator):
    """Write the answers about the selected series as one DICOM SR file in ``output_folder``.

    Named inputs:
        answers: the ``list[dict]`` of :class:`~.vqa_operator.LlavaMedVQAOperator`.
        study_selected_series_list: the ``DICOMSeriesSelectorOperator``'s output; the first selected series (the
            one answered about) gives the study identity and the evidence.

    Named output:
        None. File output: ``<SR SOP Instance UID>.dcm`` (the SDK writers' naming) in ``output_folder``; the path
        is appended to ``outcome.sr_files``. A typed error (e.g. answers without a question) is recorded in
        ``outcome`` and no file is written.

    Args:
        fragment: the application (or fragment) the operator belongs to.
        args: conditions and resources, as for any Holoscan operator.
        output_folder: where the SR is written (created when missing).
        model_path: the model folder that answered (its weights are hashed; the bundle's
            ``configs/metadata.json`` beside it gives the version).
        outcome: where the written file or the error is recorded (default: a private one).
        model_name: the device observer's name (default: the answers' ``model``).
        model_version: default: the bundle's version, else ``monai-llava-med <version>``.
        sr_options: further options of :func:`~monai_llava_med.engines.build_answer_sr` (``series_number``,
            ``manufacturer``, ``image_library``).
        kwargs: ``name`` and the other Holoscan operator options.
    """

    def __init__(
        self,
        fragment: Any,
        *args: Any,
        output_folder: str | PathLike,
        model_path: str | PathLike,
        outcome: DeployOutcome | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
        sr_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.output_folder = Path(output_folder)
        self.model_path = Path(model_path)
        self.outcome = outcome if outcome is not None else DeployOutcome()
        self.model_name = model_name
        self.model_version = model_version
        self.sr_options = dict(sr_options or {})
        self.input_name_answers = "answers"
        self.input_name_series = "study_selected_series_list"
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the ports: inputs ``answers`` and ``study_selected_series_list``; no output port."""
        spec.input(self.input_name_answers)
        spec.input(self.input_name_series)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        """Receive the answers and the selection, write the SR (record a typed error instead of raising)."""
        answers = op_input.receive(self.input_name_answers)
        selected = op_input.receive(self.input_name_series)
        try:
            self.write(answers, selected)
        except LlavaMedInputError as err:
            self.outcome.fail(err)

    def write(self, answers: Sequence[Mapping[str, Any]], study_selected_series_list: Sequence[Any] | None) -> Path:
        """Write the SR of ``answers`` about the first selected series and return its path.

        Args:
            answers: the answer dicts.
            study_selected_series_list: the selector's output.

        Raises:
            SeriesSelectionError: nothing was selected.
            DicomSRError: malformed answers, sources that cannot be referenced, the file cannot be written.
        """
        from pydicom.uid import generate_uid

        from ...engines.dicom_sr_files import write_bundle_answer_sr

        selected = first_selected_series(study_selected_series_list)
        sources = [sop.get_native_sop_instance() for sop in selected.series.get_sop_instances()]
        options = {"sop_instance_uid": generate_uid(), **self.sr_options}
        out = self.output_folder / f"{options['sop_instance_uid']}.dcm"
        path = write_bundle_answer_sr(answers, sources, out, model_dir=self.model_path, model_name=self.model_name,
                                      model_version=self.model_version, **options)
        self.outcome.sr_files.append(path)
        logger.info("wrote the SR of %d answers referencing %d instances: %s", len(answers), len(sources), path.name)
        return path
