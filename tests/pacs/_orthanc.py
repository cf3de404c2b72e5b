# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A real Orthanc (Debian package) for the PACS tests: private storage, DICOMweb plugin, basic auth, started and
stopped by PID with bounded waits. It listens on every interface (Orthanc 1.10 has no bind option), so the
tests run inside a private network namespace (tests/pacs/conftest.py) where only loopback exists.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

__all__ = ["ORTHANC_BIN", "DICOMWEB_PLUGIN", "Orthanc", "free_port"]

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "llava", "pacs-test-secret"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """One Orthanc server with its own folders under ``root``.

    Args:
        root: its folder (storage, index, config, log).
        aet: its AE title.
    """

    def __init__(self, root: Path, aet: str = "ORTHANC") -> None:
        self.root = root
        self.aet = aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        config = {
            "Name": "llava-med-test", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": aet,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "DicomModalities": {},
            "DicomModalitiesInDatabase": True, "StableAge": 1, "SaveJobs": False, "HttpTimeout": 30,
            "DicomScuTimeout": 10,
        }
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)

    @property
    def url(self) -> str:
        """The REST root."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root."""
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        """Start the server and wait (bounded) until its REST API answers."""
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - handed to the child
        # DCMTK reads TCP_NODELAY from the environment: left out, Orthanc sends as Debian ships it (Nagle on)
        env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        self.proc = subprocess.Popen([ORTHANC_BIN, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                     env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self.session.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        tail = (self.root / "orthanc.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Orthanc did not start within {timeout_s} s:\n{tail}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server by its PID (terminate, bounded wait, then kill)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self.proc = None

    # -- REST helpers ------------------------------------------------------------------------------------------
    def upload(self, files: list[Path]) -> str:
        """Upload DICOM files (``POST /instances``); returns Orthanc's id of their study."""
        study = ""
        for path in files:
            r = self.session.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30)
            r.raise_for_status()
            study = r.json()["ParentStudy"]
        return study

    def add_modality(self, name: str, aet: str, port: int) -> None:
        """Declare a DICOM modality Orthanc may C-STORE to."""
        r = self.session.put(f"{self.url}/modalities/{name}", json={"AET": aet, "Host": "127.0.0.1", "Port": port},
                             timeout=10)
        r.raise_for_status()

    def send_study(self, modality: str, study_id: str) -> None:
        """C-STORE one study to a modality (synchronous)."""
        r = self.session.post(f"{self.url}/modalities/{modality}/store",
                              json={"Resources": [study_id], "Synchronous": True}, timeout=120)
        r.raise_for_status()

    def _qido(self, path: str, **params: str) -> list[dict]:
        r = self.session.get(f"{self.dicomweb}/{path}", params=params, timeout=10)
        if r.status_code == 204 or not r.content:
            return []
        r.raise_for_status()
        return r.json()

    def sr_instances(self, study_uid: str) -> list[str]:
        """SOP Instance UIDs of the SR instances Orthanc holds in a study (QIDO-RS)."""
        uids = []
        for series in self._qido(f"studies/{study_uid}/series", Modality="SR"):
            series_uid = series["0020000E"]["Value"][0]
            uids += [i["00080018"]["Value"][0] for i in self._qido(f"studies/{study_uid}/series/{series_uid}/instances")]
        return uids

    def wait_sr(self, study_uid: str, timeout_s: float = 120.0, count: int = 1) -> list[str]:
        """Wait (bounded) until the study holds ``count`` SR instances; returns their UIDs."""
        deadline = time.monotonic() + timeout_s
        found: list[str] = []
        while time.monotonic() < deadline:
            found = self.sr_instances(study_uid)
            if len(found) >= count:
                return found
            time.sleep(0.2)
        return found
