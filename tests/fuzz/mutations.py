# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Hypothesis strategies that turn a seed into a fuzz input: byte flips, truncation, insertion, header-field edits.

A case is ``(seed, file index, ops)``. Byte operations act on the file's bytes (for ``.nii.gz`` either on the
compressed bytes or on the inflated ones, recompressed); ``("tag", keyword, value)`` sets one DICOM element
through pydicom (or deletes it when ``value`` is ``DELETE``); ``("nifti", offset, format, value)`` packs one NIfTI-1
header field. :func:`header_values` lists the values a case wrote, which no error message may show.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import warnings
from typing import Any

import pydicom
from hypothesis import strategies as st

from .seeds import Seed

__all__ = ["DELETE", "cases", "apply_case", "header_values"]

DELETE = "<delete>"
_NUMBERS = [0, 1, 2, 3, 7, 8, 16, 255, 4096, 30000, 65535]
#: DICOM elements worth mutating, each with values that have broken readers before.
DICOM_TAGS: dict[str, list[Any]] = {
    "Rows": [*_NUMBERS, [8, 8], DELETE],
    "Columns": [*_NUMBERS, [8, 8], DELETE],
    "NumberOfFrames": ["0", "-1", "2", "3", "1000000", "NaN", "1.5", "", DELETE],
    "SamplesPerPixel": [0, 2, 3, 4, 65535, DELETE],
    "BitsAllocated": [0, 1, 7, 8, 12, 32, 64, 65535, DELETE],
    "BitsStored": [0, 1, 8, 12, 17, 64, DELETE],
    "HighBit": [0, 7, 15, 31, 200],
    "PixelRepresentation": [0, 1, 2],
    "PlanarConfiguration": [0, 1, 7],
    "PhotometricInterpretation": ["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL_422", "YBR_FULL", "", "XYZ"],
    "PixelSpacing": [[0, 0], [1e308, 1], ["NaN", "1"], [1], [0.5, 0.5, 0.5], "abc", DELETE],
    "ImageOrientationPatient": [[0] * 6, [1, 0, 0], [1, 0, 0, 0, 0, 1], ["NaN"] * 6, [0, 1, 0, 0, 0, -1], DELETE],
    "ImagePositionPatient": [[0, 0], ["inf", 0, 0], [1e308, 0, 0], DELETE],
    "RescaleSlope": ["NaN", "inf", "0", "1e308", "-1", "", DELETE],
    "RescaleIntercept": ["NaN", "-inf", "1e308", "", DELETE],
    "WindowCenter": ["NaN", "0", ["40", "400"], "", "1e308"],
    "WindowWidth": ["NaN", "0", "-1", ["400", "1500"], ""],
    "Modality": ["", "MR", "DX", "XX", "US"],
    "SliceThickness": ["0", "NaN", "-5"],
    "InstanceNumber": ["0", "-1", "", DELETE],
    "SeriesInstanceUID": ["1.2.3", "", DELETE],
    "PixelData": [b"", b"\x00" * 7, DELETE],
    "TransferSyntaxUID": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                          "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.3.4"],
}
#: NIfTI-1 header fields: (offset, struct format, values).
NIFTI_FIELDS: dict[str, tuple[int, str, list[Any]]] = {
    "sizeof_hdr": (0, "<i", [0, -1, 540, 1 << 30]),
    **{f"dim{i}": (40 + 2 * i, "<h", [0, -1, 1, 2, 3, 4, 7, 8, 1023, 1024, 32767, -32768]) for i in range(8)},
    "datatype": (70, "<h", [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1536, 1792, 2048, 2304, 9999]),
    "bitpix": (72, "<h", [0, 1, 8, 16, 64, 255, -8]),
    **{f"pixdim{i}": (76 + 4 * i, "<f", [0.0, -1.0, math.nan, math.inf, 1e38, 1e-38]) for i in range(8)},
    "vox_offset": (108, "<f", [0.0, 352.0, 1e9, -1.0, math.nan, 3.5]),
    "scl_slope": (112, "<f", [math.nan, math.inf, 0.0, 1e38, -1.0]),
    "scl_inter": (116, "<f", [math.nan, -math.inf, 1e38]),
    "qform_code": (252, "<h", [0, 1, 5, -1]),
    "sform_code": (254, "<h", [0, 1, 5, -1]),
    **{f"quatern{c}": (o, "<f", [math.nan, 2.0, -1.0, 1e38]) for c, o in (("b", 256), ("c", 260), ("d", 264))},
    **{f"srow{i}": (280 + 4 * i, "<f", [0.0, math.nan, math.inf, 1e38]) for i in range(12)},
    "magic": (344, "4s", [b"n+1\x00", b"ni1\x00", b"n+2\x00", b"XXXX"]),
}


