# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""DICOM SR files of answers: write one atomically, write one from the bundle's answers, read one back.

The document itself is built by :func:`.dicom_sr.build_answer_sr` (docs/dicom_sr.md describes its content).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from io import BytesIO
from os import PathLike
from pathlib import Path
from typing import Any

from monai.utils import optional_import
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .. import __version__ as package_version
from ..atomic_files import atomic_write_bytes
from ..errors import DicomSRError
from ..networks.checkpoint_files import model_name as checkpoint_model_name
from .dicom_sr import CODES, CODING_SCHEME, build_answer_sr, weights_sha256

hd, _HAS_HIGHDICOM = optional_import("highdicom")

__all__ = ["read_answer_sr", "write_answer_sr", "write_bundle_answer_sr"]


def write_answer_sr(
    answers: Sequence[Mapping[str, Any]],
    sources: Sequence[Dataset | str | PathLike],
    out: str | PathLike,
    **kwargs: Any,
) -> Path:
    """Build the SR (:func:`build_answer_sr`) and write it to ``out`` atomically (temporary file, fsync, rename).

    Args:
        answers: the answer dicts.
        sources: the source datasets or DICOM files.
        out: the SR file to write (its folder is created).
        kwargs: ``model_name``, ``model_version``, ``weights_sha256`` and the other options of
            :func:`build_answer_sr`.

    Returns:
        ``out``.
    """
    sr = build_answer_sr(answers, sources, **kwargs)
    out = Path(out)
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    try:
        atomic_write_bytes(out, buffer.getvalue())
    except OSError as err:
        raise DicomSRError(f"cannot write the SR ({err.strerror or type(err).__name__})", out) from err
    return out


def write_bundle_answer_sr(
    answers: Sequence[Mapping[str, Any]] | str | PathLike,
    sources: Sequence[Dataset | str | PathLike],
    out: str | PathLike,
    *,
    model_dir: str | PathLike,
    model_name: str | None = None,
    model_version: str | None = None,
    **kwargs: Any,
) -> Path:
    """Write the SR of the bundle's answers about one study: the entry point for pipelines (Deploy, PACS).

    Args:
        answers: the answer dicts, or the bundle's ``answers.json``; pass the answers about ``sources`` only.
        sources: the study's DICOM files or series folders the answers are about (or pydicom datasets).
        out: the SR file to write.
        model_dir: the model folder that answered (its weights are hashed).
        model_name: default: the answers' ``model`` field when they agree, else the folder's name.
        model_version: default: the ``version`` of the bundle's ``configs/metadata.json`` beside ``model_dir``,
            else ``monai-llava-med <package version>``.
        kwargs: further options of :func:`build_answer_sr` (``series_number``, UIDs).

    Returns:
        ``out``.
    """
    if isinstance(answers, (str, PathLike)):
        try:
            answers = json.loads(Path(answers).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DicomSRError(f"cannot read the answers file ({type(err).__name__})", answers) from err
        if not isinstance(answers, list):
            raise DicomSRError("the answers file does not hold a list of answers", answers)
    folder = Path(model_dir)
    if model_name is None:
        names = {str(a.get("model")) for a in answers if isinstance(a, Mapping) and a.get("model")}
        model_name = names.pop() if len(names) == 1 else checkpoint_model_name(folder.resolve())
    if model_version is None:
        metadata = folder.resolve().parent / "configs" / "metadata.json"
        try:
            model_version = str(json.loads(metadata.read_text(encoding="utf-8"))["version"])
        except (OSError, ValueError, KeyError, TypeError):
            model_version = f"monai-llava-med {package_version}"
    return write_answer_sr(answers, sources, out, model_name=model_name, model_version=model_version,
                           weights_sha256=weights_sha256(folder), **kwargs)


def read_answer_sr(path: str | PathLike) -> list[dict[str, Any]]:
    """The answers an SR written by :func:`write_answer_sr` holds, as dicts (the trust fields present when written).

    Args:
        path: the SR file.

    Raises:
        DicomSRError: the file is not a TID 1500 SR (the error names the file).
    """
    if not _HAS_HIGHDICOM:
        raise ImportError("reading DICOM SR needs highdicom (pip install 'monai-llava-med[io]')")
    try:
        sr = hd.sr.srread(path)
        groups = sr.content.get_image_measurement_groups()
    except Exception as err:  # InvalidDicomError, ValueError, AttributeError ...
        raise DicomSRError(f"not a readable TID 1500 SR ({type(err).__name__})", path) from err
    fields = {value: key for key, (value, _meaning) in CODES.items()}
    results = []
    for group in groups:
        entry: dict[str, Any] = {"id": group.tracking_identifier}
        for item in group[0].ContentSequence:
            concept = item.ConceptNameCodeSequence[0]
            key = fields.get(concept.CodeValue) if concept.CodingSchemeDesignator == CODING_SCHEME else None
            if key is None:
                continue
            if item.ValueType == "TEXT":
                entry[key] = item.TextValue
            elif item.ValueType == "NUM":
                entry[key] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE":
                entry[key] = item.ConceptCodeSequence[0].CodeValue == codes.SCT.Yes.value
        results.append(entry)
    return results
