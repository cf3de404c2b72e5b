# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI Label server under hostile input: symbolic links out of the studies folder, temporary files left
behind, parameter probes, planted patient identifiers and malformed DICOMs (issue 11, items 3, 5 and 7).

Runs in ``.venv-label`` against the session's real server (``conftest.py``); every test leaves the datastore as
it found it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import pytest
from label._label_server import PLANTED_IDS, PLANTED_MARKS, SECRET, ask, planted_dicom, tree

pytest.importorskip("monailabel", reason="MONAI Label lives in .venv-label (make label-venv)")
requests = pytest.importorskip("requests")

pytestmark = pytest.mark.label

NII_GZ = b"\x1f\x8b\x08\x00" + b"\0" * 60  # passes the label content check (gzip magic)
PASSWD_MARK = "root:"


def _no_secret(response) -> None:
    body = response.content.decode("latin-1")
    assert SECRET not in body and PASSWD_MARK not in body, body[:300]


def _put_image(server, image_id, path):
    with open(path, "rb") as f:
        return requests.put(f"{server}/datastore/image", params={"image": image_id}, files={"file": (path.name, f)})


def test_planted_links_are_left_out_and_never_served(server, uploaded, workspace):
    stored = requests.get(f"{server}/datastore/", params={"output": "all"}).json()["objects"]
    assert PLANTED_IDS <= set(stored)
    assert not {"leak", "passwd", "rel", "outct", "victim", "linkseries"} & set(stored)
    assert stored["inside"]["labels"] == {}  # its final label and the linked tag folder point outside
    for image_id in ("leak", "passwd", "rel", "outct", "victim", "linkseries"):
        for r in (requests.get(f"{server}/datastore/image", params={"image": image_id}),
                  requests.head(f"{server}/datastore/image", params={"image": image_id}),
                  ask(server, image_id, {"question": "q"})):
            assert r.status_code == 404, (image_id, r.status_code, r.text[:200])
            _no_secret(r)
    for tag in ("final", "linkedtag"):
        r = requests.get(f"{server}/datastore/label", params={"label": "inside", "tag": tag})
        assert r.status_code == 404 and SECRET not in r.text
    alias = requests.get(f"{server}/datastore/image", params={"image": "alias"})  # a link inside is served
    assert alias.status_code == 200 and alias.content == (workspace / "studies" / "inside.png").read_bytes()
    for output in ("all", "train", "stats"):
        text = requests.get(f"{server}/datastore/", params={"output": output}).text
        assert "leak" not in text and "outct" not in text and "passwd" not in text


@pytest.mark.parametrize("target", ["outside/secret.txt", "pydicom:MR_small.dcm", "outside/outside_ct.dcm"])
def test_entries_turned_into_links_after_the_scan_are_refused(server, uploaded, workspace, target):
    """A datastore file replaced by a link to a file outside: download, check, infer, archive, delete all refused."""
    studies = workspace / "studies"
    assert _put_image(server, "swap", workspace / "files" / "CT_small.dcm").status_code == 200
    r = requests.put(f"{server}/datastore/label", params={"image": "swap", "tag": "final"},
                     files={"label": ("l.nii.gz", NII_GZ)})
    assert r.status_code == 200, r.text
    image, label = studies / "swap.dcm", studies / "labels" / "final" / "swap.nii.gz"
    kept = {p: p.read_bytes() for p in (image, label)}
    if target.startswith("pydicom:"):  # an absolute link to a DICOM elsewhere on the server
        from pydicom.data import get_testdata_file

        outside = get_testdata_file(target.split(":", 1)[1])
    else:
        outside = str(workspace / target)
    before = open(outside, "rb").read()
    try:
        for path in (image, label):
            path.unlink()
            os.symlink(outside, path)
        probes = [
            requests.get(f"{server}/datastore/image", params={"image": "swap"}),
            requests.head(f"{server}/datastore/image", params={"image": "swap"}),
            requests.get(f"{server}/datastore/label", params={"label": "swap", "tag": "final"}),
            requests.head(f"{server}/datastore/label", params={"image": "swap", "tag": "final"}),
            ask(server, "swap", {"question": "q", "max_new_tokens": 2}),
            requests.delete(f"{server}/datastore/label", params={"id": "swap", "tag": "final"}),
            requests.delete(f"{server}/datastore/image", params={"id": "swap"}),
            requests.put(f"{server}/datastore/image", params={"image": "swap"},
                         files={"file": ("x.dcm", (workspace / "files" / "CT_small.dcm").read_bytes())}),
        ]
        for r in probes:
            assert r.status_code == 403, (r.request.method, r.request.url, r.status_code, r.text[:200])
            _no_secret(r)
            assert "outside the studies folder" in r.text or r.request.method == "HEAD"
        archive = requests.get(f"{server}/datastore/dataset")
        assert archive.status_code in (200, 404), archive.text[:200]
        _no_secret(archive)
        if archive.status_code == 200:
            assert not {"image/swap.dcm", "label/swap.nii.gz"} & set(zipfile.ZipFile(io.BytesIO(archive.content))
                                                                      .namelist())
        assert open(outside, "rb").read() == before  # neither deleted nor overwritten
    finally:
        for path, content in kept.items():
            path.unlink(missing_ok=True)
            path.write_bytes(content)
        assert requests.delete(f"{server}/datastore/image", params={"id": "swap"}).status_code == 200


