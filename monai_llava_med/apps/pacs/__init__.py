# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A PACS node for LLaVA-Med (``pacs`` extra; docs/pacs.md).

``python -m monai_llava_med.apps.pacs`` answers one study over DICOMweb and stores the answers as a DICOM SR
with STOW-RS; ``python -m monai_llava_med.apps.pacs listen`` is a C-STORE SCP that queues received studies on disk,
answers them and sends the SR back (C-STORE or STOW-RS).

Names are imported on first use (PEP 562 ``__getattr__`` via ``lazy_loader``).
"""

from __future__ import annotations

import lazy_loader as _lazy

_SUBMODULE_ATTRS = {
    "answering": ["AlgorithmIdentity", "StudyAnswer", "answer_study", "load_questions", "sr_uids", "uid_digest"],
    "dicomweb": ["DicomWebStore"],
    "dimse": ["DimseDestination", "parse_dimse_address", "start_store_scp"],
    "job_queue": ["FINAL_STATES", "IGNORED_MODALITIES", "STATES", "Instance", "Job", "JobQueue"],
    "listener": ["PacsNode"],
    "node_config": ["Destination", "NodeConfig", "make_destination"],
    "oneshot": ["answer_study_over_dicomweb"],
    "selection": [
        "DEFAULT_EXCLUDE_DESCRIPTION", "DEFAULT_MODALITIES", "QIDO_FIELDS", "SelectionRules", "SeriesInfo",
        "select_series", "series_from_headers", "series_from_qido",
    ],
}

__getattr__, __dir__, _lazy_all = _lazy.attach(__name__, submod_attrs=_SUBMODULE_ATTRS)
__all__ = list(_lazy_all)
