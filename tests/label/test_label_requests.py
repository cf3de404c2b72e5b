# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI Label app's request checks and ASGI guard, without a server (standard library only: runs in any venv)."""

from __future__ import annotations

import asyncio
import json

import pytest

from monai_llava_med.apps.monailabel import (
    RequestError,
    RequestLimits,
    image_extension,
    parse_infer_params,
    validate_id,
)
from monai_llava_med.apps.monailabel.guard import RequestGuard, install_request_guard
from monai_llava_med.apps.monailabel.request_checks import check_file_content, parse_json_object
from monai_llava_med.errors import LlavaMedInputError


@pytest.mark.parametrize("good", ["ct", "CT_small.dcm", "1.2.840.113619", "a" * 128, "x-y_z.1"])
def test_valid_ids_pass(good):
    assert validate_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "../x", "..", ".hidden", "-x", "a/b", "a\\b", "/etc/passwd", "a" * 129, "a b", None, 3]
)
def test_invalid_ids_are_400(bad):
    with pytest.raises(RequestError) as info:
        validate_id(bad, "image")
    assert info.value.status_code == 400 and isinstance(info.value, LlavaMedInputError)


def test_params_give_question_generation_and_ignored_keys():
    checked = parse_infer_params('{"question": "  Is there an effusion? ", "max_new_tokens": 7, "do_sample": "true",'
                                 ' "temperature": 0.5, "top_p": 0.9, "client_id": "slicer"}')
    assert checked.question == "Is there an effusion?"
    assert checked.generation == {"max_new_tokens": 7, "do_sample": True, "temperature": 0.5, "top_p": 0.9}
    assert checked.ignored == ["client_id"]
    assert parse_infer_params({"question": "q"}).generation == {"max_new_tokens": 128}


@pytest.mark.parametrize(
    "params, status",
    [
        ({"question": "q", "image": "../x"}, 400),
        ({"question": "q", "model": "x"}, 400),
        ({"question": "q", "session_id": "s"}, 400),
        ({"question": ""}, 400),
        ({"question": 3}, 400),
        ({"question": "q" * 2001}, 413),
        ({"question": "q", "max_new_tokens": 0}, 400),
        ({"question": "q", "max_new_tokens": 513}, 400),
        ({"question": "q", "max_new_tokens": 1.5}, 400),
        ({"question": "q", "temperature": float("nan")}, 400),
        ({"question": "q", "top_p": 1.01}, 400),
        ({"question": "q", "do_sample": "maybe"}, 400),
        ("[]", 400),
        ('{"question": "q", "x": "' + "y" * 20000 + '"}', 413),
    ],
)
def test_bad_params_are_refused_with_status(params, status):
    with pytest.raises(RequestError) as info:
        parse_infer_params(params)
    assert info.value.status_code == status