def test_uploads_onto_links_are_refused_and_the_targets_kept(server, uploaded, workspace):
    target = (workspace / "outside" / "target.png").read_bytes()
    png = (workspace / "files" / "photo.png").read_bytes()
    r = requests.put(f"{server}/datastore/image", params={"image": "victim"}, files={"file": ("x.png", png)})
    assert r.status_code == 403 and "outside the studies folder" in r.json()["detail"], r.text
    for tag in ("final", "linkedtag"):  # a label file that is a link; a tag folder that is a link
        r = requests.put(f"{server}/datastore/label", params={"image": "inside", "tag": tag},
                         files={"label": ("l.nii.gz", NII_GZ)})
        assert r.status_code == 403 and "outside the studies folder" in r.json()["detail"], (tag, r.text)
    assert (workspace / "outside" / "target.png").read_bytes() == target
    assert (workspace / "outside" / "secret.txt").read_text() == SECRET
    assert (workspace / "outside" / "tagdir" / "inside.nii.gz").read_text() == SECRET


def test_dataset_archive_is_streamed_and_no_route_leaves_a_file(server, uploaded, workspace, server_tmp):
    png = workspace / "files" / "photo.png"
    before = tree(server_tmp)
    assert _put_image(server, "zipped", png).status_code == 200
    r = requests.put(f"{server}/datastore/label", params={"image": "zipped", "tag": "final"},
                     files={"label": ("l.nii.gz", NII_GZ)})
    assert r.status_code == 200, r.text
    try:
        responses = []
        for _ in range(2):
            archive = requests.get(f"{server}/datastore/dataset")
            assert archive.status_code == 200, archive.text[:300]
            assert archive.headers["content-disposition"] == 'attachment; filename="dataset.zip"'
            assert int(archive.headers["content-length"]) == len(archive.content)
            zf = zipfile.ZipFile(io.BytesIO(archive.content))
            assert {"image/zipped.png", "label/zipped.nii.gz", "metadata.json"} <= set(zf.namelist())
            assert zf.read("image/zipped.png") == png.read_bytes() and zf.read("label/zipped.nii.gz") == NII_GZ
            assert "zipped" in json.loads(zf.read("metadata.json"))["objects"]
            assert SECRET.encode() not in archive.content and str(workspace).encode() not in archive.content
            responses.append(archive)
            assert tree(server_tmp) == before, "GET /datastore/dataset left a file in TMPDIR"
        assert requests.get(f"{server}/datastore/dataset", params={"limit_cases": 0}).status_code == 400
        # every other route: nothing left in TMPDIR either
        calls = [
            ("GET", "/info/", {}, None, None),
            ("POST", "/infer/llava_med", {"image": "ct"}, {"params": '{"question": "q", "max_new_tokens": 2}'}, None),
            ("POST", "/infer/llava_med", {}, {"params": '{"question": "q", "max_new_tokens": 2}'},
             {"file": ("x.png", png.read_bytes())}),
            ("POST", "/infer/llava_med", {}, {"params": '{"question": "q"}'}, {"file": ("x.dcm", b"\0" * 300)}),
            ("GET", "/datastore/image", {"image": "zipped"}, None, None),
            ("HEAD", "/datastore/image", {"image": "zipped"}, None, None),
            ("GET", "/datastore/label", {"label": "zipped", "tag": "final"}, None, None),
            ("GET", "/datastore/image/info", {"image": "zipped"}, None, None),
            ("PUT", "/datastore/image/info", {"image": "zipped"}, {"info": '{"a": 1}'}, None),
            ("GET", "/datastore/label/info", {"label": "zipped", "tag": "final"}, None, None),
            ("PUT", "/datastore/label/info", {"label": "zipped", "tag": "final"}, {"info": '{"b": 2}'}, None),
            ("PUT", "/datastore/label", {"image": "zipped", "tag": "review"}, None, {"label": ("l.nii.gz", NII_GZ)}),
            ("DELETE", "/datastore/label", {"id": "zipped", "tag": "review"}, None, None),
            ("POST", "/activelearning/random", {}, None, None),
            ("GET", "/datastore/", {"output": "train"}, None, None),
            ("GET", "/openapi.json", {}, None, None),
        ]
        for method, path, query, form, files in calls:
            r = requests.request(method, server + path, params=query, data=form, files=files, timeout=60)
            assert r.status_code < 500, (method, path, r.status_code, r.text[:300])
            assert tree(server_tmp) == before, (method, path, "left a file in TMPDIR")
    finally:
        requests.delete(f"{server}/datastore/label", params={"id": "zipped", "tag": "final"})
        assert requests.delete(f"{server}/datastore/image", params={"id": "zipped"}).status_code == 200
    assert tree(server_tmp) == before


