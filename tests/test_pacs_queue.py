# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The PACS node's job queue, series selection and destinations, without a PACS (tests/pacs has the Orthanc ones)."""

from __future__ import annotations

import socket

import pytest

from monai_llava_med.apps.pacs import (
    DimseDestination,
    JobQueue,
    SelectionRules,
    SeriesInfo,
    load_questions,
    make_destination,
    select_series,
    sr_uids,
)
from monai_llava_med.apps.pacs.answering import AlgorithmIdentity
from monai_llava_med.errors import PacsConfigError, PacsUnavailableError

pytest.importorskip("pynetdicom")


def _record(queue: JobQueue, study: str, sop: str, modality: str = "CT", now: float = 100.0):
    return queue.record_instance(study, f"{study}.1", sop, modality, f"/x/{sop}.dcm", now=now)


def test_queue_states_duplicates_and_growth(tmp_path):
    queue = JobQueue(tmp_path / "q.db")
    job_id, new = _record(queue, "1.2.3", "1.2.3.1.1")
    assert new and _record(queue, "1.2.3", "1.2.3.1.1") == (job_id, False)  # duplicate instance
    assert queue.promote_idle(10.0, now=105.0) == []  # not idle long enough
    assert queue.promote_idle(10.0, now=111.0) == [job_id]
    job = queue.claim(now=111.0)
    assert job.id == job_id and job.state == "running" and queue.claim(now=111.0) is None
    assert queue.finish(job_id, "done") == "done"
    _record(queue, "1.2.3", "1.2.3.1.1", now=200.0)  # delivered again: stays done
    _record(queue, "1.2.3", "1.2.3.9.1", modality="SR", now=200.0)  # our own SR coming back: stays done
    assert queue.job(job_id).state == "done" and len(queue.jobs()) == 1
    _record(queue, "1.2.3", "1.2.3.1.2", now=300.0)  # a new image: the study grew, answer it again
    assert queue.job(job_id).state == "receiving" and queue.job(job_id).sr_uid is None
    assert queue.counts()["receiving"] == 1


def test_queue_backoff_failed_recover_and_growth_while_running(tmp_path):
    queue = JobQueue(tmp_path / "q.db")
    job_id, _ = _record(queue, "1.2.4", "1.2.4.1.1")
    queue.promote_idle(0.0, now=101.0)
    queue.claim(now=101.0)
    delays = []
    for _ in range(3):
        state, delay = queue.retry(job_id, "PacsUnavailableError: down", max_attempts=4, base_s=1.0, max_s=3.0)
        delays.append((state, delay))
    assert delays == [("queued", 1.0), ("queued", 2.0), ("queued", 3.0)]
    assert queue.claim(now=0.0) is None  # not due yet
    assert queue.retry(job_id, "PacsUnavailableError: down", 4, 1.0, 3.0) == ("failed", 0.0)
    job = queue.job(job_id)
    assert job.state == "failed" and job.attempts == 4 and "down" in job.error

    other, _ = _record(queue, "1.2.5", "1.2.5.1.1")
    queue.promote_idle(0.0, now=101.0)
    claimed = queue.claim(now=101.0)
    queue.close()
    reopened = JobQueue(tmp_path / "q.db")  # the process died with the job running
    assert reopened.recover() == 1 and reopened.job(other).state == "queued"
    claimed = reopened.claim()
    reopened.record_instance("1.2.5", "1.2.5.1", "1.2.5.1.2", "CT", "/x/b.dcm", now=claimed.claimed_at + 1)
    assert reopened.finish(other, "done") == "receiving"  # an image arrived while it ran: not done
    assert reopened.salt == JobQueue(tmp_path / "q.db").salt and len(reopened.salt) == 32


def test_selection_rules_defaults_and_order():
    series = [SeriesInfo("a", "CT", "CHEST", "Scout", 1, 2), SeriesInfo("b", "CT", "CHEST", "Axial 5mm", 2, 40),
              SeriesInfo("c", "CT", "ABDOMEN", "Axial 1mm", 3, 200), SeriesInfo("d", "SR", "", "Report", 9, 1),
              SeriesInfo("e", "MR", "HEAD", "T1 axial", 4, 200)]
    assert [s.series_uid for s in select_series(series, SelectionRules())] == ["c"]  # largest, lowest number
    assert [s.series_uid for s in select_series(series, SelectionRules(max_series=3))] == ["c", "e", "b"]
    assert [s.series_uid for s in select_series(series, SelectionRules(body_parts=("chest",)))] == ["b"]
    assert select_series(series, SelectionRules(modalities=("PT",))) == []
    rules = SelectionRules.from_mapping({"modalities": ["ct"], "include_description": "axial 5", "max_series": 2})
    assert [s.series_uid for s in select_series(series, rules)] == ["b"]
    with pytest.raises(ValueError, match="unknown selection rule"):
        SelectionRules.from_mapping({"modality": ["CT"]})


def test_sr_uids_are_deterministic_and_questions_file(tmp_path):
    identity = AlgorithmIdentity("m", "1", "0" * 64)
    first = sr_uids("1.2.3", ["1.2.3.2", "1.2.3.1"], identity, ["Q?"])
    assert first == sr_uids("1.2.3", ["1.2.3.1", "1.2.3.2"], identity, ["Q?"])  # order of the evidence
    assert first != sr_uids("1.2.3", ["1.2.3.1"], identity, ["Q?"]) and first[0] != first[1]
    (tmp_path / "q.txt").write_text("Is there a lesion?\n\n How many? \n")
    (tmp_path / "q.json").write_text('["A?", "B?"]')
    assert load_questions(tmp_path / "q.txt") == ["Is there a lesion?", "How many?"]
    assert load_questions(tmp_path / "q.json") == ["A?", "B?"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError):
        load_questions(tmp_path / "empty.txt")


def test_destinations_parse_and_an_unreachable_node_is_transient(tmp_path):
    assert isinstance(make_destination("dimse://PACS@127.0.0.1:104"), DimseDestination)
    for bad in ("PACS@host", "dimse://WAY_TOO_LONG_AE_TITLE_X@h:1", "ftp://x", "PACS@h:70000"):
        with pytest.raises(PacsConfigError):
            make_destination(bad)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nobody listens there
    sr = tmp_path / "x.dcm"
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = ComprehensiveSRStorage, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(sr, enforce_file_format=True)
    with pytest.raises(PacsUnavailableError, match="no association"):
        DimseDestination("PACS", "127.0.0.1", port, timeout_s=2.0).store(sr)
