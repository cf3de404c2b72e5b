# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Answers as a DICOM Comprehensive SR: content read back with highdicom, evidence, identity, dciodvfy, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
import pytest
from dciodvfy_check import dciodvfy_errors

from monai_llava_med.errors import DicomDecodeError, DicomSRError, LlavaMedInputError

hd = pytest.importorskip("highdicom")
from pydicom.sr.codedict import codes  # noqa: E402

from monai_llava_med.engines import (  # noqa: E402
    build_answer_sr,
    read_answer_sr,
    weights_sha256,
    write_answer_sr,
    write_bundle_answer_sr,
)

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "llava_med"
SERIES = BUNDLE / "sample" / "ct_series"
MODEL_DIR = BUNDLE / "models"
SHA = hashlib.sha256((MODEL_DIR / "model.safetensors").read_bytes()).hexdigest()
MODEL = {"model_name": "llava-med-phantom-demo", "model_version": "0.2.0", "weights_sha256": SHA}
TRUSTED = [
    {"id": "ct_series-0", "question": "Is there a lesion anywhere in the scan?", "answer": "yes", "confidence": 0.97,
     "image_reliance": 0.62, "abstained": False, "reason": None},
    {"id": "ct_series-1", "question": "How many lesions are there?", "answer": "two", "confidence": 0.41,
     "image_reliance": 0.05, "abstained": True, "reason": "answer does not depend on the image"},
]
PLAIN = [{"question": "Which side is the larger lesion on?", "answer": "left", "model": "llava-med-phantom-demo"}]
MISSING_TYPE2 = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                 "AccessionNumber", "StudyID")


def _files() -> list[Path]:
    return sorted(SERIES.glob("*.dcm"))


def _groups(path):
    sr = hd.sr.srread(path)
    return sr, sr.content.get_image_measurement_groups()


def _texts(group) -> dict[str, str]:
    return {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
            for item in group[0].ContentSequence if item.ValueType == "TEXT"}


