# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The one-shot PACS mode: retrieve one study over DICOMweb, answer, store the SR with STOW-RS."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from ...errors import NoMatchingSeriesError, StudyNotFoundError
from .answering import AlgorithmIdentity, StudyAnswer, answer_study
from .dicomweb import DicomWebStore
from .selection import SelectionRules, select_series

__all__ = ["answer_study_over_dicomweb"]


def answer_study_over_dicomweb(
    predictor: Any,
    store: DicomWebStore,
    study_uid: str,
    questions: Sequence[str],
    *,
    rules: SelectionRules | None = None,
    identity: AlgorithmIdentity,
    work_dir: str | PathLike | None = None,
    **generation: Any,
) -> StudyAnswer:
    """Retrieve the study's selected series, answer the questions about them and store the SR (STOW-RS).

    The series are retrieved into a temporary folder (under ``work_dir``) removed afterwards; the returned
    ``sr_path`` no longer exists then: the SR lives in the PACS.

    Args:
        predictor: a loaded predictor (``ask_all``).
        store: the DICOMweb service.
        study_uid: the study.
        questions: the questions.
        rules: the series selection rules (default :class:`SelectionRules`).
        identity: the model (:class:`AlgorithmIdentity`).
        work_dir: where the temporary folder goes (default the system's).
        generation: passed to ``predictor.ask_all``.

    Returns:
        the answers and the SR's SOP Instance UID.

    Raises:
        StudyNotFoundError: the service holds no series of the study.
        NoMatchingSeriesError: no series passes the rules.
        PacsError: a DICOMweb request failed.
        LlavaMedInputError: a selected series cannot be read.
    """
    rules = rules or SelectionRules()
    series = store.study_series(study_uid)
    if not series:
        raise StudyNotFoundError("the DICOMweb service holds no series of the requested study", store.where)
    chosen = select_series(series, rules)
    if not chosen:
        raise NoMatchingSeriesError(f"none of the study's {len(series)} series matches the selection rules",
                                    store.where)
    with tempfile.TemporaryDirectory(prefix="llava-med-pacs-", dir=work_dir) as tmp:
        folders = []
        for i, info in enumerate(chosen):
            folder = Path(tmp) / f"series_{i + 1}"
            folders.append((folder, store.retrieve_series(study_uid, info.series_uid, folder)))
        result = answer_study(predictor.ask_all, folders, questions, study_uid=study_uid, identity=identity,
                              out=Path(tmp) / "sr" / "answers_sr.dcm", **generation)
        store.store(result.sr_path)
    return result