def _byte_ops() -> st.SearchStrategy:
    frac = st.floats(0.0, 1.0, allow_nan=False)
    return st.one_of(
        st.tuples(st.just("flip"), frac, st.integers(1, 255), st.booleans()),
        st.tuples(st.just("truncate"), frac, st.booleans()),
        st.tuples(st.just("insert"), frac, st.binary(min_size=1, max_size=64), st.booleans()),
    )


def _header_ops(kind: str) -> st.SearchStrategy:
    if kind in ("dicom", "series"):
        return st.sampled_from(sorted(DICOM_TAGS)).flatmap(
            lambda k: st.tuples(st.just("tag"), st.just(k), st.sampled_from(DICOM_TAGS[k])))
    if kind in ("nifti", "nifti_gz"):
        return st.sampled_from(sorted(NIFTI_FIELDS)).flatmap(
            lambda k: st.tuples(st.just("nifti"), st.just(k), st.sampled_from(NIFTI_FIELDS[k][2])))
    return _byte_ops()


@st.composite
def cases(draw: Any, seeds: list[Seed]) -> tuple[Seed, int, list[tuple]]:
    """A seed, the index of the file to mutate and one to three operations (header edits first)."""
    seed = draw(st.sampled_from(seeds))
    index = draw(st.integers(0, len(seed.files) - 1))
    ops = draw(st.lists(st.one_of(_header_ops(seed.kind), _byte_ops()), min_size=1, max_size=3))
    ops.sort(key=lambda op: op[0] not in ("tag", "nifti"))  # header edits on a parseable file, bytes after
    return seed, index, ops


def _set_tag(data: bytes, keyword: str, value: Any) -> bytes:
    with warnings.catch_warnings():
        return _set_tag_quietly(data, keyword, value)


def _set_tag_quietly(data: bytes, keyword: str, value: Any) -> bytes:
    mode = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        warnings.simplefilter("ignore")  # invalid values on purpose (restored by catch_warnings below)
        ds = pydicom.dcmread(io.BytesIO(data))
        target = ds.file_meta if keyword == "TransferSyntaxUID" else ds
        if value == DELETE:
            if keyword in target:
                delattr(target, keyword)
        else:
            setattr(target, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    except Exception:  # pydicom refused to write this value: the case keeps the file unchanged
        return data
    finally:
        pydicom.config.settings.writing_validation_mode = mode


def _bytes_op(data: bytes, op: tuple) -> bytes:
    pos = min(len(data), int(op[1] * len(data)))
    if op[0] == "flip":
        return data if pos >= len(data) else data[:pos] + bytes([data[pos] ^ op[2]]) + data[pos + 1 :]
    if op[0] == "truncate":
        return data[:pos]
    return data[:pos] + op[2] + data[pos:]


def apply_case(seed: Seed, index: int, ops: list[tuple]) -> dict[str, bytes]:
    """The mutated files of a case (file name -> bytes)."""
    files = dict(seed.files)
    name = list(files)[index]
    data = files[name]
    gz = seed.kind == "nifti_gz"
    for op in ops:
        if op[0] == "tag":
            data = _set_tag(data, op[1], op[2])
        elif op[0] == "nifti" or (gz and op[-1] is True):  # NIfTI field, or bytes of the inflated stream
            try:
                raw = bytearray(gzip.decompress(data) if gz else data)
            except Exception:
                raw = None
            if raw is not None:
                if op[0] == "nifti":
                    offset, fmt, _ = NIFTI_FIELDS[op[1]]
                    if len(raw) >= offset + struct.calcsize(fmt):
                        struct.pack_into(fmt, raw, offset, op[2])
                    raw = bytes(raw)
                else:
                    raw = _bytes_op(bytes(raw), op)
                data = gzip.compress(raw, mtime=0) if gz else raw
        else:
            data = _bytes_op(data, op)
    files[name] = data
    return files


def _finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def header_values(ops: list[tuple]) -> list[str]:
    """The numbers a case wrote into a header, as text of three characters or more (no message may show them)."""
    out = []
    for op in ops:
        if op[0] not in ("tag", "nifti") or op[2] == DELETE or isinstance(op[2], bytes):
            continue
        values = op[2] if isinstance(op[2], list) else [op[2]]
        out += [str(v) for v in values if len(str(v)) >= 3 and _finite_number(str(v))]
    return out
