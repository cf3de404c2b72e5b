# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Answers as a DICOM Comprehensive SR (highdicom): TID 1500 Measurement Report, one TID 1501 group per answer.

The document belongs to the source study (same Study Instance UID, the Patient and General Study modules
copied from the first source) in a new series with a new SOP Instance UID. Its content tree (docs/dicom_sr.md
draws it):

- the device observer (TID 1004): the model, its version and the sha256 of its weights;
- the procedure reported, from the sources' modality (CID 100);
- every source instance as the document's evidence (Current Requested Procedure Evidence Sequence), and on
  request in an image library (TID 1600);
- per answer a Measurement Group (TID 1501): tracking identifier (the answer's id) and UID, the algorithm
  (TID 4019), ``confidence`` and ``image_reliance`` as NUM items (unit ``1``), ``abstained`` as a CODE
  (SCT Yes/No), and TEXT items for the question, the answer and the abstention ``reason``. The trust fields
  are written when the answer dict has them and left out when it does not;
- a TEXT Comment "Research use only, not for diagnosis." (also in the Series Description).

Concepts with no standard code use the private coding scheme ``99LLAVAMED`` (:data:`CODES`), declared in the
Coding Scheme Identification Sequence. Writing and reading files: :mod:`.dicom_sr_files`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import numbers
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import optional_import
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, generate_uid

from ..errors import DicomSRError
from ..networks.checkpoint_files import weight_files
from ..transforms.dicom_header import read_dicom_header
from ..transforms.input_kind import is_dicom_file
from ..transforms.readers import QuietReaders

hd, _HAS_HIGHDICOM = optional_import("highdicom")

__all__ = [
    "CODES", "CODING_SCHEME", "RESEARCH_USE", "SR_SERIES_DESCRIPTION", "build_answer_sr", "prime_sr_builder",
    "weights_sha256",
]

RESEARCH_USE = "Research use only, not for diagnosis."
SR_SERIES_DESCRIPTION = "LLaVA-Med answers - research use only, not for diagnosis"
CODING_SCHEME = "99LLAVAMED"
CODES = {
    "question": ("LLM-Q", "Question"),
    "answer": ("LLM-A", "Answer"),
    "confidence": ("LLM-CONF", "Answer confidence"),
    "image_reliance": ("LLM-IMGREL", "Image reliance"),
    "abstained": ("LLM-ABST", "Abstained"),
    "reason": ("LLM-REASON", "Abstention reason"),
}
_EMPTY_ANSWER = "(no text generated)"
_PIXEL_GROUP = 0x7FE0
# Type 2 attributes highdicom reads from the first source as attributes (a missing one raises AttributeError)
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")
_TYPE1 = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_PROCEDURES = {"CT": "CTUnspecifiedBodyRegion", "MR": "MRIUnspecifiedBodyRegion", "PT": "PETUnspecifiedBodyRegion",
               "NM": "NMUnspecifiedBodyRegion", "CR": "XRUnspecifiedBodyRegion", "DX": "XRUnspecifiedBodyRegion"}


def _code(field: str) -> Any:
    value, meaning = CODES[field]
    return hd.sr.CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=meaning)


def weights_sha256(model_dir: str | PathLike) -> str:
    """The sha256 (hex) of a model folder's weights: the weights file, or its shards read in name order.

    A single file gives what ``sha256sum model.safetensors`` prints; shards give ``cat shards | sha256sum``.

    Args:
        model_dir: a model folder (our layout, HF Llava or LLaVA-Med v1.5).

    Raises:
        CheckpointError: the folder holds no weights.
    """
    digest = hashlib.sha256()
    for path in weight_files(Path(model_dir)):
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _source_dataset(source: Dataset | str | PathLike, position: int) -> tuple[Dataset, str]:
    """A copy of one source's header (no pixel data) and the name used in errors (the path, or its position)."""
    if isinstance(source, Dataset):
        where = str(getattr(source, "filename", None) or f"sources[{position}]")
        header = Dataset()  # a new dataset of the same elements, pixel data left out: the caller's is never changed
        for element in source:
            if element.tag.group < _PIXEL_GROUP:
                header.add(copy.copy(element))
    elif isinstance(source, (str, PathLike)):
        where = str(source)
        if not Path(source).is_file():
            raise DicomSRError("source is not a file or a folder of DICOM files", where)
        header = read_dicom_header(source)  # DicomDecodeError naming the file when it is not DICOM; ours to change
        for tag in [tag for tag in header.keys() if tag.group >= _PIXEL_GROUP]:
            del header[tag]
    else:
        raise DicomSRError(f"a source must be a pydicom Dataset or a path, not {type(source).__name__}",
                           f"sources[{position}]")
    missing = [k for k in _TYPE1 if not str(header.get(k, "") or "")]
    if missing:
        raise DicomSRError(f"source lacks the Type 1 attribute(s) {missing}: it cannot be referenced", where)
    for keyword in _TYPE2:  # present-but-empty is what the standard allows for an unknown Type 2 value
        if keyword not in header:
            setattr(header, keyword, "")
    return header, where


