# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Listener mode against a real Orthanc: Orthanc C-STOREs studies to the node, the node stores the SR back."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

import dciodvfy_check
from monai_llava_med.apps.pacs import JobQueue, NodeConfig, PacsNode
from monai_llava_med.engines import read_answer_sr

from ._orthanc import PASSWORD, USER, free_port
from .conftest import MODEL_DIR, QUESTIONS, sop_uids_of, study_uid_of, write_study


@pytest.fixture()
def make_node(orthanc, predictor, tmp_path):
    """Build, start and register a listener (Orthanc modality 'llava'); every node is stopped at the end."""
    nodes: list[PacsNode] = []

    def make(start: bool = True, **overrides) -> PacsNode:
        settings = dict(ae_title="LLAVA", port=0, model_dir=str(MODEL_DIR), queue=str(tmp_path / "queue.db"),
                        destination=f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", questions=QUESTIONS,
                        idle_timeout_s=0.5, backoff_s=0.3, max_backoff_s=1.0, poll_s=0.05, network_timeout_s=5.0,
                        max_new_tokens=8)
        settings.update(overrides)
        node = PacsNode(NodeConfig(**settings), predictor)
        nodes.append(node)
        if start:
            node.start()
            orthanc.add_modality("llava", "LLAVA", node.port)
        return node

    yield make
    for node in nodes:
        node.stop()


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _deliver(orthanc, tmp_path: Path, case_id: str, **kwargs) -> tuple[list[Path], str]:
    files = write_study(tmp_path, case_id, **kwargs)
    orthanc.send_study("llava", orthanc.upload(files))
    return files, study_uid_of(files)


def _final_job(node: PacsNode, study_uid: str, timeout_s: float = 120.0):
    return _wait(lambda: (j := node.queue.job_for_study(study_uid)) is not None
                 and j.state in ("done", "no_match", "error", "failed") and j, timeout_s, "the job to finish")


def _assert_no_identifiers(caplog, files: list[Path]) -> None:
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    secrets = {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.PatientID), "PHANTOM", *sop_uids_of(files)}
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "job " in text  # the node did log
    assert not [s for s in secrets if s in text]


def test_listener_answers_study_and_duplicate_delivery_yields_one_sr(orthanc, make_node, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="monai_llava_med.pacs")
    node = make_node()
    files, study_uid = _deliver(orthanc, tmp_path, "listen-a")
    (sr_uid,) = orthanc.wait_sr(study_uid)
    job = _final_job(node, study_uid)
    assert job.state == "done" and job.sr_uid == sr_uid and job.error is None
    sr_path = tmp_path / "sr.dcm"
    sr_path.write_bytes(Path(job.sr_path).read_bytes())
    assert dciodvfy_check.dciodvfy_errors(sr_path) == []
    sr = hd.sr.srread(sr_path)
    evidence = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == sop_uids_of(files)
    assert [a["question"] for a in read_answer_sr(sr_path)] == QUESTIONS

    orthanc.send_study("llava", orthanc.upload(files))  # the same study again
    time.sleep(1.5)  # longer than the idle timeout: a re-opened job would be queued by now
    assert node.wait_idle(120)
    again = node.queue.job_for_study(study_uid)
    assert again.state == "done" and again.claimed_at == job.claimed_at  # not answered a second time
    assert len(node.queue.jobs()) == 1
    kept = node.queue.instances(job.id)  # the images once each, and our own SR (Orthanc sent the whole study)
    assert {i.sop_uid for i in kept if i.modality == "CT"} == sop_uids_of(files) and len(kept) == len(files) + 1
    assert [i.sop_uid for i in kept if i.modality == "SR"] == [sr_uid]
    assert orthanc.sr_instances(study_uid) == [sr_uid]
    _assert_no_identifiers(caplog, files)


def test_receiving_is_not_held_by_delayed_acknowledgements(orthanc, make_node, tmp_path):
    # Orthanc's DCMTK sends with Nagle's algorithm on: unless the node acknowledges each read at once, every
    # instance waits for the kernel's delayed-ACK timer (>= 40 ms), so 24 instances would take >= 0.96 s
    node = make_node(idle_timeout_s=3600.0)
    files, study_uid = _deliver(orthanc, tmp_path, "listen-fast", depth=24)
    job = node.queue.job_for_study(study_uid)
    assert len(node.queue.instances(job.id)) == len(files) == 24
    assert job.last_received - job.first_received < 0.8  # ~0.1 s here; >= 24 x 40 ms if every instance waited


