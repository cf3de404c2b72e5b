# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Helpers for the MONAI Label server tests: the workspace layout, planted links and DICOMs, requests.

The workspace holds ``model/`` (a tiny random model), ``studies/`` (the datastore), ``outside/`` (files the server
must never serve), ``app/`` (a copy of the app folder: the server writes ``model/ lib/ logs/`` there) and
``files/`` (test images). Before the server starts, ``studies/`` gets symbolic links to files outside it
(:data:`PLANTED_LINKS`), a real image ``inside.png`` with a linked-out label, and an in-folder alias.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np

QUESTIONS = ["Is there a lesion in the left lung?", "What modality is this image?"]
MAX_UPLOAD_MB = 1
#: Content of the generated secret file outside the studies folder: must never come back.
SECRET = "not for clients: 7f3c9a0e-secret"
#: Links planted in ``studies/`` before the server starts (name -> target, relative to the workspace).
PLANTED_LINKS = {
    "studies/leak.png": "outside/secret.txt",
    "studies/passwd.nii": "/etc/passwd",  # absolute (dangling where the file is missing: left out all the same)
    "studies/rel.png": "../outside/secret.txt",  # a relative link
    "studies/outct.dcm": "outside/outside_ct.dcm",  # a real DICOM outside the folder
    "studies/victim.png": "outside/target.png",  # an upload destination that is a link
    "studies/labels/final/inside.nii.gz": "outside/secret.txt",  # a label of an inside image
    "studies/labels/linkedtag": "outside/tagdir",  # a whole label tag folder
    "studies/alias.png": "studies/inside.png",  # a link that stays inside: allowed
    "studies/linkseries.dcm/slice1.dcm": "outside/outside_ct.dcm",  # a "series folder" holding a link out
}
#: Image ids the datastore holds from the start (the planted real file and its in-folder alias).
PLANTED_IDS = {"inside", "alias"}
#: Every image id a test outside the hardening module may leave in the datastore.
STORED_IDS = {"ct", "photo", "broken", "vol", *PLANTED_IDS}  # "vol": the NRRD volume test's upload


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(root: Path, skip: tuple[str, ...] = ()) -> set[str]:
    """Relative paths of every file and folder under ``root`` except the ``skip`` top-level folders."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] not in skip}


def build_workspace(root: Path, tokenizer) -> Path:
    """Write the model, the app copy, the test files, the outside files and the planted links under ``root``."""
    import torch
    from PIL import Image
    from pydicom.data import get_testdata_file

    from monai_llava_med.apps.monailabel import app_dir
    from monai_llava_med.networks import LlavaMedConfig, build_llava_med, save_pretrained

    torch.manual_seed(0)
    config = LlavaMedConfig.tiny(image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    save_pretrained(build_llava_med(config).eval(), root / "model", tokenizer)
    for folder in ("studies/labels/final", "studies/linkseries.dcm", "outside/tagdir", "app", "files"):
        (root / folder).mkdir(parents=True)
    (root / "outside" / "secret.txt").write_text(SECRET)
    shutil.copy(app_dir() / "main.py", root / "app" / "main.py")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "files" / "CT_small.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "outside" / "outside_ct.dcm")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(root / "files" / "photo.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "outside" / "target.png")
    shutil.copy(root / "files" / "photo.png", root / "studies" / "inside.png")
    shutil.copy(root / "outside" / "secret.txt", root / "outside" / "tagdir" / "inside.nii.gz")
    for link, target in PLANTED_LINKS.items():
        target_path = Path(target) if target.startswith(("/", "..")) else root / target
        os.symlink(target_path, root / link)
    return root


def server_env(tmpdir: Path, sessions: Path) -> dict[str, str]:
    """The environment of the server subprocess: a private ``TMPDIR``, offline, no background tasks."""
    env = dict(os.environ)
    env.update(
        TMPDIR=str(tmpdir), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        MONAI_LABEL_DATASTORE_AUTO_RELOAD="false", MONAI_LABEL_TASKS_TRAIN="false",
        MONAI_LABEL_TASKS_SCORING="false", MONAI_LABEL_TASKS_BATCH_INFER="false", MONAI_LABEL_SESSIONS="false",
        MONAI_LABEL_SESSION_PATH=str(sessions),
    )
    return env


def ask(server: str, image: str | None, params: dict | str, file: Path | None = None):
    """``POST /infer/llava_med`` with ``params`` (a dict or raw text) about datastore ``image`` or an inline file."""
    import requests

    data = {"params": params if isinstance(params, str) else json.dumps(params)}
    query = {"image": image} if image is not None else {}
    if file is None:
        return requests.post(f"{server}/infer/llava_med", params=query, data=data, timeout=60)
    with open(file, "rb") as f:
        return requests.post(f"{server}/infer/llava_med", params=query, data=data, files={"file": (file.name, f)},
                             timeout=60)


#: Distinctive values planted in DICOM headers (tag keyword -> value); none may appear in a response or a log.
PLANTED_TAGS = {
    "PatientName": "ZZPLANTNAME^ALPHA",
    "PatientID": "MRN11223344",
    "InstitutionName": "ZZPLANTINSTITUTE",
    "StudyDescription": "ZZPLANTSTUDY",
    "AccessionNumber": "ACC55667788",
    "ReferringPhysicianName": "ZZPLANTDOCTOR",
    "Modality": "ZZPLANTMOD",
}
#: Substrings searched for in responses and logs (each planted value is found by one of them).
PLANTED_MARKS = ("ZZPLANT", "MRN11223344", "ACC55667788", "MRN99887766", "WC77665544")


def planted_dicom(path: Path, extra: dict[str, tuple[str, bytes]] | None = None) -> Path:
    """``CT_small.dcm`` (shipped with pydicom) with :data:`PLANTED_TAGS` and ``extra`` (keyword -> (VR, raw
    bytes)) written as raw elements, so values that are invalid for their VR (``IS "MRN99887766"``, a two-valued
    ``Rows``, an odd-length ``US``) reach the file unchecked."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    values = {k: (dictionary_VR(tag_for_keyword(k)), v.encode()) for k, v in PLANTED_TAGS.items()}
    for keyword, (vr, raw) in {**values, **(extra or {})}.items():
        if vr not in ("US", "SS", "UL", "SL") and len(raw) % 2:
            raw += b" "
        tag = tag_for_keyword(keyword)
        ds[tag] = RawDataElement(pydicom.tag.Tag(tag), vr, len(raw), raw, 0, False, True, True)
    ds.save_as(path, write_like_original=True)
    return path