def _sources(sources: Sequence[Dataset | str | PathLike]) -> list[Dataset]:
    if isinstance(sources, (str, PathLike, Dataset)) or not sources:
        raise DicomSRError("no source instances: pass the DICOM datasets or files the answers are about",
                           "sources")
    expanded: list[Dataset | str | PathLike] = []
    for source in sources:
        if isinstance(source, (str, PathLike)) and Path(source).is_dir():  # a series folder: its DICOM files
            files = sorted(f for f in Path(source).iterdir() if f.is_file() and is_dicom_file(f))
            if not files:
                raise DicomSRError("folder holds no DICOM files", source)
            expanded.extend(files)
        else:
            expanded.append(source)
    headers, study, names = [], None, {}
    with QuietReaders():  # once for all the files (muting the readers' loggers costs ~4 ms each time)
        read = [_source_dataset(source, position) for position, source in enumerate(expanded)]
    for header, where in read:
        if study is None:
            study = header.StudyInstanceUID
        elif header.StudyInstanceUID != study:
            raise DicomSRError("source belongs to another study than the first source (one SR per study)", where)
        if header.SOPInstanceUID in names:
            continue  # the same instance passed twice: referenced once
        names[header.SOPInstanceUID] = where
        headers.append(header)
    return headers


def _number(entry: Mapping[str, Any], key: str, where: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DicomSRError(f"{key} must be a finite number, got a {type(value).__name__}", where)
    if key == "confidence" and not 0.0 <= value <= 1.0:
        raise DicomSRError("confidence must lie in [0, 1]", where)
    return float(value)


def _text(field: str, value: str) -> Any:
    return hd.sr.TextContentItem(name=_code(field), value=value, relationship_type="CONTAINS")


def _answer_group(entry: Mapping[str, Any], index: int, algorithm: Any) -> Any:
    """One TID 1501 Measurement Group holding one answer and its trust fields."""
    where = f"answers[{index}]"
    if not isinstance(entry, Mapping):
        raise DicomSRError(f"an answer must be a dict, not {type(entry).__name__}", where)
    question, answer = entry.get("question"), entry.get("answer")
    if not isinstance(question, str) or not question.strip() or not isinstance(answer, str):
        raise DicomSRError("an answer needs a non-empty 'question' and an 'answer' string", where)
    measurements = []
    for key in ("confidence", "image_reliance"):
        value = _number(entry, key, where)
        if value is not None:
            measurements.append(hd.sr.Measurement(name=_code(key), value=value, unit=codes.UCUM.NoUnits))
    evaluations = []
    abstained = entry.get("abstained")
    if abstained is not None:
        if not isinstance(abstained, (bool, np.bool_)):
            raise DicomSRError(f"abstained must be a bool, got a {type(abstained).__name__}", where)
        value = codes.SCT.Yes if abstained else codes.SCT.No
        evaluations.append(hd.sr.QualitativeEvaluation(_code("abstained"), value))
    reason = entry.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise DicomSRError(f"reason must be a string or null, got a {type(reason).__name__}", where)
    label = str(entry.get("id") or f"answer {index + 1}")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=label),
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
    )
    items = group[0].ContentSequence
    items.append(_text("question", question))
    items.append(_text("answer", answer if answer.strip() else _EMPTY_ANSWER))
    if reason:
        items.append(_text("reason", reason))
    return group


def _procedure(headers: Sequence[Dataset]) -> Any:
    modalities = {str(h.get("Modality", "")) for h in headers}
    name = _PROCEDURES.get(modalities.pop(), "ImagingProcedure") if len(modalities) == 1 else "ImagingProcedure"
    return getattr(codes.cid100, name)


