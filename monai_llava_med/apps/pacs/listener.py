# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The listening PACS node: a C-STORE SCP that queues received studies and a worker that answers them.

Receiving: each instance is written to disk atomically (temporary file, fsync, rename) and recorded in the job
queue before the C-STORE response is sent, so an acknowledged instance is never lost. Files are named by salted
hashes of their UIDs: ``<storage>/<study>/<series>/<instance>.dcm``; the SR goes to ``<storage>/<study>/sr/``.
Working: a study with no new instance for ``idle_timeout_s`` is queued; the worker selects its series, answers,
writes the SR and stores it at the destination, retrying with exponential backoff while that is unreachable.
Logs name a job by its id and the salted hash of its study UID, never a UID or another header value.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from ...atomic_files import atomic_write_bytes
from ...engines.dicom_sr import prime_sr_builder
from ...errors import LlavaMedInputError, PacsError, PacsUnavailableError
from .answering import AlgorithmIdentity, answer_study, uid_digest
from .dimse import start_store_scp
from .job_queue import Job, JobQueue
from .node_config import Destination, NodeConfig, make_destination
from .selection import select_series, series_from_headers

__all__ = ["PacsNode"]

log = logging.getLogger("monai_llava_med.pacs")

_SUCCESS, _OUT_OF_RESOURCES, _CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