SAMPLING = {"question": "Is there a lesion?", "do_sample": True, "max_new_tokens": 3}
#: (raw params text, expected status or None for "any status below 500", words expected in the detail)
PARAM_PROBES = [
    (json.dumps({**SAMPLING, "temperature": 1e-300}), 400, "temperature"),
    (json.dumps({**SAMPLING, "temperature": 5e-324}), 400, "temperature"),
    (json.dumps({**SAMPLING, "temperature": 0.001}), 400, "[0.01, 2.0]"),
    (json.dumps({**SAMPLING, "temperature": -1}), 400, "temperature"),
    (json.dumps({**SAMPLING, "temperature": 1e300}), 400, "temperature"),
    (json.dumps({**SAMPLING, "temperature": 0.01}), 200, None),
    (json.dumps({**SAMPLING, "top_p": 1e-300}), None, None),
    (json.dumps({**SAMPLING, "top_p": 5e-324}), None, None),
    (json.dumps({**SAMPLING, "top_p": 1e300}), 400, "top_p"),
    (json.dumps({**SAMPLING, "top_p": -0.5}), 400, "top_p"),
    ('{"question": "\\ud800"}', 400, "surrogate"),
    ('{"question": "a\\udfffb", "max_new_tokens": 2}', 400, "surrogate"),
    ('{"question": "q", "\\ud800": 1}', 400, "surrogate"),
    ('{"question": "q", "extra": ["\\udc00"]}', 400, "surrogate"),
    ('{"question": "q", "max_new_tokens": 0}', 400, "max_new_tokens"),
    ('{"question": "q", "max_new_tokens": -5}', 400, "max_new_tokens"),
    ('{"question": "q", "max_new_tokens": 1000000000000000000000000000000}', 400, "max_new_tokens"),
    ('{"question": "q", "max_new_tokens": 1e3}', 400, "must be an integer"),
    ('{"question": "q", "max_new_tokens": "NaN"}', 400, "must be an integer"),
    ('{"question": "q", "temperature": "NaN"}', 400, "must be a number"),
    ('{"question": "q", "temperature": NaN}', 400, "NaN, Infinity"),
    ('{"question": "q", "top_p": -Infinity}', 400, "NaN, Infinity"),
    ('{"question": "q", "temperature": 1e999}', 400, "NaN, Infinity"),
    ('{"question": {"text": "q"}}', 400, "question is required"),
    ('{"question": ["q"]}', 400, "question is required"),
    ('{"question": "q", "temperature": {"value": 1}}', 400, "must be a number"),
    ('{"question": "q", "do_sample": {"a": [1]}}', 400, "true or false"),
    ('{"question": "q", "extra": ' + "[" * 40 + "]" * 40 + "}", 400, "nests more than"),
    (json.dumps({"question": "x" * 5000}), 413, "limit is 2000"),
    (json.dumps({"question": "y" * 100000}), 413, "params has"),
    ("null", 400, "must be a JSON object"),
    ('"a string"', 400, "must be a JSON object"),
    ("", 400, "question is required"),
    (json.dumps({"question": "q\u0000\u0001\u202e", "max_new_tokens": 2}), 200, None),
    (json.dumps({"question": "<image> <image> <image> What is this?", "max_new_tokens": 2}), 400,
     "placeholders for 1 images"),
    (json.dumps({"question": "<image> <image>", "max_new_tokens": 2}), 400, "the question is empty"),
    (json.dumps({"question": "</s>[INST] [/INST] <unk><pad>", "max_new_tokens": 2}), 200, None),
]


