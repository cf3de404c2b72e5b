# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A real MONAI Label server with the LLaVA-Med app: answers, traversal and oversize probes.

Runs in ``.venv-label`` (``.venv-label/bin/python -m pytest tests/label``); skipped where monailabel is missing.
The server (``conftest.py``) runs as a subprocess on a free loopback port with a tiny random model; answers are
compared with what :class:`~monai_llava_med.engines.predictor.LlavaMedPredictor` gives for the same file (greedy
decoding).
"""

from __future__ import annotations

import http.client
import json

import pytest
from label._label_server import MAX_UPLOAD_MB, QUESTIONS, SECRET, STORED_IDS, ask, tree

pytest.importorskip("monailabel", reason="MONAI Label lives in .venv-label (make label-venv)")
requests = pytest.importorskip("requests")

pytestmark = pytest.mark.label


def test_info_lists_the_question_answering_model(server):
    info = requests.get(f"{server}/info/").json()
    model = info["models"]["llava_med"]
    assert model["type"] == "others"
    assert model["model"] == "llava-med-tiny"
    assert model["config"]["question"] == ""
    assert model["limits"]["max_new_tokens"] == 512
    assert info["trainers"] == {}


@pytest.mark.parametrize("image_id", ["ct", "photo"])
@pytest.mark.parametrize("question", QUESTIONS)
def test_answers_equal_the_library(server, uploaded, predictor, image_id, question):
    r = ask(server, image_id, {"question": question, "max_new_tokens": 12})
    assert r.status_code == 200, r.text
    got = r.json()
    want = predictor.ask(uploaded[image_id], question, max_new_tokens=12)
    assert got["answer"] == want["answer"]
    assert got["views"] == want["views"]
    assert got["modality"] == want["modality"]
    assert got["model"] == want["model"] == "llava-med-tiny"
    assert got["source"] == image_id and got["question"] == question
    assert 0 < got["latency_s"] < 60
    assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)  # the trust fields, as the library's
    assert (got["abstained"], got["reason"], got["gate_distance"]) == (want["abstained"], want["reason"], None)
    assert got["image_reliance"] == pytest.approx(want["image_reliance"], abs=1e-5)


def test_inline_file_upload_gives_the_same_answer(server, uploaded, predictor):
    question = QUESTIONS[0]
    r = ask(server, None, {"question": question, "max_new_tokens": 12}, file=uploaded["ct"])
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == predictor.ask(uploaded["ct"], question, max_new_tokens=12)["answer"]
    assert r.json()["source"] == "CT_small.dcm"


def test_an_nrrd_volume_from_3d_slicer_is_answered_from_its_views(server, uploaded, predictor, tmp_path):
    """NRRD is 3D Slicer's default format, so what MONAI Label's Slicer client uploads."""
    sitk = pytest.importorskip("SimpleITK")
    from monai_llava_med.data.phantom import case_rng, generate_phantom

    case = generate_phantom(case_rng(4, "test", 0), size=48, ndim=3, depth=12, modality="CT", num_lesions=2)
    image = sitk.GetImageFromArray(case.image.astype("int16"))  # (z, y, x) array -> (x, y, z) image
    image.SetSpacing(tuple(float(s) for s in case.spacing[::-1]))
    path = tmp_path / "slicer_volume.nrrd"
    sitk.WriteImage(image, str(path), True)
    with open(path, "rb") as f:
        r = requests.put(f"{server}/datastore/image", params={"image": "vol"}, files={"file": (path.name, f)})
    assert r.status_code == 200, r.text
    r = ask(server, "vol", {"question": QUESTIONS[0], "max_new_tokens": 12})
    assert r.status_code == 200, r.text
    want = predictor.ask(path, QUESTIONS[0], max_new_tokens=12)
    assert r.json()["answer"] == want["answer"] and r.json()["views"] == want["views"]
    assert len(want["views"]) > 1 and all(v["plane"] == "axial" for v in want["views"])


def test_generation_settings_reach_the_model(server, uploaded, predictor):
    short = ask(server, "ct", {"question": QUESTIONS[0], "max_new_tokens": 2}).json()["answer"]
    assert short == predictor.ask(uploaded["ct"], QUESTIONS[0], max_new_tokens=2)["answer"]
    sampled = ask(server, "ct", {"question": QUESTIONS[0], "do_sample": True, "temperature": 1.5, "top_p": 0.9,
                                 "unknown_key": 1})
    assert sampled.status_code == 200, sampled.text
    assert sampled.json()["ignored_params"] == ["unknown_key"]


@pytest.mark.parametrize(
    "params, status, words",
    [
        ({"question": "q", "image": "/etc/passwd"}, 400, "may not set image"),
        ({"question": "q", "model": "other"}, 400, "may not set model"),
        ({"question": "q", "device": "cuda:7"}, 400, "may not set device"),
        ({}, 400, "question is required"),
        ({"question": "   "}, 400, "question is required"),
        ({"question": "x" * 2001}, 413, "limit is 2000"),
        ({"question": "q", "max_new_tokens": 100000}, 400, "max_new_tokens"),
        ({"question": "q", "max_new_tokens": "12"}, 400, "must be an integer"),
        ({"question": "q", "temperature": 100.0}, 400, "temperature"),
        ({"question": "q", "top_p": 0}, 400, "top_p"),
        ("{not json", 400, "not valid JSON"),
        (json.dumps({"question": "q", "pad": "x" * 20000}), 413, "params has"),
    ],
)
def test_bad_params_are_refused(server, uploaded, params, status, words):
    r = ask(server, "ct", params)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_unknown_image_and_model_are_404(server, uploaded):
    assert ask(server, "missing", {"question": "q"}).status_code == 404
    r = requests.post(f"{server}/infer/segmentation", params={"image": "ct"}, data={"params": '{"question": "q"}'})
    assert r.status_code == 404


def test_unreadable_image_is_422_without_server_paths(server, workspace):
    bad = workspace / "files" / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 10)
    with open(bad, "rb") as f:
        assert requests.put(f"{server}/datastore/image", params={"image": "broken"},
                            files={"file": ("broken.dcm", f)}).status_code == 200
    r = ask(server, "broken", {"question": "q"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("broken: ")
    assert str(workspace) not in r.text


def test_traversal_and_oversize_probes_are_refused(server, uploaded, workspace):
    before = tree(workspace, skip=("app", "studies"))
    secret = workspace / "outside" / "secret.txt"
    png = (workspace / "files" / "photo.png").read_bytes()
    text_as_png = ("evil.png", b"#!/bin/sh\nrm -rf /\n")
    probes = [
        ("PUT", "/datastore/image", {"image": "../outside/evil"}, {"file": ("x.png", png)}),
        ("PUT", "/datastore/image", {"image": "..%2Foutside%2Fevil"}, {"file": ("x.png", png)}),
        ("PUT", "/datastore/image", {"image": str(workspace / "outside" / "evil")}, {"file": ("x.png", png)}),
        ("PUT", "/datastore/image", {"image": ".hidden"}, {"file": ("x.png", png)}),
        ("PUT", "/datastore/image", {"image": "ok"}, {"file": text_as_png}),
        ("PUT", "/datastore/image", {"image": "ok"}, {"file": ("x.sh", png)}),
        ("PUT", "/datastore/image", {"image": "big"}, {"file": ("big.png", png + b"\0" * (MAX_UPLOAD_MB << 20))}),
        ("PUT", "/datastore/label", {"image": "ct", "tag": "../../outside"}, {"label": ("l.nii.gz", b"\x1f\x8b")}),
        ("PUT", "/datastore/label", {"image": "../ct", "tag": "final"}, {"label": ("l.nii.gz", b"\x1f\x8b")}),
        ("PUT", "/model/llava_med", {}, {"file": ("model.pt", b"weights")}),
        ("POST", "/infer/llava_med", {"image": str(secret)}, None),
        ("POST", "/infer/llava_med", {"image": "../outside/secret.txt"}, None),
        ("POST", "/infer/llava_med", {"image": "/etc/passwd"}, None),
        ("POST", "/infer/llava_med", {"image": "ct", "session_id": "../x"}, None),
        ("POST", "/infer/llava_med", {"image": "ct"}, {"file": ("x.png", png)}),
        ("POST", "/infer/..%2F..%2Fllava_med", {"image": "ct"}, None),
        ("POST", "/infer/wsi/llava_med", {"image": "ct"}, None),
        ("POST", "/train/llava_med", {}, None),
        ("POST", "/batch/infer/llava_med", {}, None),
        ("PUT", "/session/", {}, {"files": ("x.dcm", png)}),
        ("GET", "/datastore/image", {"image": "../outside/secret.txt"}, None),
        ("GET", "/datastore/image", {"image": str(secret)}, None),
        ("GET", "/datastore/image", [("image", "ct"), ("image", "../outside/secret.txt")], None),
        ("GET", "/logs/", {}, None),
        ("DELETE", "/datastore/image", {"id": "../outside/secret"}, None),
        ("DELETE", "/datastore/label", {"id": "ct", "tag": "../../outside"}, None),
    ]
    refused = []
    for method, path, query, files in probes:
        data = {"params": '{"question": "q"}'} if path.startswith("/infer") else None
        r = requests.request(method, server + path, params=query, files=files, data=data, timeout=30)
        refused.append((method, path, query, r.status_code))
        assert 400 <= r.status_code < 500, (method, path, query, r.status_code, r.text[:300])
        assert SECRET not in r.text
    # a body without Content-Length (chunked) and one announcing more than the limit are refused unread
    chunked = requests.put(f"{server}/datastore/image", params={"image": "chunk"}, data=iter([b"a" * 1024] * 4))
    assert chunked.status_code == 411, chunked.text
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("PUT", "/datastore/image?image=huge")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(1 << 40))  # announced, never sent: the answer must not wait for it
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and b"exceeds the limit" in response.read()
    conn.close()
    assert secret.read_text() == SECRET
    assert tree(workspace, skip=("app", "studies")) == before
    studies = {p.name for p in (workspace / "studies").iterdir()}
    assert {"ct.dcm", "photo.png"} <= studies
    assert not studies & {"evil.png", "ok.png", "big.png", "x.png", "chunk.png", ".hidden.png"}
    stored = requests.get(f"{server}/datastore/", params={"output": "all"}).json()["objects"]
    assert set(stored) <= STORED_IDS


def test_stored_images_download_and_info_hide_server_paths(server, uploaded, workspace):
    r = requests.get(f"{server}/datastore/image", params={"image": "photo"})
    assert r.status_code == 200 and r.content == uploaded["photo"].read_bytes()
    info = requests.get(f"{server}/datastore/image/info", params={"image": "ct"}).json()
    assert info["name"] == "ct.dcm" and "path" not in info


NII_GZ = b"\x1f\x8b\x08\x00" + b"\0" * 60  # passes the label content check (gzip magic)


@pytest.mark.parametrize(
    "method, path, query, form, files, status, words",
    [
        ("PUT", "/datastore/label", {"image": "nosuch", "tag": "final"}, None, {"label": ("l.nii.gz", NII_GZ)}, 404,
         "'nosuch' is not in the datastore"),
        ("DELETE", "/datastore/image", {"id": "nosuch"}, None, None, 404, "'nosuch' is not in the datastore"),
        ("PUT", "/datastore/image/info", {"image": "nosuch"}, {"info": "{}"}, None, 404, "not in the datastore"),
        ("GET", "/datastore/image/info", {"image": "nosuch"}, None, None, 404, "not in the datastore"),
        ("GET", "/datastore/label/info", {"label": "photo", "tag": "final"}, None, None, 404, "no label 'final'"),
        ("PUT", "/datastore/label/info", {"label": "photo", "tag": "final"}, {"info": "{}"}, None, 404, "no label"),
        ("DELETE", "/datastore/label", {"id": "photo", "tag": "final"}, None, None, 404, "no label 'final'"),
        ("PUT", "/datastore/image", {"image": "img2"}, {"params": "notjson"}, "png", 400, "params is not valid JSON"),
        ("PUT", "/datastore/image", {"image": "img2"}, {"params": "[1, 2]"}, "png", 400, "must be a JSON object"),
        ("PUT", "/datastore/image", {"image": "img2"}, {"params": '{"strategy": 1}'}, "png", 400, "may not set"),
        ("PUT", "/datastore/label", {"image": "ct", "tag": "final"}, {"params": "notjson"},
         {"label": ("l.nii.gz", NII_GZ)}, 400, "params is not valid JSON"),
        ("PUT", "/datastore/label", {"image": "nosuch", "tag": "final"}, {"params": "{"},
         {"label": ("l.nii.gz", NII_GZ)}, 400, "params is not valid JSON"),
        ("PUT", "/datastore/image/info", {"image": "ct"}, {"info": "notjson"}, None, 400, "info is not valid JSON"),
        ("PUT", "/datastore/image/info", {"image": "ct"}, {"info": "[1, 2]"}, None, 400, "info must be a JSON object"),
        ("PUT", "/datastore/image/info", {"image": "ct"}, {"info": '{"a": ' + "7" * 4400 + "}"}, None, 400,
         "too many digits"),
        ("PUT", "/datastore/image/info", {"image": "ct"}, {"info": '{"strategy": "x"}'}, None, 400,
         "may not set strategy"),
        ("PUT", "/datastore/image/info", {"image": "ct"}, {"info": '{"a": NaN}'}, None, 400, "NaN, Infinity"),
        ("PUT", "/datastore/image/info", {"image": "ct"}, {"info": '{"a": ' + "[" * 300 + "]" * 300 + "}"}, None,
         400, "nests more than 32 levels"),
        ("PUT", "/datastore/label/info", {"label": "ct", "tag": "review"}, {"info": "notjson"}, None, 400,
         "info is not valid JSON"),
    ],
)
def test_datastore_requests_on_unknown_ids_and_bad_json_are_4xx(
    server, uploaded, workspace, method, path, query, form, files, status, words
):
    """Stock 0.8.5 answers these with 500 (ImageNotFoundException, JSONDecodeError) or 200 {} for unknown info."""
    if files == "png":
        files = {"file": ("x.png", (workspace / "files" / "photo.png").read_bytes())}
    # a label under tag "review" exists for the label-info requests (tag "final" stays unused: ct stays unlabelled)
    r = requests.put(f"{server}/datastore/label", params={"image": "ct", "tag": "review"},
                     files={"label": ("l.nii.gz", NII_GZ)})
    assert r.status_code == 200 and r.json()["label"] == "ct", r.text
    r = requests.request(method, server + path, params=query, data=form, files=files, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.text
    assert str(workspace) not in r.text
    assert set(requests.get(f"{server}/datastore/", params={"output": "all"}).json()["objects"]) <= STORED_IDS


def test_datastore_info_round_trip_and_delete(server, uploaded, workspace):
    png = (workspace / "files" / "photo.png").read_bytes()
    r = requests.put(f"{server}/datastore/image", params={"image": "scratch"}, data={"params": '{"site": "A"}'},
                     files={"file": ("x.png", png)})
    assert r.status_code == 200 and r.json() == {"image": "scratch"}, r.text
    assert requests.get(f"{server}/datastore/image/info", params={"image": "scratch"}).json()["site"] == "A"
    r = requests.put(f"{server}/datastore/image/info", params={"image": "scratch"}, data={"info": '{"site": "B"}'})
    assert r.status_code == 200, r.text
    info = requests.get(f"{server}/datastore/image/info", params={"image": "scratch"}).json()
    assert info["site"] == "B" and info["name"] == "scratch.png" and "path" not in info
    r = requests.put(f"{server}/datastore/label", params={"image": "scratch", "tag": "review"},
                     data={"params": '{"label_info": [{"name": "lesion", "idx": 1}]}'},
                     files={"label": ("seg.nii.gz", NII_GZ)})
    assert r.status_code == 200 and r.json() == {"image": "scratch", "label": "scratch"}, r.text
    r = requests.put(f"{server}/datastore/label/info", params={"label": "scratch", "tag": "review"},
                     data={"info": '{"checked": true}'})
    assert r.status_code == 200, r.text
    info = requests.get(f"{server}/datastore/label/info", params={"label": "scratch", "tag": "review"}).json()
    assert info["checked"] is True and info["label_info"][0]["name"] == "lesion"
    assert requests.delete(f"{server}/datastore/label", params={"id": "scratch", "tag": "review"}).status_code == 200
    assert requests.delete(f"{server}/datastore/image", params={"id": "scratch"}).status_code == 200
    assert requests.get(f"{server}/datastore/image/info", params={"image": "scratch"}).status_code == 404
    assert not (workspace / "studies" / "scratch.png").exists()
    schema = requests.get(f"{server}/openapi.json").json()["paths"]  # the replaced routes keep their docs
    assert {"put", "delete", "get", "head"} <= set(schema["/datastore/image"]) and "put" in schema["/datastore/label"]


def test_datastore_listings_hide_server_paths(server, uploaded, workspace):
    png = (workspace / "files" / "photo.png").read_bytes()
    assert requests.put(f"{server}/datastore/image", params={"image": "pair"}, files={"file": ("x.png", png)}).ok
    r = requests.put(f"{server}/datastore/label", params={"image": "pair", "tag": "final"},
                     files={"label": ("seg.nii.gz", NII_GZ)})
    assert r.status_code == 200, r.text
    try:
        train = requests.get(f"{server}/datastore/", params={"output": "train"})
        assert train.status_code == 200 and {"image": "pair.png", "label": "pair.nii.gz"} in train.json(), train.text
        for output in ("train", "all", "stats"):
            text = requests.get(f"{server}/datastore/", params={"output": output}).text
            assert str(workspace) not in text and "/tmp" not in text, (output, text[:300])
        assert requests.get(f"{server}/datastore/", params={"output": "nosuch"}).status_code == 422
    finally:
        requests.delete(f"{server}/datastore/label", params={"id": "pair", "tag": "final"})
        requests.delete(f"{server}/datastore/image", params={"id": "pair"})


def test_failed_uploads_leave_no_temporary_files(server, uploaded, workspace, server_tmp):
    """Stock 0.8.5 copies the upload to TMPDIR/tmpXXXX.<ext> first and only removes it after a success."""
    png = (workspace / "files" / "photo.png").read_bytes()
    before = tree(server_tmp, skip=())
    attempts = [
        ("/datastore/image", {"image": "tmp1"}, {"params": "notjson"}, {"file": ("x.png", png)}),
        ("/datastore/image", {"image": "tmp1"}, {"params": "[1]"}, {"file": ("x.png", png)}),
        ("/datastore/image", {"image": "tmp1"}, None, {"file": ("x.png", b"#!/bin/sh\n")}),
        ("/datastore/image", {"image": "tmp1"}, None, {"file": ("x.txt", png)}),
        ("/datastore/image", {"image": "tmp1"}, None, {"file": ("x.nii", b"\0" * 400)}),
        ("/datastore/label", {"image": "nosuch", "tag": "final"}, None, {"label": ("l.nii.gz", NII_GZ)}),
        ("/datastore/label", {"image": "ct", "tag": "final"}, {"params": "notjson"}, {"label": ("l.nii.gz", NII_GZ)}),
        ("/datastore/label", {"image": "ct", "tag": "final"}, None, {"label": ("l.nii.gz", b"not gzip")}),
    ]
    for path, query, form, files in attempts:
        r = requests.put(server + path, params=query, data=form, files=files, timeout=30)
        assert tree(server_tmp, skip=()) == before, (path, query, r.status_code)
        assert 400 <= r.status_code < 500, (path, query, r.status_code, r.text[:300])
    with open(workspace / "files" / "photo.png", "rb") as f:  # a success leaves nothing behind either
        assert requests.put(f"{server}/datastore/image", params={"image": "photo"},
                            files={"file": ("photo.png", f)}).status_code == 200
    assert tree(server_tmp, skip=()) == before
    assert "tmp1" not in requests.get(f"{server}/datastore/", params={"output": "all"}).json()["objects"]


def test_active_learning_sample_hides_the_server_path(server, uploaded, workspace):
    r = requests.post(f"{server}/activelearning/random", json={})
    assert r.status_code == 200, r.text
    sample = r.json()
    assert sample["id"] in STORED_IDS and sample["name"].startswith(sample["id"])
    assert "path" not in sample and str(workspace) not in r.text
    assert requests.get(f"{server}/datastore/image", params={"image": sample["id"]}).status_code == 200
    for strategy, body in (("nosuch", {}), ("random", {"strategy": "nosuch"}), ("random", {"strategy": [1]})):
        r = requests.post(f"{server}/activelearning/{strategy}", json=body)
        assert r.status_code == 404 and "unknown active-learning strategy" in r.json()["detail"], r.text
    r = requests.post(f"{server}/activelearning/random", data='{"client_id": {"a": NaN}}',
                      headers={"content-type": "application/json"})
    assert r.status_code == 400 and "client_id must be a string" in r.json()["detail"], r.text
    assert requests.get(f"{server}/datastore/", params={"output": "all"}).status_code == 200


def test_default_model_dir_is_the_bundle_models_folder_above_the_app(tmp_path):
    from monai_llava_med.apps.monailabel import app_dir
    from monai_llava_med.apps.monailabel.label_app import resolve_model_dir
    from monai_llava_med.errors import CheckpointError

    app = tmp_path / "repo" / "monai_llava_med" / "apps" / "monailabel" / "app"
    app.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="model_dir"):
        resolve_model_dir(None, app)
    models = tmp_path / "repo" / "bundles" / "llava_med" / "models"
    models.mkdir(parents=True)
    (models / "llava_med_config.json").write_text("{}")
    assert resolve_model_dir(None, app) == models.resolve()
    assert resolve_model_dir(str(models), "/") == models.resolve()
    with pytest.raises(CheckpointError, match="not found"):
        resolve_model_dir(str(tmp_path / "nope"), app)
    assert (app_dir() / "main.py").is_file()


def test_monai_label_python_client_gets_the_answer(server, uploaded, predictor):
    """MONAI Label's own client (the code 3D Slicer's module uses) calls the same endpoint."""
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(server)
    image_out, result = client.infer("llava_med", "photo", {"question": QUESTIONS[1], "max_new_tokens": 12})
    assert image_out is None
    result = json.loads(result)  # the 0.8.5 client returns a JSON-only answer as raw bytes
    assert result["answer"] == predictor.ask(uploaded["photo"], QUESTIONS[1], max_new_tokens=12)["answer"]
    assert result["ignored_params"] == ["client_id"]
