# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One-shot mode against a real Orthanc: retrieve over DICOMweb, answer, STOW-RS the SR, read it back two ways."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest
from dicomweb_client.api import DICOMwebClient

from monai_llava_med.apps.pacs.__main__ import main
from monai_llava_med.engines import read_answer_sr

import dciodvfy_check
from ._dimse_client import find_and_get_sr
from ._orthanc import PASSWORD, USER
from .conftest import MODEL_DIR, QUESTIONS, sop_uids_of, study_uid_of, write_study

REPO = Path(__file__).resolve().parents[2]


def _args(orthanc, study_uid: str, *extra: str, password: str = PASSWORD) -> list[str]:
    return ["--model_dir", str(MODEL_DIR), "--dicomweb", orthanc.dicomweb, "--user", USER, "--password", password,
            "--study", study_uid, *extra]


def _check_sr(ds, path: Path, study_uid: str, source_uids: set[str], questions: list[str]) -> None:
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy_check.dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    assert sr.StudyInstanceUID == study_uid and sr.Modality == "SR"
    evidence = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == source_uids
    answers = read_answer_sr(path)
    assert [a["question"] for a in answers] == questions
    assert all(a["answer"] for a in answers)


def test_oneshot_cli_stores_sr_read_back_over_dicomweb_and_dimse(orthanc, tmp_path):
    files = write_study(tmp_path, "oneshot-a")
    orthanc.upload(files)
    study_uid = study_uid_of(files)
    questions = [*QUESTIONS, "How many lesions are there?"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = _args(orthanc, study_uid, "--question", questions[0], "--question", questions[1], "--threads", "2")
    proc = subprocess.run([sys.executable, "-m", "monai_llava_med.apps.pacs", *argv], capture_output=True,
                          text=True, timeout=240, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sr_uid = proc.stdout.strip().splitlines()[-1]
    assert orthanc.sr_instances(study_uid) == [sr_uid]

    client = DICOMwebClient(orthanc.dicomweb)
    client._session.auth = (USER, PASSWORD)
    series_uid = client.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": "SR"})[0]
    web_sr = client.retrieve_instance(study_uid, series_uid["0020000E"]["Value"][0], sr_uid)
    _check_sr(web_sr, tmp_path / "web_sr.dcm", study_uid, sop_uids_of(files), questions)

    dimse = find_and_get_sr("127.0.0.1", orthanc.dicom_port, orthanc.aet, study_uid)
    assert [ds.SOPInstanceUID for ds in dimse] == [sr_uid]
    _check_sr(dimse[0], tmp_path / "dimse_sr.dcm", study_uid, sop_uids_of(files), questions)


def test_oneshot_twice_yields_one_sr(orthanc, tmp_path, capsys):
    files = write_study(tmp_path, "oneshot-b")
    orthanc.upload(files)
    study_uid = study_uid_of(files)
    uids = []
    for _ in range(2):
        assert main(_args(orthanc, study_uid, "--question", QUESTIONS[0])) == 0
        uids.append(capsys.readouterr().out.strip())
    assert uids[0] == uids[1]
    assert orthanc.sr_instances(study_uid) == [uids[0]]


@pytest.mark.parametrize("case", ["unknown_study", "bad_password", "no_matching_series", "no_question"])
def test_oneshot_errors_are_one_line_without_identifiers(orthanc, tmp_path, capsys, case):
    files = write_study(tmp_path, "oneshot-errors", description="Scout")
    orthanc.upload(files)
    study_uid = study_uid_of(files)
    target = "1.2.826.0.1.3680043.8.498.999999" if case == "unknown_study" else study_uid
    extra = [] if case == "no_question" else ["--question", QUESTIONS[0]]
    argv = _args(orthanc, target, *extra, password="wrong" if case == "bad_password" else PASSWORD)
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    expected = {"unknown_study": "StudyNotFoundError", "bad_password": "PacsError (HTTP 401)",
                "no_matching_series": "NoMatchingSeriesError", "no_question": "PacsConfigError"}[case]
    assert len(lines) == 1 and lines[0].startswith("ERROR "), captured.err
    for word in expected.split(" ("):
        assert word.strip(")") in lines[0]
    assert "Traceback" not in captured.err and target not in captured.err and "PHANTOM" not in captured.err
    assert captured.out == ""
    assert orthanc.sr_instances(study_uid) == []
