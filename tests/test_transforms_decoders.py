# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Every compressed DICOM file pydicom and pydicom-data ship, through the public loader.

Each one decodes or raises our typed error naming the file, never a raw exception (``BaseException`` is caught
too: a decoder written in Rust may raise a ``PanicException``). The everyday transfer syntaxes of a PACS (JPEG
baseline, extended, lossless; JPEG-LS; JPEG 2000; RLE) decode out of the box with the ``io`` extra (pylibjpeg,
pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls), and lossless files equal their uncompressed originals.

The files are listed from the two packages' folders (``pydicom.data.get_testdata_files`` would try to download
the files pydicom-data lacks).
"""

from __future__ import annotations

import collections
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _transforms_fixtures import shipped_file
from pydicom.data import DATA_ROOT
from pydicom.uid import UID

from monai_llava_med.errors import DicomDecodeError, LlavaMedInputError
from monai_llava_med.transforms import LoadMedicalImage

#: transfer syntaxes that must decode (at least one shipped file each, usually all of them)
EVERYDAY = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


def _shipped_dicom_files() -> list[str]:
    roots = [Path(DATA_ROOT) / "test_files"]
    try:
        from pydicom.data.data_manager import external_data_sources

        roots += [Path(s.data_path) for s in external_data_sources().values()]
    except Exception:
        pass
    return sorted(str(p) for root in roots for p in root.rglob("*") if p.is_file() and p.suffix != ".py")


def _compressed() -> dict[str, list[str]]:
    by_syntax: dict[str, list[str]] = collections.defaultdict(list)
    for path in _shipped_dicom_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # some shipped files are deliberately odd
                ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        except Exception:
            continue
        if ts is not None and UID(ts).is_compressed:
            by_syntax[str(ts)].append(path)
    return dict(by_syntax)


@pytest.fixture(scope="module")
def outcomes():
    """``{syntax: {path: "decoded" | "typed: <message>"}}`` for every compressed shipped file."""
    load, out = LoadMedicalImage(), {}
    for ts, paths in _compressed().items():
        out[ts] = {}
        for path in paths:
            try:
                img = load(path)
                assert img.ndim >= 3 and img.numel() > 0
                out[ts][path] = "decoded"
            except LlavaMedInputError as e:
                assert e.path is not None and os.path.basename(path) in e.path, (path, str(e))
                out[ts][path] = f"typed: {e.reason}"
            except BaseException as e:  # noqa: B036 - a decoder's PanicException derives from BaseException
                pytest.fail(f"{os.path.basename(path)}: raw {type(e).__name__} escaped the loader: {e}")
    return out


def test_every_compressed_shipped_file_decodes_or_names_itself(outcomes):
    assert sum(len(v) for v in outcomes.values()) >= 60  # pydicom's own files and pydicom-data's
    lines = []
    for ts, files in sorted(outcomes.items()):
        decoded = sum(v == "decoded" for v in files.values())
        lines.append(f"{UID(ts).name} ({ts}): {decoded} decoded, {len(files) - decoded} typed error")
    print("RESULT compressed DICOM files shipped by pydicom/pydicom-data:\n  " + "\n  ".join(lines))


@pytest.mark.parametrize("ts", list(EVERYDAY), ids=list(EVERYDAY.values()))
def test_everyday_transfer_syntaxes_decode_out_of_the_box(outcomes, ts):
    files = outcomes.get(ts, {})
    decoded = [p for p, v in files.items() if v == "decoded"]
    assert decoded, (ts, files)
    failed = {os.path.basename(p): v for p, v in files.items() if v != "decoded"}
    assert len(failed) <= 1, failed  # at most one deliberately broken file per syntax (pydicom's own tests)
    assert all("install" not in v for v in failed.values()), failed  # the decoders are installed


@pytest.mark.parametrize(
    "compressed,plain",
    [
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", None),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
        ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
    ],
)
def test_lossless_decodes_equal_their_originals(compressed, plain):
    load = LoadMedicalImage()
    img = load(shipped_file(compressed))
    if plain is None:  # no uncompressed twin shipped: compare with pydicom's own decode of the same file
        ref = pydicom.dcmread(shipped_file(compressed)).pixel_array
        np.testing.assert_array_equal(img[0].numpy(), ref)
    else:
        np.testing.assert_array_equal(img.numpy(), load(shipped_file(plain)).numpy())


def test_12_bit_jpeg_failure_is_typed_and_quiet(caplog, capfd):
    """pydicom logs an ERROR with a traceback for each failing plugin: none of it may reach the user."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DicomDecodeError, match="JPEG Extended") as info:
        LoadMedicalImage()(shipped_file("JPEG-lossy.dcm"))
    assert info.value.path.endswith("JPEG-lossy.dcm")
    assert not [r for r in caplog.records if r.name.startswith("pydicom") or r.exc_info or r.exc_text]
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "pydicom" not in out + err


def test_segmentation_object_is_a_typed_error():
    with pytest.raises(DicomDecodeError, match="segmentation") as info:
        LoadMedicalImage()(shipped_file("liver_1frame.dcm"))
    assert info.value.path.endswith("liver_1frame.dcm")