def build_answer_sr(
    answers: Sequence[Mapping[str, Any]],
    sources: Sequence[Dataset | str | PathLike],
    *,
    model_name: str,
    model_version: str,
    weights_sha256: str,
    series_number: int = 9901,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    manufacturer: str = "monai-llava-med",
    image_library: bool = False,
) -> Any:
    """Build the Comprehensive SR holding ``answers`` about ``sources`` (nothing is written).

    Args:
        answers: answer dicts (the predictor's results, the bundle's answers.json entries): ``question`` and
            ``answer`` strings, optionally ``id``, ``confidence``, ``image_reliance``, ``abstained``, ``reason``.
            Entries with an ``error`` and no ``answer`` (failed items) are left out.
        sources: every instance the model looked at, all of one study: pydicom datasets, DICOM file paths or
            series folders (their DICOM files).
        model_name: the algorithm's name (device observer name, algorithm name).
        model_version: its version.
        weights_sha256: the sha256 of its weights (:func:`weights_sha256`).
        series_number: Series Number of the new SR series.
        series_instance_uid: UID of the new series (a fresh UID when None).
        sop_instance_uid: UID of the SR instance (a fresh UID when None).
        manufacturer: the Manufacturer written in the SR's equipment module.
        image_library: also list every source in a TID 1600 Image Library (modality, geometry per instance); off
            by default: the evidence sequence already references every instance, and highdicom takes ~60 ms per
            instance to build the library.

    Returns:
        a ``highdicom.sr.ComprehensiveSR``.

    Raises:
        DicomSRError: no sources, a source of another study or without its UIDs, no answer, a malformed answer.
        DicomDecodeError: a source path is not a readable DICOM file (the error names the file).
    """
    if not _HAS_HIGHDICOM:
        raise ImportError("writing DICOM SR needs highdicom (pip install 'monai-llava-med[io]')")
    headers = _sources(sources)
    kept = [a for a in answers if not (isinstance(a, Mapping) and "answer" not in a and a.get("error"))]
    if not kept:
        raise DicomSRError("no answered question to write (every entry is missing or failed)", "answers")
    digest = str(weights_sha256).lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise DicomSRError("weights_sha256 must be 64 hex digits", "weights_sha256")
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version,
                                              parameters=[f"weights sha256 {digest}"])
    groups = [_answer_group(entry, i, algorithm) for i, entry in enumerate(kept)]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[model_name, model_version, digest]),  # the same model, the same device UID
        name=model_name, manufacturer_name=manufacturer, model_name=f"{model_name} {model_version}",
        serial_number=digest,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.cid270.Device,
                                                      observer_identifying_attributes=device))
    try:
        report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=_procedure(headers),
                                         imaging_measurements=groups,
                                         referenced_images=headers if image_library else None)
        report[0].ContentSequence.append(
            hd.sr.TextContentItem(name=codes.DCM.Comment, value=RESEARCH_USE, relationship_type="CONTAINS"))
        sr = hd.sr.ComprehensiveSR(
            evidence=headers, content=report[0],
            series_instance_uid=series_instance_uid or generate_uid(), series_number=series_number,
            sop_instance_uid=sop_instance_uid or generate_uid(), instance_number=1,
            manufacturer=manufacturer, is_complete=True, series_description=SR_SERIES_DESCRIPTION,
            specific_character_set="ISO_IR 192", manufacturer_model_name=model_name[:64],
            software_versions=str(model_version)[:64], device_serial_number=digest,
        )
        scheme = Dataset()  # declare the private coding scheme (SOP Common module)
        scheme.CodingSchemeDesignator = CODING_SCHEME
        scheme.CodingSchemeName = "monai-llava-med answer concepts"
        scheme.CodingSchemeResponsibleOrganization = "monai-llava-med contributors"
        sr.CodingSchemeIdentificationSequence = [scheme]
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        # highdicom's messages can quote header values: report the class only
        raise DicomSRError(f"highdicom refused to build the SR ({type(err).__name__}; library message withheld)",
                           "sources") from err
    return sr


def prime_sr_builder() -> None:
    """Build one SR about a made-up CT instance and throw it away: highdicom reads the standard's tables, and pydicom
    its keyword index, on the first SR a process builds (about 0.7 s); a long-running service (the PACS listener)
    calls this at start, so its first study does not wait for them. Nothing is written.
    """
    source = Dataset()
    source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID = (generate_uid() for _ in range(3))
    source.SOPClassUID, source.Modality = CTImageStorage, "CT"
    answer = {"question": "Is there a lesion?", "answer": "no", "confidence": 0.5, "image_reliance": 0.0,
              "abstained": True, "reason": "low confidence"}
    build_answer_sr([answer], [source], model_name="prime", model_version="0", weights_sha256="0" * 64)
