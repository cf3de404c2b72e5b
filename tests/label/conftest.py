# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Fixtures of the MONAI Label tests: one real server for the whole session (started on first use).

The server runs ``monailabel.main start_server`` as a subprocess on a free loopback port, with its ``TMPDIR`` in a
private folder (:func:`server_tmp`) and its stdout/stderr in ``server.log`` of the workspace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from label._label_server import MAX_UPLOAD_MB, build_workspace, free_port, server_env


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, tiny_tokenizer):
    """Model folder, studies folder (with planted links), outside files, a copy of the app folder, test images."""
    return build_workspace(tmp_path_factory.mktemp("label"), tiny_tokenizer)


@pytest.fixture(scope="session")
def server_tmp(tmp_path_factory):
    """The server's ``TMPDIR``: no request may leave a file there."""
    return tmp_path_factory.mktemp("server_tmp")


@pytest.fixture(scope="session")
def server(workspace, server_tmp):
    """Start the server on 127.0.0.1, wait for ``/info/``, stop it (process group SIGTERM) at the end."""
    requests = pytest.importorskip("requests")
    port = free_port()
    log = open(workspace / "server.log", "wb")
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(workspace / "app"), "--studies", str(workspace / "studies"),
        "--conf", "models", "llava_med", "--conf", "model_dir", str(workspace / "model"),
        "--conf", "device", "cpu", "--conf", "max_upload_mb", str(MAX_UPLOAD_MB),
        "--host", "127.0.0.1", "--port", str(port),
    ]
    proc = subprocess.Popen(cmd, cwd=workspace, env=server_env(server_tmp, workspace / "sessions"), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited ({proc.returncode}):\n{(workspace / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in 60 s:\n{(workspace / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def predictor(workspace):
    from monai_llava_med.engines.predictor import LlavaMedPredictor

    return LlavaMedPredictor.from_pretrained(workspace / "model", device="cpu")


@pytest.fixture(scope="session")
def uploaded(server, workspace):
    """Upload the DICOM and the PNG under the ids ``ct`` and ``photo``."""
    requests = pytest.importorskip("requests")
    for image_id, name in (("ct", "CT_small.dcm"), ("photo", "photo.png")):
        with open(workspace / "files" / name, "rb") as f:
            r = requests.put(f"{server}/datastore/image", params={"image": image_id}, files={"file": (name, f)})
        assert r.status_code == 200, r.text
        assert r.json() == {"image": image_id}
    return {"ct": workspace / "files" / "CT_small.dcm", "photo": workspace / "files" / "photo.png"}
