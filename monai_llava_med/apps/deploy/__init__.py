# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""LLaVA-Med as MONAI Deploy App SDK operators, and an example app (docs/deploy.md).

``python -m monai_llava_med.apps.deploy -i DICOM_FOLDER -o OUTPUT_FOLDER -m MODEL_DIR [--questions FILE]``
writes one DICOM Comprehensive SR of the answers about the selected series.

Modules: :mod:`.vqa_operator` (:class:`LlavaMedVQAOperator`), :mod:`.sr_writer_operator`
(:class:`LlavaMedSRWriterOperator`), :mod:`.series_to_volume` (the stock series-to-volume operator with a typed
error for an empty selection), :mod:`.outcome` (what a run produced), :mod:`.questions` (defaults, ``--questions`` file), :mod:`.app` (:class:`LlavaMedDeployApp`),
``app.yaml`` (the SDK's application manifest). The SDK (``monai-deploy-app-sdk``, with Holoscan) lives in its own
venv (``make deploy-venv``): names are imported on first use (``lazy_loader``), so importing this package, or
``monai_llava_med``, never needs it.
"""

from __future__ import annotations

import lazy_loader as _lazy

_SUBMODULE_ATTRS = {
    "app": ["SELECTION_RULES", "STOCK_LOGGERS", "LlavaMedDeployApp"],
    "questions": ["DEFAULT_QUESTIONS", "load_questions"],
    "outcome": ["DeployOutcome"],
    "series_to_volume": ["SelectedSeriesToVolumeOperator"],
    "sr_writer_operator": ["LlavaMedSRWriterOperator"],
    "vqa_operator": ["LlavaMedVQAOperator", "first_selected_series", "series_files", "staged_series"],
}

__getattr__, __dir__, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = list(_lazy_all)