@pytest.mark.parametrize(
    "params, words",
    [
        ('{"question": "q", "temperature": ' + "9" * 400 + "}", "temperature=an integer of about"),
        ('{"question": "q", "top_p": ' + "1" * 400 + "}", "top_p=an integer of about"),
        ('{"question": "q", "max_new_tokens": -' + "9" * 400 + "}", "max_new_tokens=an integer of about"),
        ('{"question": "q", "max_new_tokens": ' + "9" * 4301 + "}", "a number with too many digits"),
        ('{"question": "q", "temperature": 1e400}', "numbers beyond 1.8e308 are not allowed (got 1e400)"),
        ('{"question": "q", "temperature": NaN}', "NaN, Infinity"),
        ('{"question": "q", "x": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
        ('{"question": "q", "x": ' + "[" * 40 + "]" * 40 + "}", "nests more than 32 levels"),
        ('{"question": "q", "do_sample": "' + "y" * 500 + '"}', "must be true or false"),
    ],
)
def test_huge_and_deep_numbers_are_400_not_500(params, words):
    """Python refuses int(str) over 4300 digits (ValueError), math.isfinite overflows on huge ints, json recursion."""
    with pytest.raises(RequestError) as info:
        parse_infer_params(params)
    assert info.value.status_code == 400
    assert words in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(RequestError):
        parse_infer_params({"question": "q", "temperature": 10**5000})  # repr of this int is refused, too


@pytest.mark.parametrize(
    "text",
    ["notjson", "[1, 2]", '"text"', "3", "null", "{" * 3, "1" * 4301, '{"a": -Infinity}', '{"a": [1e999]}',
     '{"a": ' + "[" * 32 + "]" * 32 + "}", {"a": {"b": [[[]]]}}],
)
def test_json_object_fields_are_checked(text):
    """Values the datastore would store but could not copy or send back (NaN, deep nesting) are refused too."""
    with pytest.raises(RequestError) as info:
        parse_json_object(text, "info", max_depth=32 if isinstance(text, str) else 3)
    assert info.value.status_code == 400 and "info" in str(info.value)
    assert parse_json_object("", "info") == {} and parse_json_object(None) == {}
    assert parse_json_object('{"a": [1, 2.5, {"b": null}]}', "info") == {"a": [1, 2.5, {"b": None}]}
    assert parse_json_object('{"a": ' + "[" * 31 + "]" * 31 + "}", "info")["a"]


def test_limits_from_conf():
    limits = RequestLimits.from_conf({"max_question_chars": "50", "max_new_tokens": "16", "max_upload_mb": "2"})
    assert (limits.max_question_chars, limits.max_new_tokens, limits.max_upload_bytes) == (50, 16, 2 << 20)
    assert limits.default_max_new_tokens == 16
    with pytest.raises(RequestError):
        parse_infer_params({"question": "q" * 51}, limits)
    with pytest.raises(RequestError):
        RequestLimits.from_conf({"max_upload_mb": "-1"})


def test_extensions_and_content(tmp_path):
    assert image_extension("Scan.NII.GZ") == ".nii.gz" and image_extension("a.tiff") == ".tiff"
    for name in ("a.txt", "a.nii.gz.exe", ".png", ""):
        with pytest.raises(RequestError) as info:
            image_extension(name)
        assert info.value.status_code == 415
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    check_file_content(png, ".png")
    with pytest.raises(RequestError):
        check_file_content(png, ".jpg")
    nii = tmp_path / "a.nii"
    nii.write_bytes((348).to_bytes(4, "big") + b"\0" * 344)
    check_file_content(nii, ".nii")
    dcm = tmp_path / "a.dcm"
    dcm.write_bytes(b"\0" * 128 + b"DICM")
    check_file_content(dcm, ".dcm")
    dcm.write_bytes(b"\0" * 132)
    with pytest.raises(RequestError):
        check_file_content(dcm, ".dcm")
    # 3D Slicer's default (NRRD) and single-file MetaImage; detached headers cannot come as one upload
    assert image_extension("seg.Seq.NRRD") == ".nrrd" and image_extension("ct.mha") == ".mha"
    for detached in ("ct.nhdr", "ct.mhd"):
        with pytest.raises(RequestError):
            image_extension(detached)
    nrrd = tmp_path / "a.nrrd"
    nrrd.write_bytes(b"NRRD0004\n# Complete NRRD file format specification at:\ntype: short\n")
    check_file_content(nrrd, ".nrrd")
    mha = tmp_path / "a.mha"
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\n")
    check_file_content(mha, ".mha")
    for path, ext in ((nrrd, ".mha"), (mha, ".nrrd"), (png, ".nrrd")):
        with pytest.raises(RequestError):
            check_file_content(path, ext)


def _call(guard: RequestGuard, method: str, path: str, query: bytes = b"", headers=()) -> tuple[int, dict | None]:
    """Run one HTTP request through the guard; returns (status, body JSON or None when passed through)."""
    sent: list[dict] = []
    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    guard.app = app
    scope = {"type": "http", "method": method, "path": path, "query_string": query, "headers": list(headers)}
    asyncio.run(guard(scope, receive, send))
    status = sent[0]["status"]
    return status, (None if reached else json.loads(sent[1]["body"]))


def test_guard_passes_offered_routes_and_refuses_the_rest():
    guard = RequestGuard(None, RequestLimits(max_upload_bytes=1000), models=["llava_med"])
    length = [(b"content-length", b"10")]
    assert _call(guard, "GET", "/info/") == (200, None)
    assert _call(guard, "POST", "/infer/llava_med", b"image=ct", length) == (200, None)
    assert _call(guard, "PUT", "/datastore/image", b"image=ct", length) == (200, None)
    assert _call(guard, "GET", "/datastore/image", b"image=ct") == (200, None)
    for method, path in [("POST", "/train/llava_med"), ("PUT", "/model/llava_med"), ("GET", "/logs/"),
                         ("PUT", "/session/"), ("POST", "/infer/wsi/llava_med"), ("GET", "/proxy/dicom/x"),
                         ("DELETE", "/datastore/"), ("POST", "/batch/infer/llava_med")]:
        status, body = _call(guard, method, path, b"", length)
        assert status == 404 and "not offered" in body["detail"], (method, path)
    assert _call(guard, "POST", "/infer/segmentation", b"image=ct", length)[0] == 404
    assert _call(guard, "POST", "/infer/../x", b"", length)[0] == 404


@pytest.mark.parametrize(
    "query", [b"image=../x", b"image=%2Fetc%2Fpasswd", b"id=..%2Fx", b"image=ct&tag=../../x", b"image=ct&image=ct2",
              b"label=.x", b"session_id=a/b"]
)
def test_guard_refuses_bad_ids(query):
    status, body = _call(RequestGuard(None), "GET", "/datastore/image", query)
    assert status == 400, query
    assert body["detail"]


def test_guard_refuses_oversized_and_unsized_bodies():
    guard = RequestGuard(None, RequestLimits(max_upload_bytes=1000))
    assert _call(guard, "PUT", "/datastore/image", b"image=a", [(b"content-length", b"1001")])[0] == 413
    assert _call(guard, "PUT", "/datastore/image", b"image=a", [(b"content-length", b"1000")])[0] == 200
    assert _call(guard, "PUT", "/datastore/image", b"image=a", [(b"transfer-encoding", b"chunked")])[0] == 411
    assert _call(guard, "PUT", "/datastore/image", b"image=a", [(b"content-length", b"-5")])[0] == 400


def test_guard_honours_the_api_prefix_and_installs_once():
    guard = RequestGuard(None, prefix="/api")
    assert _call(guard, "GET", "/api/info/")[0] == 200
    assert _call(guard, "GET", "/api/train/")[0] == 404

    class FakeApp:
        middleware_stack = None

        def build_middleware_stack(self):
            return "stack"

    app = FakeApp()
    first = install_request_guard(app, RequestLimits(), ["llava_med"])
    second = install_request_guard(app, RequestLimits(max_upload_bytes=5), ["llava_med"])
    assert first is second is app.middleware_stack and first.app == "stack" and first.limits.max_upload_bytes == 5


@pytest.mark.parametrize(
    "params, words",
    [
        ('{"question": "\\ud800"}', "surrogate"),
        ('{"question": "q", "\\udc00": 1}', "surrogate"),
        ('{"question": "q", "x": {"y": ["\\udfff"]}}', "surrogate"),
        ('{"question": "q", "do_sample": true, "temperature": 1e-300}', "[0.01, 2.0]"),
        ('{"question": "q", "temperature": 0.0099}', "[0.01, 2.0]"),
    ],
)
def test_lone_surrogates_and_tiny_temperatures_are_400(params, words):
    with pytest.raises(RequestError) as info:
        parse_infer_params(params)
    assert info.value.status_code == 400 and words in str(info.value)
    assert str(info.value).encode("utf-8")  # the message itself can be sent back


def test_smallest_temperature_and_valid_unicode_pass():
    checked = parse_infer_params('{"question": "caf\\u00e9 \\ud83d\\ude00?", "temperature": 0.01, "do_sample": true}')
    assert checked.question == "café \U0001F600?" and checked.generation["temperature"] == 0.01


def test_modality_is_a_closed_vocabulary():
    from monai_llava_med.apps.monailabel.redaction import safe_modality

    assert [safe_modality(v) for v in ("CT", "mr ", "PATHOLOGY", "OT")] == ["CT", "MR", "PATHOLOGY", "OT"]
    assert {safe_modality(v) for v in ("MRN99887766", "ZZPLANTMOD", "", None, 7, "CT\\MR")} == {"unknown"}


def test_typed_errors_map_to_fixed_details_without_their_text():
    from monai_llava_med.apps.monailabel.redaction import input_error_detail
    from monai_llava_med.errors import DicomDecodeError, ImageReadError, VolumeError

    for kind in (DicomDecodeError, ImageReadError, VolumeError, LlavaMedInputError):
        err = kind("NumberOfFrames 'MRN99887766' is not an integer", "/srv/studies/x.dcm")
        detail = input_error_detail(err)
        assert "MRN99887766" not in detail and "/srv" not in detail and len(detail) > 10
    assert input_error_detail(DicomDecodeError("a")) != input_error_detail(VolumeError("a"))


def test_reader_log_records_are_withheld_and_others_kept():
    import logging

    from monai_llava_med.apps.monailabel.redaction import WITHHELD, ReaderRecordFilter

    filt = ReaderRecordFilter()
    reader = logging.LogRecord("pydicom", logging.ERROR, "x.py", 1, "bad value %r", ("MRN99887766",), None)
    warned = logging.LogRecord("py.warnings", logging.WARNING, "x.py", 1, "%s",
                               ("/venv/site-packages/pydicom/valuerep.py:443: UserWarning: 'MRN99887766'\n",), None)
    ours = logging.LogRecord("monai_llava_med.apps", logging.INFO, "x.py", 1, "image %s refused", ("ct",), None)
    assert all(filt.filter(r) for r in (reader, warned, ours))
    assert "MRN99887766" not in reader.getMessage() and WITHHELD in reader.getMessage()
    assert "MRN99887766" not in warned.getMessage() and "UserWarning" in warned.getMessage()
    assert ours.getMessage() == "image ct refused"