def test_sr_holds_answers_trust_fields_evidence_and_identity(tmp_path):
    out = write_answer_sr(TRUSTED + PLAIN, _files(), tmp_path / "sr" / "answers.dcm", **MODEL)
    assert sorted(p.name for p in out.parent.iterdir()) == ["answers.dcm"]  # no temporary file left behind
    sr, groups = _groups(out)
    assert isinstance(sr, hd.sr.ComprehensiveSR) and sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert len(groups) == 3
    for group, expected in zip(groups, TRUSTED):
        assert group.tracking_identifier == expected["id"]
        texts = _texts(group)
        assert texts["Question"] == expected["question"] and texts["Answer"] == expected["answer"]
        numbers = {m.name.meaning: m.value for m in group.get_measurements()}
        assert numbers == pytest.approx({"Answer confidence": expected["confidence"],
                                         "Image reliance": expected["image_reliance"]})
        (abstained,) = group.get_qualitative_evaluations()
        assert abstained.name.meaning == "Abstained"
        assert abstained.value == (codes.SCT.Yes if expected["abstained"] else codes.SCT.No)
        assert texts.get("Abstention reason") == expected["reason"]
    plain = groups[2]
    assert _texts(plain)["Answer"] == "left" and _texts(plain)["Question"] == PLAIN[0]["question"]
    assert plain.get_measurements() == [] and plain.get_qualitative_evaluations() == []
    assert "Abstention reason" not in _texts(plain)

    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in _files()]
    evidence = sr.get_evidence()
    assert {e[2] for e in evidence} == {s.SOPInstanceUID for s in sources} and len(evidence) == len(sources)
    assert {e[3] for e in evidence} == {pydicom.uid.CTImageStorage}
    first = sources[0]
    assert sr.StudyInstanceUID == first.StudyInstanceUID and sr.PatientID == first.PatientID
    assert str(sr.PatientName) == str(first.PatientName) and sr.StudyID == first.StudyID
    assert sr.SeriesInstanceUID != first.SeriesInstanceUID
    assert sr.SOPInstanceUID not in {s.SOPInstanceUID for s in sources} and sr.Modality == "SR"
    assert "research use only, not for diagnosis" in sr.SeriesDescription.lower()
    comments = [i.TextValue for i in sr.ContentSequence
                if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Comment"]
    assert comments == ["Research use only, not for diagnosis."]

    (observer,) = sr.content.get_observer_contexts(observer_type=codes.cid270.Device)
    device = observer.observer_identifying_attributes
    assert device.name == "llava-med-phantom-demo" and device.serial_number == SHA
    algorithm = {k: v for k, v in _texts(groups[0]).items() if k.startswith("Algorithm")}
    assert algorithm == {"Algorithm Name": "llava-med-phantom-demo", "Algorithm Version": "0.2.0",
                         "Algorithm Parameters": f"weights sha256 {SHA}"}
    assert dciodvfy_errors(out) == []


def test_two_srs_of_one_study_are_new_instances(tmp_path):
    a = pydicom.dcmread(write_answer_sr(PLAIN, _files()[:2], tmp_path / "a.dcm", **MODEL))
    b = pydicom.dcmread(write_answer_sr(PLAIN, _files()[:2], tmp_path / "b.dcm", **MODEL))
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID and a.SeriesInstanceUID != b.SeriesInstanceUID
    fixed = build_answer_sr(PLAIN, _files()[:1], series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5", **MODEL)
    assert (fixed.SeriesInstanceUID, fixed.SOPInstanceUID) == ("1.2.3.4", "1.2.3.4.5")


def test_read_answer_sr_returns_what_was_written(tmp_path):
    unicode = {"question": "Où est la lésion ?", "answer": "à gauche — 2 cm", "confidence": 1.0, "abstained": False}
    out = write_answer_sr([*TRUSTED, unicode], [SERIES], tmp_path / "sr.dcm", **MODEL)  # a series folder as source
    back = read_answer_sr(out)
    assert back[0] == {k: v for k, v in TRUSTED[0].items() if v is not None}
    assert back[1] == TRUSTED[1]
    assert back[2] == {"id": "answer 3", **unicode}
    assert len(hd.sr.srread(out).get_evidence()) == len(_files())


def test_source_missing_type2_attributes_gives_a_valid_sr_with_them_empty(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for path in _files()[:3]:
        ds = pydicom.dcmread(path)
        for keyword in MISSING_TYPE2:
            delattr(ds, keyword)
        ds.save_as(folder / path.name)
    with pytest.raises(AttributeError, match="PatientBirthDate"):  # what highdicom does with such a source alone
        hd.sr.ComprehensiveSR(evidence=[pydicom.dcmread(folder / _files()[0].name)], content=_content(),
                              series_instance_uid=pydicom.uid.generate_uid(), series_number=1,
                              sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)
    out = write_answer_sr(TRUSTED, sorted(folder.iterdir()), tmp_path / "sr.dcm", **MODEL)
    sr = pydicom.dcmread(out)
    for keyword in MISSING_TYPE2:
        assert keyword in sr and sr[keyword].value in ("", None), keyword  # written empty, nothing invented
    assert dciodvfy_errors(out) == []
    in_memory = pydicom.dcmread(folder / _files()[0].name)
    build_answer_sr(PLAIN, [in_memory], **MODEL)
    assert "PatientBirthDate" not in in_memory and "PixelData" in in_memory  # the caller's dataset is untouched


def _content():
    return hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")


def test_bad_input_gives_typed_errors_naming_the_file(tmp_path):
    with pytest.raises(DicomSRError, match="no source instances"):
        build_answer_sr(TRUSTED, [], **MODEL)
    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM file\n")
    with pytest.raises(DicomDecodeError) as err:
        build_answer_sr(TRUSTED, [_files()[0], text], **MODEL)
    assert err.value.path == str(text) and str(text) in str(err.value)
    with pytest.raises(DicomSRError) as err:
        build_answer_sr(TRUSTED, [tmp_path / "absent.dcm"], **MODEL)
    assert err.value.path == str(tmp_path / "absent.dcm")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DicomSRError, match="no DICOM files"):
        build_answer_sr(TRUSTED, [empty], **MODEL)
    for bad, match in [({"question": "Q?", "answer": "yes", "confidence": 1.5}, "confidence"),
                       ({"question": "Q?", "answer": "yes", "abstained": "no"}, "abstained"),
                       ({"question": "Q?", "answer": "yes", "confidence": float("nan")}, "finite"),
                       ({"answer": "yes"}, "question")]:
        with pytest.raises(DicomSRError, match=match) as err:
            build_answer_sr([bad], _files()[:1], **MODEL)
        assert err.value.path == "answers[0]"
    with pytest.raises(DicomSRError, match="no answered question"):
        build_answer_sr([{"question": "Q?", "error": "ImageReadError: x"}], _files()[:1], **MODEL)
    with pytest.raises(DicomSRError, match="64 hex"):
        build_answer_sr(PLAIN, _files()[:1], **{**MODEL, "weights_sha256": "abc"})
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(DicomSRError) as err:
        write_answer_sr(PLAIN, _files()[:1], blocker / "sr.dcm", **MODEL)
    assert err.value.path == str(blocker / "sr.dcm") and not list(tmp_path.glob("**/.sr.dcm.*"))
    with pytest.raises(LlavaMedInputError):
        read_answer_sr(text)


def test_errors_quote_no_header_value(tmp_path):
    secret = "SECRET-PATIENT-4711"
    other = pydicom.dcmread(_files()[0])
    other.PatientID, other.PatientName = secret, "DOE^JANE"
    other.StudyInstanceUID = pydicom.uid.generate_uid()
    other.save_as(tmp_path / "other_study.dcm")
    no_uid = pydicom.dcmread(_files()[1])
    no_uid.PatientID = secret
    del no_uid.SOPInstanceUID
    errors = []
    for sources in ([_files()[0], tmp_path / "other_study.dcm"], [no_uid]):
        with pytest.raises(DicomSRError) as err:
            build_answer_sr(PLAIN, sources, **MODEL)
        errors.append(str(err.value))
    assert "another study" in errors[0] and str(tmp_path / "other_study.dcm") in errors[0]
    assert "SOPInstanceUID" in errors[1]
    assert not any(secret in e or "DOE" in e or other.StudyInstanceUID in e for e in errors)


def test_bundle_answers_file_to_sr(tmp_path):
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps([{**PLAIN[0], "id": "ct_series-7"}, {"question": "Q?", "error": "ImageReadError"}]))
    out = write_bundle_answer_sr(answers, [SERIES], tmp_path / "sr.dcm", model_dir=MODEL_DIR)
    sr = hd.sr.srread(out)
    (observer,) = sr.content.get_observer_contexts(observer_type=codes.cid270.Device)
    assert observer.observer_identifying_attributes.name == "llava-med-phantom-demo"
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert _texts(sr.content.get_image_measurement_groups()[0])["Algorithm Version"] == version
    assert read_answer_sr(out) == [{"id": "ct_series-7", "question": PLAIN[0]["question"], "answer": "left"}]
    assert dciodvfy_errors(out) == []


def test_weights_sha256_of_single_file_and_shards(tmp_path):
    assert weights_sha256(MODEL_DIR) == SHA
    shards = [b"first shard bytes", b"second shard bytes"]
    names = [f"model-0000{i + 1}-of-00002.safetensors" for i in range(2)]
    for name, data in zip(names, shards):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": names[1], "b": names[0]}}))
    assert weights_sha256(tmp_path) == hashlib.sha256(b"".join(shards)).hexdigest()


def test_predictor_results_become_an_sr(tmp_path):
    from monai_llava_med.engines import LlavaMedPredictor

    predictor = LlavaMedPredictor.from_pretrained(MODEL_DIR)
    result = predictor.ask(SERIES, "Is there a lesion anywhere in the scan?", max_new_tokens=4)
    out = write_bundle_answer_sr([result], [SERIES], tmp_path / "sr.dcm", model_dir=MODEL_DIR)
    (back,) = read_answer_sr(out)
    assert back["question"] == result["question"] and back["answer"] == (result["answer"] or "(no text generated)")
    for key in ("confidence", "image_reliance", "abstained"):  # the trust fields, once the predictor has them
        assert (key in back) == (result.get(key) is not None)
    assert dciodvfy_errors(out) == []


def test_image_library_on_request(tmp_path):
    out = write_answer_sr(TRUSTED, _files()[:3], tmp_path / "sr.dcm", image_library=True, **MODEL)
    sr = hd.sr.srread(out)
    library = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER"
               and i.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"]
    assert len(library) == 1
    referenced = {entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for group in library[0].ContentSequence for entry in group.ContentSequence
                  if entry.ValueType == "IMAGE"}
    assert referenced == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in _files()[:3]}
    assert dciodvfy_errors(out) == []


