# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""DICOMweb for the PACS node (dicomweb-client): search a study's series, retrieve series, store an SR (STOW-RS).

Failures become typed errors naming the service only: :class:`~monai_llava_med.errors.PacsUnavailableError`
(connection refused, timeout, HTTP 5xx, 408/429: worth retrying) or :class:`~monai_llava_med.errors.PacsError`
(other refusals, e.g. HTTP 401/403/400).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from io import BytesIO
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from monai.utils import optional_import

from ...atomic_files import atomic_write_bytes
from ...errors import PacsError, PacsUnavailableError
from .selection import QIDO_FIELDS, SeriesInfo, series_from_qido

requests, _HAS_REQUESTS = optional_import("requests")
dicomweb_api, _HAS_DICOMWEB = optional_import("dicomweb_client.api")

__all__ = ["DicomWebStore"]

T = TypeVar("T")
_RETRIABLE_HTTP = (408, 429)


class DicomWebStore:
    """One DICOMweb service.

    Args:
        url: the service root (e.g. ``http://127.0.0.1:8042/dicom-web``).
        user: HTTP basic-auth user (None: no authentication).
        password: its password.
        timeout_s: per-request timeout.
    """

    def __init__(self, url: str, user: str | None = None, password: str | None = None, timeout_s: float = 60.0) -> None:
        if not (_HAS_DICOMWEB and _HAS_REQUESTS):
            raise ImportError("the PACS node needs dicomweb-client (pip install 'monai-llava-med[pacs]')")
        # dicomweb-client logs study UIDs at INFO: keep it quiet (no identifier in our logs)
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
        self.url = url.rstrip("/")
        self.where = f"DICOMweb {self.url}"
        session = requests.Session()
        if user is not None:
            session.auth = (user, password or "")
        self.client = dicomweb_api.DICOMwebClient(url=self.url, session=session, timeout=timeout_s)
        self.client.set_http_retry_params(retry=False)  # the node retries with its own backoff

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except requests.exceptions.HTTPError as err:
            status = err.response.status_code if err.response is not None else 0
            cls = PacsUnavailableError if status >= 500 or status in _RETRIABLE_HTTP else PacsError
            raise cls(f"{what} refused (HTTP {status})", self.where) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
            raise PacsUnavailableError(f"{what} failed: cannot reach the service ({type(err).__name__})",
                                       self.where) from None
        except requests.exceptions.RequestException as err:
            raise PacsError(f"{what} failed ({type(err).__name__})", self.where) from None

    def study_series(self, study_uid: str) -> list[SeriesInfo]:
        """The series of a study (QIDO-RS), with the attributes the selection rules read.

        Args:
            study_uid: the study.
        """
        results = self._call("series search", lambda: self.client.search_for_series(
            study_instance_uid=study_uid, fields=list(QIDO_FIELDS)))
        return series_from_qido(results)

    def retrieve_series(self, study_uid: str, series_uid: str, folder: str | PathLike) -> list[str]:
        """Retrieve one series (WADO-RS) into ``folder``, one file per instance; returns the SOP Instance UIDs.

        Args:
            study_uid: the study.
            series_uid: the series.
            folder: where to write the instances (``instance_NNNN.dcm``).
        """
        datasets: Sequence[Any] = self._call("series retrieval", lambda: self.client.retrieve_series(
            study_instance_uid=study_uid, series_instance_uid=series_uid))
        out = Path(folder)
        uids = []
        for i, ds in enumerate(datasets):
            path = out / f"instance_{i:04d}.dcm"
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            atomic_write_bytes(path, buffer.getvalue())
            uids.append(str(ds.SOPInstanceUID))
        return uids

    def store(self, path: str | PathLike) -> None:
        """Store one DICOM file (STOW-RS); the service's response must not list it as failed.

        Args:
            path: the file (the SR).
        """
        ds = pydicom.dcmread(path)
        response = self._call("STOW-RS store", lambda: self.client.store_instances([ds]))
        failed = getattr(response, "FailedSOPSequence", None) if response is not None else None
        if failed:
            reason = getattr(failed[0], "FailureReason", "?")
            raise PacsError(f"STOW-RS store refused the instance (failure reason {reason})", self.where)

    def describe(self) -> str:
        """The service, for logs."""
        return self.where