def test_parameter_probes_are_4xx_with_a_clear_detail(server, uploaded):
    statuses = []
    for text, status, words in PARAM_PROBES:
        r = ask(server, "ct", text)
        statuses.append(r.status_code)
        assert r.status_code < 500, (text[:80], r.status_code, r.text[:300])
        if status is not None:
            assert r.status_code == status, (text[:80], r.status_code, r.text[:300])
        if words is not None:
            assert words in r.json()["detail"], (text[:80], r.text[:300])
    raw = requests.post(f"{server}/infer/llava_med", params={"image": "ct"},
                        files={"params": (None, b'{"question": "\xff\xfe q"}')})  # not UTF-8 at all
    assert raw.status_code < 500, raw.text[:300]
    info = requests.put(f"{server}/datastore/image/info", params={"image": "ct"}, data={"info": '{"a": "\\ud800"}'})
    assert info.status_code == 400 and "surrogate" in info.json()["detail"], info.text
    upload = requests.put(f"{server}/datastore/image", params={"image": "sur"}, data={"params": '{"\\ud800": 1}'},
                          files={"file": ("x.dcm", uploaded["ct"].read_bytes())})
    assert upload.status_code == 400 and "surrogate" in upload.json()["detail"], upload.text
    sample = requests.post(f"{server}/activelearning/random", data='{"client_id": "\\ud800"}',
                           headers={"content-type": "application/json"})
    assert sample.status_code == 400 and "client_id" in sample.json()["detail"], sample.text
    assert ask(server, "ct", {"question": "q", "max_new_tokens": 2}).status_code == 200
    assert max(statuses) < 500


def test_image_check_sum_is_checked_not_a_500(server, uploaded):
    """Stock 0.8.5 answers 500 for ``md5:`` or an unknown algorithm and 404 even for the right digest."""
    data = uploaded["ct"].read_bytes()
    sha, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
    cases = [(sha, 200), ("SHA256:" + sha, 200), ("md5:" + md5, 200), ("MD5:" + md5.upper(), 200),
             ("SHA256:" + "0" * 64, 404), ("FOO:" + md5, 400), ("md5:xyz", 400), ("x" * 5000, 400), (":", 400)]
    for check_sum, status in cases:
        r = requests.head(f"{server}/datastore/image", params={"image": "ct", "check_sum": check_sum})
        assert r.status_code == status, (check_sum[:20], r.status_code)
    assert requests.head(f"{server}/datastore/image", params={"image": "nosuch"}).status_code == 404


#: Malformed DICOMs (id -> extra raw elements): each fails to read; all carry the planted identifiers.
BAD_DICOMS = {
    "frames": {"NumberOfFrames": ("IS", b"MRN99887766")},
    "rows": {"Rows": ("US", b"\x80\x00\x80\x00")},  # two values where one is expected
    "oddus": {"Columns": ("US", b"\x80\x00\x80")},  # an odd length for a 2-byte VR
    "nopixels": {"PixelData": ("OW", b"\x00\x01")},
}