class PacsNode:
    """The listener: start it, let Orthanc (or any SCU) C-STORE studies to it, stop it.

    Args:
        config: the settings.
        predictor: a loaded :class:`~monai_llava_med.engines.LlavaMedPredictor` (or any object with ``ask_all`` and
            ``model_name``).
        destination: where SRs go (default: the one ``config.destination`` names).
    """

    def __init__(self, config: NodeConfig, predictor: Any, destination: Destination | None = None) -> None:
        self.config = config
        self.predictor = predictor
        self.queue = JobQueue(config.queue)
        self.salt = self.queue.salt
        self.storage = config.storage_dir
        self.destination = destination or make_destination(
            config.destination, user=config.dest_user, password=config.dest_password, calling_ae=config.ae_title,
            timeout_s=config.network_timeout_s)
        self.identity = AlgorithmIdentity.from_model_dir(config.model_dir, predictor.model_name)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._server: Any = None

    # -- receiving ---------------------------------------------------------------------------------------------
    def _label(self, job_id: int, study_uid: str) -> str:
        return f"job {job_id} (study {uid_digest(study_uid, self.salt)})"

    def on_store(self, event: Any) -> int:
        """pynetdicom ``EVT_C_STORE`` handler: write the instance, record it, then acknowledge."""
        try:
            ds = event.dataset
            study, series, sop = (str(ds.get(k, "") or "") for k in
                                  ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
            modality = str(ds.get("Modality", "") or "")
        except Exception as err:  # a dataset pynetdicom cannot decode
            log.warning("C-STORE refused: the dataset cannot be decoded (%s)", type(err).__name__)
            return _CANNOT_UNDERSTAND
        if not (study and series and sop):
            log.warning("C-STORE refused: an instance without its Study/Series/SOP Instance UID")
            return _CANNOT_UNDERSTAND
        path = (self.storage / uid_digest(study, self.salt) / uid_digest(series, self.salt)
                / f"{uid_digest(sop, self.salt)}.dcm")
        try:
            atomic_write_bytes(path, event.encoded_dataset(include_meta=True))
            job_id, new = self.queue.record_instance(study, series, sop, modality, str(path))
        except Exception as err:  # disk full, database locked: the sender may try again
            log.error("C-STORE failed: cannot keep the instance (%s)", type(err).__name__)
            return _OUT_OF_RESOURCES
        if not new:
            log.info("%s: duplicate instance ignored", self._label(job_id, study))
        return _SUCCESS

    # -- working -----------------------------------------------------------------------------------------------
    def process(self, job: Job) -> str:
        """Answer one claimed job and store its SR; returns the state the job is left in."""
        label = self._label(job.id, job.study_uid)
        if not (job.sr_path and job.sr_uid and Path(job.sr_path).is_file()):
            try:
                outcome = self._answer(job, label)
            except LlavaMedInputError as err:
                log.warning("%s: no SR, a series cannot be read (%s)", label, type(err).__name__)
                return self.queue.finish(job.id, "error", f"{type(err).__name__}: {err.reason}")
            except Exception as err:  # never let one study stop the worker; the message may quote file content
                log.error("%s: no SR, answering failed (%s)", label, type(err).__name__)
                return self.queue.finish(job.id, "error", f"{type(err).__name__} while answering (message withheld)")
            if outcome is not None:
                return outcome
            job = self.queue.job(job.id)
        try:
            self.destination.store(job.sr_path)
        except PacsUnavailableError as err:
            state, delay = self.queue.retry(job.id, f"{type(err).__name__}: {err}", self.config.max_attempts,
                                            self.config.backoff_s, self.config.max_backoff_s)
            log.warning("%s: %s unreachable; %s", label, self.destination.describe(),
                        f"retry in {delay:.1f} s" if state == "queued" else "attempts used up, failed")
            return state
        except (PacsError, OSError) as err:
            log.error("%s: SR refused by %s (%s)", label, self.destination.describe(), type(err).__name__)
            return self.queue.finish(job.id, "failed", f"{type(err).__name__}: {err}")
        state = self.queue.finish(job.id, "done")
        log.info("%s: SR stored at %s", label, self.destination.describe())
        return state

    def _answer(self, job: Job, label: str) -> str | None:
        """Select, answer and write the SR (recorded in the job); a state when the job ends here, else None."""
        instances = [i for i in self.queue.instances(job.id) if Path(i.path).is_file()]
        by_series: dict[str, list[Any]] = {}
        for inst in instances:
            by_series.setdefault(inst.series_uid, []).append(inst)
        headers = []
        for members in by_series.values():
            first = pydicom.dcmread(members[0].path, stop_before_pixels=True)
            headers += [first] * len(members)  # the rules read the first instance's values per series
        chosen = select_series(series_from_headers(headers), self.config.rules)
        if not chosen:
            log.info("%s: no series matches the selection rules; no SR", label)
            return self.queue.finish(job.id, "no_match", "NoMatchingSeriesError: no series matches the selection rules")
        series = [(Path(by_series[s.series_uid][0].path).parent, [i.sop_uid for i in by_series[s.series_uid]])
                  for s in chosen]
        out = self.storage / uid_digest(job.study_uid, self.salt) / "sr" / "answers_sr.dcm"
        result = answer_study(self.predictor.ask_all, series, self.config.questions, study_uid=job.study_uid,
                              identity=self.identity, out=out, max_new_tokens=self.config.max_new_tokens)
        self.queue.set_answer(job.id, str(result.sr_path), result.sr_uid, result.inference_s)
        log.info("%s: answered %d question(s) in %.2f s", label, len(result.answers), result.inference_s)
        return None

    def run_once(self) -> bool:
        """Queue idle studies and process one due job; False when there was nothing to do."""
        for job_id in self.queue.promote_idle(self.config.idle_timeout_s):
            log.info("job %d queued", job_id)
        job = self.queue.claim()
        if job is None:
            return False
        self.process(job)
        return True

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception as err:  # the database itself failed: keep the node alive, try again
                log.error("worker: %s; retrying", type(err).__name__)
                busy = False
            if not busy:
                self._stop.wait(self.config.poll_s)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> PacsNode:
        """Put crashed jobs back in the queue, start the worker and the C-STORE SCP (after building a throwaway SR,
        so the first study does not wait for highdicom's one-time loading, ~0.7 s)."""
        prime_sr_builder()
        recovered = self.queue.recover()
        if recovered:
            log.info("resumed %d job(s) left running", recovered)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="pacs-worker", daemon=True)
        self._worker.start()
        self._server = start_store_scp(self.config.ae_title, self.config.host, self.config.port, self.on_store)
        log.info("listening as %s on %s:%d", self.config.ae_title, self.config.host, self.port)
        return self

    @property
    def port(self) -> int:
        """The port the SCP listens on (the one picked by the system when ``config.port`` is 0)."""
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop receiving, let the worker finish its job (bounded wait), close the queue."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout_s)
            self._worker = None
        self.queue.close()

    def wait_idle(self, timeout_s: float, poll_s: float = 0.1) -> bool:
        """Wait until no job is receiving, queued or running (bounded); True when reached."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            counts = self.queue.counts()
            if counts["receiving"] == counts["queued"] == counts["running"] == 0:
                return True
            time.sleep(poll_s)
        return False
