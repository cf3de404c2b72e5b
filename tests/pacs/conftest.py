# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""PACS tests against a real Orthanc, run inside a private network namespace.

Orthanc 1.10 listens on every interface, so these tests run only where loopback is the sole network interface:
``make test-pacs`` runs this folder under ``unshare -n bash -c 'ip link set lo up && pytest tests/pacs'`` (root).
Elsewhere (plain ``make test``) they are skipped with the reason, unless ``LLAVA_MED_REQUIRE_ORTHANC=1`` (set by
``.ci/run``), where they fail instead: CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from ._orthanc import DICOMWEB_PLUGIN, ORTHANC_BIN, Orthanc

MODEL_DIR = Path(__file__).resolve().parents[2] / "bundles" / "llava_med" / "models"
QUESTIONS = ["Is there a lesion anywhere in the scan?"]


def network_interfaces() -> list[str]:
    """This process's network interfaces (``/proc/self/net/dev`` follows the network namespace; sysfs may not)."""
    try:
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return []
    return sorted(line.split(":", 1)[0].strip() for line in lines if ":" in line)


def _missing() -> str | None:
    if network_interfaces() != ["lo"]:
        return ("not inside a private network namespace (Orthanc 1.10 cannot bind loopback only); "
                "run `make test-pacs`")
    if not (os.path.exists(ORTHANC_BIN) and os.path.exists(DICOMWEB_PLUGIN)):
        return "Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
    for module in ("pynetdicom", "dicomweb_client", "highdicom"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install 'monai-llava-med[pacs]')"
    return None


@pytest.fixture(autouse=True, scope="session")
def _orthanc_environment() -> None:
    reason = _missing()
    if reason is not None:
        if os.environ.get("LLAVA_MED_REQUIRE_ORTHANC") == "1":
            pytest.fail(f"{reason}, and LLAVA_MED_REQUIRE_ORTHANC=1")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running Orthanc for the module, stopped by PID at the end."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def predictor():
    """The shipped demo model, loaded once."""
    import torch

    from monai_llava_med.engines import LlavaMedPredictor

    torch.set_num_threads(2)
    return LlavaMedPredictor.from_pretrained(MODEL_DIR, device="cpu")


def write_study(folder: Path, case_id: str, *, depth: int = 8, description: str | None = None) -> list[Path]:
    """A phantom CT study of ``depth`` 64x64 slices (one series); ``description`` overrides its Series Description."""
    import pydicom

    from monai_llava_med.data.phantom import generate_phantom, write_dicom

    case = generate_phantom(np.random.default_rng(zlib.crc32(case_id.encode())), size=64, ndim=3, depth=depth,
                            modality="CT", case_id=case_id)
    files = write_dicom(case, folder / case_id)
    if description is not None:
        for path in files:
            ds = pydicom.dcmread(path)
            ds.SeriesDescription = description
            ds.save_as(path, enforce_file_format=True)
    return files


def study_uid_of(files: list[Path]) -> str:
    """The Study Instance UID of written files."""
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def sop_uids_of(files: list[Path]) -> set[str]:
    """Their SOP Instance UIDs."""
    import pydicom

    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
