# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The SDK's stock ``DICOMSeriesToVolumeOperator``, made to end the run cleanly when nothing was selected.

The stock operator raises a bare ``ValueError`` when the series selector selected nothing (no series matched
its rules), which the Holoscan executor reports with a traceback. :class:`SelectedSeriesToVolumeOperator`
records a :class:`~monai_llava_med.errors.SeriesSelectionError` in the run's
:class:`~.outcome.DeployOutcome` instead and emits nothing, so no answer and no SR are made; otherwise it is
the stock operator (same ports, same ``Image``). Needs the MONAI Deploy App SDK (``make deploy-venv``).
"""

from __future__ import annotations

from typing import Any

from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from ...errors import SeriesSelectionError
from .outcome import DeployOutcome

__all__ = ["SelectedSeriesToVolumeOperator"]


class SelectedSeriesToVolumeOperator(DICOMSeriesToVolumeOperator):
    """Stock series-to-volume conversion; an empty selection is a typed error recorded in ``outcome``.

    Input port ``study_selected_series_list`` (``List[StudySelectedSeries]``), output port ``image`` (``Image``
    of the first selected series), as the stock operator.

    Args:
        fragment: the application (or fragment) the operator belongs to.
        args: conditions and resources, as for any Holoscan operator.
        outcome: where an empty selection is recorded (default: a private one).
        where: the input named by the error (the app's input folder).
        kwargs: the stock operator's options (``affine_lps_to_ras``, ``name``).
    """

    def __init__(
        self, fragment: Any, *args: Any, outcome: DeployOutcome | None = None, where: str | None = None, **kwargs: Any
    ) -> None:
        self.outcome = outcome if outcome is not None else DeployOutcome()
        self.where = where
        super().__init__(fragment, *args, **kwargs)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        """Convert the first selected series to an ``Image`` and emit it; with no selected series emit nothing."""
        selected = op_input.receive(self.input_name_series)
        if not selected or not any(study.selected_series for study in selected):
            self.outcome.fail(SeriesSelectionError("no DICOM series matched the selection rules", self.where))
            return
        op_output.emit(self.convert_to_image(selected), self.output_name_image)