def test_listener_retries_while_pacs_is_down_then_stores(orthanc, make_node, tmp_path):
    # the study stays "receiving" (idle timeout 1 h) until Orthanc has exited: with a short idle timeout a slow
    # Orthanc shutdown on a loaded machine could still accept the SR, and the job would never fail
    node = make_node(idle_timeout_s=3600.0, max_attempts=100)
    files, study_uid = _deliver(orthanc, tmp_path, "listen-down")
    orthanc.stop()  # returns once the process is gone
    assert node.queue.job_for_study(study_uid).state == "receiving"
    node.queue.promote_idle(0.0)  # what the worker does after the idle timeout
    try:
        job = _wait(lambda: (j := node.queue.job_for_study(study_uid)) is not None and j.attempts >= 2 and j, 180,
                    "two failed deliveries")  # bounded; generous for a loaded 2-core CI machine
        assert job.state in ("queued", "running") and "PacsUnavailableError" in job.error
        assert all(Path(i.path).is_file() for i in node.queue.instances(job.id))
    finally:
        orthanc.start()
    (sr_uid,) = orthanc.wait_sr(study_uid, timeout_s=120)
    job = _final_job(node, study_uid)
    assert job.state == "done" and job.sr_uid == sr_uid and job.error is None


def test_listener_resumes_a_crashed_job_and_stores_with_stow(orthanc, make_node, tmp_path):
    first = make_node(idle_timeout_s=3600.0)
    files, study_uid = _deliver(orthanc, tmp_path, "listen-crash")
    first.stop()
    queue = JobQueue(tmp_path / "queue.db")  # a worker took the job, then the process died
    queue.promote_idle(0.0)
    assert queue.claim().state == "running"
    queue.close()
    second = make_node(destination=orthanc.dicomweb, dest_user=USER, dest_password=PASSWORD)
    (sr_uid,) = orthanc.wait_sr(study_uid)
    job = _final_job(second, study_uid)
    assert job.state == "done" and job.sr_uid == sr_uid and len(second.queue.jobs()) == 1


def test_listener_unreadable_series_no_sr_error_recorded_study_kept(orthanc, make_node, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="monai_llava_med.pacs")
    node = make_node()
    files = write_study(tmp_path, "listen-corrupt")
    ds = pydicom.dcmread(files[3])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # half the pixels of one slice
    ds.save_as(files[3], enforce_file_format=True)
    orthanc.send_study("llava", orthanc.upload(files))
    study_uid = study_uid_of(files)
    job = _final_job(node, study_uid)
    assert job.state == "error" and job.sr_uid is None
    assert job.error.startswith(("DicomDecodeError", "ImageReadError", "VolumeError"))
    kept = node.queue.instances(job.id)
    assert len(kept) == len(files) and all(Path(i.path).is_file() for i in kept)
    assert orthanc.sr_instances(study_uid) == []
    _assert_no_identifiers(caplog, files)


def test_listener_study_without_matching_series(orthanc, make_node, tmp_path):
    node = make_node()
    _files, study_uid = _deliver(orthanc, tmp_path, "listen-scout", description="Scout")
    job = _final_job(node, study_uid)
    assert job.state == "no_match" and "NoMatchingSeriesError" in job.error and job.sr_uid is None
    assert orthanc.sr_instances(study_uid) == []


def test_listener_gives_up_after_max_attempts_and_keeps_the_study(orthanc, make_node, tmp_path):
    node = make_node(destination=f"dimse://NOBODY@127.0.0.1:{free_port()}", max_attempts=3, backoff_s=0.1)
    files, study_uid = _deliver(orthanc, tmp_path, "listen-giveup")
    job = _final_job(node, study_uid)
    assert job.state == "failed" and job.attempts == 3 and "PacsUnavailableError" in job.error
    assert Path(job.sr_path).is_file()  # the SR written, kept for a manual resend
    assert all(Path(i.path).is_file() for i in node.queue.instances(job.id))