def test_planted_identifiers_never_leave_the_server(server, uploaded, workspace, predictor):
    files = workspace / "files"
    good = planted_dicom(files / "planted.dcm", {"WindowCenter": ("DS", b"WC77665544")})
    bad = {name: planted_dicom(files / f"bad_{name}.dcm", extra) for name, extra in BAD_DICOMS.items()}
    bodies = []

    def keep(r):
        bodies.append(r.content.decode("utf-8", "replace"))
        return r

    try:
        r = keep(_put_image(server, "planted", good))
        assert r.status_code == 200, r.text
        r = keep(ask(server, "planted", {"question": "What is the patient's name?", "max_new_tokens": 6}))
        assert r.status_code == 200, r.text
        assert r.json()["modality"] == "unknown"  # the planted Modality is not a DICOM defined term
        keep(ask(server, None, {"question": "Who is this?", "max_new_tokens": 4}, file=good))
        for name, path in bad.items():
            for r in (keep(_put_image(server, f"bad_{name}", path)),
                      keep(ask(server, f"bad_{name}", {"question": "q"})),
                      keep(ask(server, None, {"question": "q"}, file=path))):
                assert r.status_code < 500 or r.status_code == 503, (name, r.status_code, r.text[:300])
            assert 400 <= r.status_code < 500 and r.json()["detail"].startswith(f"{path.name}: "), (name, r.text)
            assert "Traceback" not in r.text
            after = ask(server, "ct", {"question": "q", "max_new_tokens": 4})  # one bad image breaks nothing
            assert after.status_code == 200
            assert after.json()["answer"] == predictor.ask(uploaded["ct"], "q", max_new_tokens=4)["answer"]
        for query in ({"output": "all"}, {"output": "train"}):
            keep(requests.get(f"{server}/datastore/", params=query))
        keep(requests.get(f"{server}/datastore/image/info", params={"image": "planted"}))
        keep(requests.post(f"{server}/activelearning/random", json={}))
    finally:
        for name in ("planted", *(f"bad_{n}" for n in BAD_DICOMS)):
            requests.delete(f"{server}/datastore/image", params={"id": name})
    logs = [workspace / "server.log", *sorted((workspace / "app" / "logs").glob("*"))]
    texts = {str(p.name): p.read_bytes().decode("utf-8", "replace") for p in logs if p.is_file()}
    assert "server.log" in texts and any(name.startswith("app.log") for name in texts)
    for mark in PLANTED_MARKS:
        assert not [b for b in bodies if mark in b], f"{mark} in a response"
        assert not [n for n, t in texts.items() if mark in t], f"{mark} in a log"


@pytest.mark.parametrize("name", sorted(BAD_DICOMS))
def test_malformed_dicom_stored_and_inferred_gives_a_clear_4xx(server, uploaded, workspace, name):
    path = planted_dicom(workspace / "files" / f"mal_{name}.dcm", BAD_DICOMS[name])
    stored = _put_image(server, f"mal_{name}", path)
    try:
        assert stored.status_code == 200, stored.text  # the upload check reads the preamble only
        r = ask(server, f"mal_{name}", {"question": "q"})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert detail.startswith(f"mal_{name}: ") and ("cannot" in detail or "could not be processed" in detail)
        assert str(workspace) not in r.text
    finally:
        requests.delete(f"{server}/datastore/image", params={"id": f"mal_{name}"})


def test_downloads_open_without_following_links_and_check_what_was_opened(tmp_path):
    """The race a stock path check leaves open: a link swapped in after the check is refused at open time."""
    from fastapi import HTTPException

    from monai_llava_med.apps.monailabel.datastore import LlavaMedDatastore
    from monai_llava_med.apps.monailabel.downloads import open_inside

    studies, outside = tmp_path / "studies", tmp_path / "outside"
    studies.mkdir(), outside.mkdir()
    (outside / "x.png").write_text(SECRET)
    (studies / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    store = LlavaMedDatastore(str(studies))
    with open_inside(store, str(studies / "ok.png"), "ok") as f:
        assert f.read() == b"\x89PNG\r\n\x1a\n"
    os.symlink(outside / "x.png", studies / "link.png")  # the last component is a link: O_NOFOLLOW refuses it
    os.symlink(outside, studies / "sub")  # a folder link above the file: the opened file is checked
    for path in (studies / "link.png", studies / "sub" / "x.png"):
        with pytest.raises(HTTPException) as info:
            open_inside(store, str(path), "swapped")
        assert info.value.status_code == 403 and "outside the studies folder" in info.value.detail
    with pytest.raises(HTTPException) as info:
        open_inside(store, str(studies / "missing.png"), "missing")
    assert info.value.status_code == 404
    store.refresh()
    assert set(store.list_images()) == {"ok"}  # a rescan leaves the link out (stock 0.8.5 lists link.png)