def test_numpy_trust_values_are_accepted(tmp_path):
    import numpy as np

    entry = {"question": "Is there a lesion?", "answer": "no", "confidence": np.float32(0.5),
             "image_reliance": np.float64(0.25), "abstained": np.bool_(True), "reason": "low confidence"}
    out = write_answer_sr([entry], _files()[:1], tmp_path / "sr.dcm", **MODEL)
    assert read_answer_sr(out) == [{"id": "answer 1", "question": "Is there a lesion?", "answer": "no",
                                    "confidence": 0.5, "image_reliance": 0.25, "abstained": True,
                                    "reason": "low confidence"}]


def test_priming_takes_the_first_sr_s_one_time_cost(tmp_path):
    """In a fresh process the first SR pays highdicom's and pydicom's one-time loading; after
    :func:`prime_sr_builder` (what the PACS listener runs at start) the first real SR does not."""
    import subprocess
    import sys

    script = f"""
import time
from monai_llava_med.engines import build_answer_sr, prime_sr_builder
start = time.perf_counter(); prime_sr_builder(); primed = time.perf_counter()
build_answer_sr({PLAIN!r}, [{str(SERIES)!r}], **{MODEL!r})
print(primed - start, time.perf_counter() - primed)
"""
    env = {"PYTHONPATH": str(BUNDLE.parents[1]), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    prime_s, first_s = map(float, run.stdout.split())
    assert first_s < prime_s / 3, (prime_s, first_s)
