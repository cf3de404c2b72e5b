# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The PACS node's job queue on disk: one SQLite database (WAL journal, synchronous FULL), one job per study.

A job's states (docs/pacs.md)::

    receiving --(idle timeout, no new instance)--> queued --(worker)--> running --> done
        ^                                            ^                        |--> no_match  (no series matches)
        |                                            '--(PACS down: backoff)--|--> error     (a series unreadable)
        '--- a new image instance of a finished study ------------------------'--> failed    (attempts used up)

A job is keyed by its Study Instance UID and the instances by ``(job, SOP Instance UID)``: an instance delivered
twice is recorded once, and a study delivered twice yields one SR. Jobs left ``running`` by a crash go back to
``queued`` when the queue is opened by a node (:meth:`JobQueue.recover`). The database holds the UIDs (it is as
private as the received files); logs name a job by its id and a salted hash of the study UID only.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

__all__ = ["FINAL_STATES", "IGNORED_MODALITIES", "STATES", "Instance", "Job", "JobQueue"]

STATES = ("receiving", "queued", "running", "done", "no_match", "error", "failed")
FINAL_STATES = ("done", "no_match", "error", "failed")
# instances of these modalities (reports, key objects, presentation states; our own SR) never reopen a study
IGNORED_MODALITIES = ("SR", "KO", "PR", "DOC")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    claimed_at REAL,
    stored_at REAL,
    inference_s REAL,
    error TEXT,
    sr_path TEXT,
    sr_uid TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    sop_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    path TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (job_id, sop_uid)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, next_attempt);
