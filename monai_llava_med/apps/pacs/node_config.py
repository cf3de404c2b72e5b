# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The listener's settings (one dataclass; the command line fills it) and the SR destination they name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ...errors import PacsConfigError
from .dicomweb import DicomWebStore
from .dimse import DimseDestination, parse_dimse_address
from .selection import SelectionRules

__all__ = ["Destination", "NodeConfig", "make_destination"]


class Destination(Protocol):
    """Where SRs go: :class:`~.dimse.DimseDestination` (C-STORE) or :class:`~.dicomweb.DicomWebStore` (STOW-RS)."""

    def store(self, path: str | Path) -> None:
        """Store one file."""

    def describe(self) -> str:
        """The destination, for logs."""


def make_destination(spec: str, *, user: str | None = None, password: str | None = None, calling_ae: str = "LLAVAMED",
                     timeout_s: float = 30.0) -> Destination:
    """The destination a ``--destination`` value names.

    Args:
        spec: ``dimse://AE@host:port`` (or plain ``AE@host:port``) for C-STORE, ``http(s)://host:port/path`` (the
            DICOMweb root) for STOW-RS.
        user: HTTP basic-auth user for STOW-RS.
        password: its password.
        calling_ae: our AE title for C-STORE.
        timeout_s: network timeout.

    Raises:
        PacsConfigError: neither form.
    """
    if spec.startswith(("http://", "https://")):
        return DicomWebStore(spec, user=user, password=password, timeout_s=timeout_s)
    ae, host, port = parse_dimse_address(spec.removeprefix("dimse://"))
    return DimseDestination(ae, host, port, calling_ae=calling_ae, timeout_s=timeout_s)


@dataclass
class NodeConfig:
    """The listener's settings (docs/pacs.md lists them with the command-line flags).

    Args:
        ae_title: our AE title (the called AE title Orthanc's ``DicomModalities`` entry names).
        port: the C-STORE SCP's port.
        host: the interface to bind (default this machine only).
        model_dir: the model folder.
        queue: the job queue's SQLite file.
        storage: where received instances and SRs are kept (default ``<queue's folder>/studies``).
        destination: where SRs go (:func:`make_destination`).
        questions: the questions asked about every study.
        rules: the series selection rules.
        idle_timeout_s: a study is complete after this long without a new instance.
        max_attempts: delivery attempts before a job is ``failed``.
        backoff_s: the first retry delay (doubled after each failure).
        max_backoff_s: the longest retry delay.
        poll_s: how often the worker looks for work when idle.
        network_timeout_s: DIMSE / HTTP timeout when sending.
        max_new_tokens: answer length bound.
    """

    ae_title: str
    port: int
    model_dir: str
    queue: str
    destination: str
    questions: list[str]
    host: str = "127.0.0.1"
    storage: str | None = None
    rules: SelectionRules = field(default_factory=SelectionRules)
    idle_timeout_s: float = 10.0
    max_attempts: int = 8
    backoff_s: float = 2.0
    max_backoff_s: float = 300.0
    poll_s: float = 0.2
    network_timeout_s: float = 30.0
    max_new_tokens: int = 64
    dest_user: str | None = None
    dest_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 < len(self.ae_title) <= 16:
            raise PacsConfigError("the AE title must have 1 to 16 characters", "ae_title")
        if not 0 <= self.port < 65536:
            raise PacsConfigError("the port must be 0-65535", "port")
        if not self.questions or not all(isinstance(q, str) and q.strip() for q in self.questions):
            raise PacsConfigError("at least one non-empty question is needed", "questions")
        if self.max_attempts < 1 or self.idle_timeout_s < 0 or self.backoff_s < 0:
            raise PacsConfigError("max_attempts >= 1, idle_timeout_s >= 0 and backoff_s >= 0 are needed", "retry")

    @property
    def storage_dir(self) -> Path:
        """Where received studies are kept."""
        return Path(self.storage) if self.storage else Path(self.queue).resolve().parent / "studies"
