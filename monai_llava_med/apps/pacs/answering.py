# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Answer the questions about a study's selected series and write the study's SR: the step both modes share.

The SR's Series and SOP Instance UIDs are derived from the study, the evidence (the SOP Instance UIDs the model
read), the model's weights and the questions, so answering the same study again yields the same SR UID: a PACS
that receives it twice keeps one SR.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from ... import __version__ as package_version
from ...engines.dicom_sr import weights_sha256
from ...engines.dicom_sr_files import write_answer_sr

__all__ = ["AlgorithmIdentity", "StudyAnswer", "answer_study", "load_questions", "sr_uids", "uid_digest"]


@dataclass(frozen=True)
class AlgorithmIdentity:
    """The model as the SR names it, computed once per node (hashing real weights takes a while).

    Args:
        name: model name.
        version: model version.
        weights_sha256: sha256 of the weights.
    """

    name: str
    version: str
    weights_sha256: str

    @classmethod
    def from_model_dir(cls, model_dir: str | PathLike, name: str) -> AlgorithmIdentity:
        """The identity of the model in ``model_dir`` (version from the bundle's ``configs/metadata.json``).

        Args:
            model_dir: the model folder.
            name: the loaded model's name.
        """
        folder = Path(model_dir).resolve()
        try:
            version = str(json.loads((folder.parent / "configs" / "metadata.json").read_text("utf-8"))["version"])
        except (OSError, ValueError, KeyError, TypeError):
            version = f"monai-llava-med {package_version}"
        return cls(name=name, version=version, weights_sha256=weights_sha256(folder))


@dataclass
class StudyAnswer:
    """What answering one study produced.

    Args:
        sr_path: the SR file written.
        sr_uid: its SOP Instance UID.
        answers: the answer dicts written into it.
        inference_s: seconds the predictor spent answering (the model's own time).
    """

    sr_path: Path
    sr_uid: str
    answers: list[dict[str, Any]]
    inference_s: float


def uid_digest(uid: str, salt: str) -> str:
    """A salted, shortened sha256 of a UID: names a study in logs and file names without revealing it.

    Args:
        uid: the UID.
        salt: the node's secret salt.
    """
    return hashlib.sha256(f"{salt}:{uid}".encode()).hexdigest()[:16]


def sr_uids(study_uid: str, evidence_uids: Sequence[str], identity: AlgorithmIdentity,
            questions: Sequence[str]) -> tuple[str, str]:
    """``(series_instance_uid, sop_instance_uid)`` of the study's SR, the same for the same inputs.

    Args:
        study_uid: the study.
        evidence_uids: the SOP Instance UIDs the model read.
        identity: the model.
        questions: the questions asked.
    """
    sources = [study_uid, *sorted(evidence_uids), identity.weights_sha256, identity.version, *questions]
    return generate_uid(entropy_srcs=[*sources, "series"]), generate_uid(entropy_srcs=[*sources, "instance"])


def load_questions(path: str | PathLike) -> list[str]:
    """Questions from a file: a JSON list of strings, or one question per non-empty line.

    Args:
        path: the file.

    Raises:
        ValueError: the file cannot be read or holds no question.
    """
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        items = json.loads(text)
        if not all(isinstance(q, str) for q in items):
            raise ValueError("the questions file is a JSON list with non-string entries")
        questions = [q.strip() for q in items]
    else:
        questions = [line.strip() for line in text.splitlines()]
    questions = [q for q in questions if q]
    if not questions:
        raise ValueError("the questions file holds no question")
    return questions


def answer_study(
    ask_all: Callable[..., list[dict[str, Any]]],
    series: Sequence[tuple[str | PathLike, Sequence[str]]],
    questions: Sequence[str],
    *,
    study_uid: str,
    identity: AlgorithmIdentity,
    out: str | PathLike,
    **generation: Any,
) -> StudyAnswer:
    """Ask every question about every selected series and write one SR for the study.

    Args:
        ask_all: the predictor's ``ask_all(image, questions, **generation)`` (one read of a series for all the
            questions, one batched ``generate``).
        series: ``(folder, sop_instance_uids)`` per selected series: the folder holds the series' DICOM files
            (the model reads them all; they are the SR's evidence).
        questions: the questions.
        study_uid: the study (for the SR's deterministic UIDs).
        identity: the model (:class:`AlgorithmIdentity`).
        out: the SR file to write.
        generation: passed to ``ask_all`` (``max_new_tokens``...).

    Returns:
        the SR written and the answers.

    Raises:
        LlavaMedInputError: a series cannot be read, e.g. one instance is truncated (the reader checks every
            instance's header and PixelData size before answering; the error names the file); no SR is written.
        DicomSRError: the SR cannot be built or written.
    """
    answers: list[dict[str, Any]] = []
    inference_s = 0.0
    for s, (folder, _uids) in enumerate(series):
        start = time.perf_counter()
        results = ask_all(str(folder), list(questions), **generation)
        inference_s += time.perf_counter() - start
        for q, (question, result) in enumerate(zip(questions, results)):
            entry = {k: v for k, v in result.items() if k not in ("image", "source")}
            entry["id"] = f"series {s + 1} question {q + 1}" if len(series) > 1 else f"question {q + 1}"
            entry["question"] = question
            answers.append(entry)
    evidence = [uid for _folder, uids in series for uid in uids]
    series_uid, sop_uid = sr_uids(study_uid, evidence, identity, questions)
    path = write_answer_sr(answers, [folder for folder, _uids in series], out, model_name=identity.name,
                           model_version=identity.version, weights_sha256=identity.weights_sha256,
                           series_instance_uid=series_uid, sop_instance_uid=sop_uid)
    return StudyAnswer(sr_path=Path(path), sr_uid=sop_uid, answers=answers, inference_s=inference_s)