"""


@dataclass(frozen=True)
class Job:
    """One study's job (a row of ``jobs``).

    Args:
        id: job id (what logs name).
        study_uid: the Study Instance UID.
        state: one of :data:`STATES`.
        attempts: failed delivery attempts so far.
        next_attempt: when a queued job may run (epoch seconds).
        first_received: when its first instance arrived.
        last_received: when its last new image instance arrived.
        claimed_at: when a worker last took it.
        stored_at: when its SR was stored in the PACS.
        inference_s: the model's time answering it.
        error: the recorded error (typed error class and message; no header value).
        sr_path: the SR written (kept for retries: a retry resends it without answering again).
        sr_uid: the SR's SOP Instance UID.
    """

    id: int
    study_uid: str
    state: str
    attempts: int
    next_attempt: float
    first_received: float
    last_received: float
    claimed_at: float | None
    stored_at: float | None
    inference_s: float | None
    error: str | None
    sr_path: str | None
    sr_uid: str | None


@dataclass(frozen=True)
class Instance:
    """One received instance (a row of ``instances``)."""

    sop_uid: str
    series_uid: str
    modality: str
    path: str
    received: float


_JOB_COLUMNS = ("id, study_uid, state, attempts, next_attempt, first_received, last_received, claimed_at, stored_at, "
                "inference_s, error, sr_path, sr_uid")


class JobQueue:
    """The job queue in one SQLite file, safe to share between the C-STORE handlers' threads and the worker.

    Args:
        path: the database file (created with its folder when missing).
    """

    def __init__(self, path: str | PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('salt', ?)", (secrets.token_hex(16),))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @property
    def salt(self) -> str:
        """The queue's secret salt for hashing study UIDs in logs and file names (made once, kept in the file)."""
        with self._lock:
            return str(self._db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()[0])

    def record_instance(self, study_uid: str, series_uid: str, sop_uid: str, modality: str, path: str,
                        now: float | None = None) -> tuple[int, bool]:
        """Record one received instance (its file already written); a new image instance (re)opens the study's job.

        Args:
            study_uid: Study Instance UID.
            series_uid: Series Instance UID.
            sop_uid: SOP Instance UID.
            modality: Modality.
            path: where the file is.
            now: the receive time (default now).

        Returns:
            ``(job id, new)``: ``new`` is False for an instance already recorded (a duplicate delivery).
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute("SELECT id, state FROM jobs WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None:
                job_id = int(db.execute(
                    "INSERT INTO jobs (study_uid, state, first_received, last_received, updated) "
                    "VALUES (?, 'receiving', ?, ?, ?)", (study_uid, now, now, now)).lastrowid)
                state = "receiving"
            else:
                job_id, state = int(row[0]), str(row[1])
            inserted = db.execute(
                "INSERT OR IGNORE INTO instances (job_id, sop_uid, series_uid, modality, path, received) "
                "VALUES (?, ?, ?, ?, ?, ?)", (job_id, sop_uid, series_uid, modality, path, now)).rowcount == 1
            if inserted and modality.upper() not in IGNORED_MODALITIES:
                if state in FINAL_STATES or state == "queued":
                    # a study that grew: answer it again (about every instance) once it is complete
                    db.execute("UPDATE jobs SET state = 'receiving', attempts = 0, error = NULL, sr_path = NULL, "
                               "sr_uid = NULL, stored_at = NULL WHERE id = ?", (job_id,))
                db.execute("UPDATE jobs SET last_received = ?, updated = ? WHERE id = ?", (now, now, job_id))
            return job_id, inserted

    def promote_idle(self, idle_s: float, now: float | None = None) -> list[int]:
        """Queue the studies that received no new instance for ``idle_s`` seconds.

        Args:
            idle_s: the idle timeout.
            now: the current time (default now).

        Returns:
            the ids of the jobs queued.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            ids = [int(r[0]) for r in db.execute(
                "SELECT id FROM jobs WHERE state = 'receiving' AND last_received <= ?", (now - idle_s,))]
            db.executemany("UPDATE jobs SET state = 'queued', next_attempt = ?, updated = ? WHERE id = ?",
                           [(now, now, i) for i in ids])
            return ids

    def claim(self, now: float | None = None) -> Job | None:
        """Take the next queued job that is due (state ``running``), or None."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' AND next_attempt <= ? "
                             "ORDER BY next_attempt, id LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', claimed_at = ?, updated = ? WHERE id = ?",
                       (now, now, row[0]))
        return self.job(int(row[0]))

    def recover(self) -> int:
        """Put the jobs a crash left ``running`` back to ``queued``; returns how many."""
        now = time.time()
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET state = 'queued', next_attempt = ?, updated = ? "
                              "WHERE state = 'running'", (now, now)).rowcount

    def set_answer(self, job_id: int, sr_path: str, sr_uid: str, inference_s: float) -> None:
        """Record the SR written for a job (before it is sent)."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET sr_path = ?, sr_uid = ?, inference_s = ?, updated = ? WHERE id = ?",
                       (sr_path, sr_uid, inference_s, time.time(), job_id))

    def finish(self, job_id: int, state: str, error: str | None = None) -> str:
        """End a running job in a final state; if new image instances arrived meanwhile it goes back to receiving.

        Args:
            job_id: the job.
            state: ``done``, ``no_match``, ``error`` or ``failed``.
            error: the error to record.

        Returns:
            the state the job is left in.
        """
        if state not in FINAL_STATES:
            raise ValueError(f"not a final state: {state!r}")
        now = time.time()
        with self._transaction() as db:
            claimed, stored = db.execute("SELECT claimed_at, stored_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            grew = db.execute("SELECT COUNT(*) FROM instances WHERE job_id = ? AND received > ? AND modality NOT IN "
                              f"({','.join('?' * len(IGNORED_MODALITIES))})",
                              (job_id, claimed or 0.0, *IGNORED_MODALITIES)).fetchone()[0]
            final = "receiving" if grew else state
            stored_at = now if state == "done" else stored
            db.execute("UPDATE jobs SET state = ?, error = ?, stored_at = ?, updated = ? WHERE id = ?",
                       (final, error, stored_at, now, job_id))
            return final

    def retry(self, job_id: int, error: str, max_attempts: int, base_s: float, max_s: float) -> tuple[str, float]:
        """Count a failed delivery: back to ``queued`` after an exponential backoff, or ``failed`` when used up.

        Args:
            job_id: the job.
            error: the error to record.
            max_attempts: delivery attempts allowed in all.
            base_s: the first backoff (doubled after each failure).
            max_s: the longest backoff.

        Returns:
            ``(state, delay_s)``.
        """
        now = time.time()
        with self._transaction() as db:
            attempts = int(db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]) + 1
            if attempts >= max_attempts:
                db.execute("UPDATE jobs SET state = 'failed', attempts = ?, error = ?, updated = ? WHERE id = ?",
                           (attempts, error, now, job_id))
                return "failed", 0.0
            delay = min(base_s * 2 ** (attempts - 1), max_s)
            db.execute("UPDATE jobs SET state = 'queued', attempts = ?, error = ?, next_attempt = ?, updated = ? "
                       "WHERE id = ?", (attempts, error, now + delay, now, job_id))
            return "queued", delay

    def job(self, job_id: int) -> Job:
        """One job by id."""
        with self._lock:
            row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id}")
        return Job(*row)

    def jobs(self, state: str | None = None) -> list[Job]:
        """Every job (in a given state), by id."""
        query = f"SELECT {_JOB_COLUMNS} FROM jobs" + (" WHERE state = ?" if state else "") + " ORDER BY id"
        with self._lock:
            return [Job(*row) for row in self._db.execute(query, (state,) if state else ())]

    def job_for_study(self, study_uid: str) -> Job | None:
        """The job of a study, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE study_uid = ?", (study_uid,)).fetchone()
        return None if row is None else Job(*row)

    def instances(self, job_id: int) -> list[Instance]:
        """The instances recorded for a job, by series then SOP Instance UID."""
        with self._lock:
            rows = self._db.execute("SELECT sop_uid, series_uid, modality, path, received FROM instances "
                                    "WHERE job_id = ? ORDER BY series_uid, sop_uid", (job_id,)).fetchall()
        return [Instance(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        with self._lock:
            found = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {state: int(found.get(state, 0)) for state in STATES}
