# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The example MONAI Deploy application: a folder of DICOM in, one DICOM SR of LLaVA-Med answers out.

Graph (port names on the arrows)::

    DICOMDataLoaderOperator --dicom_study_list--> DICOMSeriesSelectorOperator (SELECTION_RULES)
    DICOMSeriesSelectorOperator --study_selected_series_list--> SelectedSeriesToVolumeOperator (stock conversion)
    SelectedSeriesToVolumeOperator --image--> LlavaMedVQAOperator
    DICOMSeriesSelectorOperator --study_selected_series_list--> LlavaMedVQAOperator, LlavaMedSRWriterOperator
    LlavaMedVQAOperator --answers--> LlavaMedSRWriterOperator --> <output>/<SR SOP Instance UID>.dcm

Input, output and model folders come from the SDK's ``-i`` / ``-o`` / ``-m`` options or its environment variables
(``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``); see ``python -m
monai_llava_med.apps.deploy --help`` and docs/deploy.md. Needs the MONAI Deploy App SDK (``make deploy-venv``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from .outcome import DeployOutcome
from .questions import DEFAULT_QUESTIONS
from .series_to_volume import SelectedSeriesToVolumeOperator
from .sr_writer_operator import LlavaMedSRWriterOperator
from .vqa_operator import LlavaMedVQAOperator

__all__ = ["SELECTION_RULES", "STOCK_LOGGERS", "LlavaMedDeployApp"]

#: The series selector's rules (the SDK's JSON format): the first CT or MR series of each study.
SELECTION_RULES = json.dumps({"selections": [{"name": "CT or MR series", "conditions": {"Modality": "(?i)^(CT|MR)$"}}]})

#: Loggers of the stock operators: they log series descriptions and UIDs (header values) at INFO and WARNING.
STOCK_LOGGERS = ("monai.deploy.operators",)


class LlavaMedDeployApp(Application):
    """DICOM folder -> series selection -> volume -> LLaVA-Med answers -> DICOM Comprehensive SR.

    Args:
        argv: the SDK's command line (``[prog, "-i", IN, "-o", OUT, "-m", MODEL, ...]``; default ``sys.argv``).
        questions: asked about the selected series (default :data:`DEFAULT_QUESTIONS`).
        rules: the selector's rules JSON (default :data:`SELECTION_RULES`).
        device: the model's device (default: CUDA when available).
        max_new_tokens: longest answer in tokens.
        quiet_stock_loggers: raise the stock operators' loggers to ERROR (they log header values).
        args: further Holoscan ``Application`` arguments.
        kwargs: further Holoscan ``Application`` options.

    Attributes:
        outcome: the :class:`~.outcome.DeployOutcome` of the last run (SR files written, or the typed error).
    """

    def __init__(
        self,
        argv: Sequence[str] | None = None,
        *args: Any,
        questions: Sequence[str] | None = None,
        rules: str | None = None,
        device: str | None = None,
        max_new_tokens: int = 64,
        quiet_stock_loggers: bool = True,
        **kwargs: Any,
    ) -> None:
        self.questions = list(questions) if questions else list(DEFAULT_QUESTIONS)
        self.rules = rules or SELECTION_RULES
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.quiet_stock_loggers = quiet_stock_loggers
        self.outcome = DeployOutcome()
        # Holoscan keeps the program name in ``self.argv`` only when argv is None; the SDK's parser skips argv[0]
        self.sdk_argv = list(argv) if argv is not None else list(sys.argv)
        super().__init__(self.sdk_argv, *args, **kwargs)

    def compose(self) -> None:
        """Create the operators and connect their ports (see the module docstring)."""
        context = Application.init_app_context(self.sdk_argv)
        if self.quiet_stock_loggers:
            for name in STOCK_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
        input_path, output_path = Path(context.input_path), Path(context.output_path)
        model_path = Path(context.model_path)
        self.outcome = DeployOutcome()
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_path, must_load=False,
                                         name="study_loader_op")
        selector = DICOMSeriesSelectorOperator(self, rules=self.rules, name="series_selector_op")
        to_volume = SelectedSeriesToVolumeOperator(self, outcome=self.outcome, where=input_path,
                                                   name="series_to_vol_op")
        vqa = LlavaMedVQAOperator(self, model_path=model_path, questions=self.questions, outcome=self.outcome,
                                  device=self.device, max_new_tokens=self.max_new_tokens, name="llava_med_vqa_op")
        writer = LlavaMedSRWriterOperator(self, output_folder=output_path, model_path=model_path,
                                          outcome=self.outcome, name="llava_med_sr_writer_op")
        selection = {("study_selected_series_list", "study_selected_series_list")}
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, selection)
        self.add_flow(to_volume, vqa, {("image", "image")})
        self.add_flow(selector, vqa, selection)
        self.add_flow(vqa, writer, {("answers", "answers")})
        self.add_flow(selector, writer, selection)
