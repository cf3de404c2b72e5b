# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``python -m monai_llava_med.apps.deploy`` end to end: a DICOM folder in, one conformant SR out; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from dciodvfy_check import dciodvfy_errors
from deploy._phantoms import MODEL_DIR, QUESTIONS, phantom_series

hd = pytest.importorskip("highdicom")

pytestmark = pytest.mark.deploy
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "monai_llava_med.apps.deploy", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT, check=False)


def _texts(group) -> dict[str, str]:
    return {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
            for item in group[0].ContentSequence if item.ValueType == "TEXT"}


def test_app_writes_one_conformant_sr_about_the_series(tmp_path, ct_series, predictor):
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps(QUESTIONS), encoding="utf-8")
    (ct_series / "notes.txt").write_text("not DICOM\n", encoding="utf-8")  # the loader skips it
    out = tmp_path / "out"
    proc = _run("-i", str(ct_series), "-o", str(out), "-m", str(MODEL_DIR), "--questions", str(questions))
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(out.glob("*.dcm"))
    assert len(written) == 1 and proc.stdout.strip().splitlines() == [str(written[0])]
    assert "Traceback" not in proc.stderr

    series = [pydicom.dcmread(f) for f in sorted((ct_series / "ct").glob("*.dcm"))]
    sr = hd.sr.srread(written[0])
    assert sr.Modality == "SR" and sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert sr.StudyInstanceUID == series[0].StudyInstanceUID and sr.PatientID == series[0].PatientID
    assert sr.SeriesInstanceUID != series[0].SeriesInstanceUID  # a new series in the same study
    assert sr.SOPInstanceUID == written[0].stem
    evidence = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for ser in study.ReferencedSeriesSequence for ref in ser.ReferencedSOPSequence}
    assert evidence == {ds.SOPInstanceUID for ds in series}
    groups = sr.content.get_image_measurement_groups()
    expected = [predictor.ask(ct_series / "ct", q)["answer"] for q in QUESTIONS]
    assert [_texts(g)["Question"] for g in groups] == QUESTIONS
    assert [_texts(g)["Answer"] for g in groups] == expected
    assert dciodvfy_errors(written[0]) == []
    # nothing from the headers (patient, series description, UIDs) is printed by the app
    shown = proc.stdout.replace(str(written[0]), "") + proc.stderr
    for value in (series[0].PatientName, series[0].PatientID, series[0].StudyInstanceUID,
                  series[0].SeriesInstanceUID, series[0].SeriesDescription, series[0].SOPInstanceUID):
        assert not str(value) or str(value) not in shown


def test_no_matching_series_writes_no_sr_and_says_why(tmp_path):
    files = phantom_series(tmp_path / "in" / "us", seed=11, modality="CT")
    for f in files:  # the same conformant series, but of a modality the selection rules do not take
        ds = pydicom.dcmread(f)
        ds.Modality = "US"
        ds.save_as(f)
    out = tmp_path / "out"
    proc = _run("-i", str(tmp_path / "in"), "-o", str(out), "-m", str(MODEL_DIR))
    assert proc.returncode == 1
    assert "ERROR SeriesSelectionError:" in proc.stderr and "no DICOM series matched the selection rules" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout.strip() == ""
    assert not out.exists() or not list(out.glob("**/*.dcm"))


def test_bad_inputs_fail_on_one_line_before_the_pipeline(tmp_path, ct_series):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x", encoding="utf-8")
    bad_questions = tmp_path / "q.json"
    bad_questions.write_text('["fine", 3]', encoding="utf-8")
    cases = [
        (["-i", str(tmp_path / "empty")], "SeriesSelectionError", "the input holds no DICOM file"),
        (["-i", str(tmp_path / "missing")], "SeriesSelectionError", "no such input file or folder"),
        (["-i", str(ct_series), "--questions", str(bad_questions)], "RecordError", "non-empty string"),
        (["-i", str(ct_series), "-m", str(tmp_path / "nomodel")], "LlavaMedInputError", "no such model folder"),
    ]
    for args, kind, message in cases:
        full = [*args, "-o", str(tmp_path / "out")] + ([] if "-m" in args else ["-m", str(MODEL_DIR)])
        proc = _run(*full)
        assert proc.returncode == 1, (args, proc.stderr[-500:])
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and f"ERROR {kind}:" in proc.stderr
        assert message in proc.stderr
    assert not (tmp_path / "out").exists()
