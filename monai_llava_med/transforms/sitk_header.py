# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Checks of a NRRD (``.nrrd``/``.nhdr``) or MetaImage (``.mha``/``.mhd``) header before any voxel is read.

A header of a few hundred bytes can name a data file anywhere on the disk (``data file: ../../x.raw``), claim any
size, or describe 4D, vector or complex data that no view can show. :func:`check_sitk_header` reads the header
text (the detached data file's name) and ITK's own view of it (``ImageFileReader.ReadImageInformation``: size,
pixel type, spacing, direction, origin) and refuses such files with a typed error naming the file and the
problem, never a header value. :func:`quiet_itk` keeps ITK's messages off the terminal.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from monai.utils import optional_import

from ..errors import ImageReadError, VolumeError

sitk, has_sitk = optional_import("SimpleITK")

__all__ = ["SITK_SUFFIXES", "HEADER_LIMIT", "sitk_format", "quiet_itk", "header_fields", "detached_data_file",
           "check_sitk_header"]

#: Suffix -> (format name for messages, the ITK ImageIO that must read it).
SITK_SUFFIXES: dict[str, tuple[str, str]] = {
    ".nrrd": ("NRRD", "NrrdImageIO"),
    ".nhdr": ("NRRD", "NrrdImageIO"),
    ".mha": ("MetaImage", "MetaImageIO"),
    ".mhd": ("MetaImage", "MetaImageIO"),
}
#: Most bytes of header text read to find its fields.
HEADER_LIMIT = 1 << 20
_QUIET_LOCK = threading.RLock()
_NRRD_FIELD = re.compile(r"^([^:#][^:]*):=?\s?(.*)$")
_META_FIELD = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(.*?)\s*$")


def sitk_format(path: str | os.PathLike) -> tuple[str, str]:
    """``(format name, ITK ImageIO name)`` of a NRRD/MetaImage path, by suffix.

    Raises:
        ImageReadError: another suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SITK_SUFFIXES:
        raise ImageReadError(f"not a NRRD or MetaImage file name (suffix {suffix!r})", path)
    return SITK_SUFFIXES[suffix]


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Keep ITK's messages off the terminal: its warning display is off and file descriptor 2 points to
    ``/dev/null`` inside the block (MetaIO writes to C++ ``std::cerr`` directly, past ITK's warning switch).

    Uses are serialised by a lock, since both settings are process-wide.
    """
    with _QUIET_LOCK:
        shown = bool(sitk.ProcessObject.GetGlobalWarningDisplay())
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = devnull = None
        try:
            saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
        except OSError:  # no usable descriptor 2 (embedded interpreter): the warning switch alone applies
            pass
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            if devnull is not None:
                os.close(devnull)
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def header_fields(path: str | os.PathLike, fmt: str) -> tuple[dict[str, str], int]:
    """The header's fields (lower-case names) and where attached data would start.

    NRRD: ``field: value`` lines up to the first blank line; MetaImage: ``Key = Value`` lines up to and including
    ``ElementDataFile``. At most :data:`HEADER_LIMIT` bytes are read.

    Args:
        path: the header file.
        fmt: ``"NRRD"`` or ``"MetaImage"``.

    Returns:
        ``(fields, data_offset)``; the offset is the header's length (the file's size when it has no end mark).
    """
    with open(path, "rb") as fh:
        head = fh.read(HEADER_LIMIT)
    fields: dict[str, str] = {}
    pos = 0
    for raw in head.splitlines(keepends=True):
        pos += len(raw)
        line = raw.decode("latin-1").rstrip("\r\n")
        if fmt == "NRRD":
            if not line:
                return fields, pos
            match = _NRRD_FIELD.match(line)
            if match and not line.startswith("NRRD"):
                fields.setdefault(match.group(1).strip().lower(), match.group(2).strip())
        else:
            match = _META_FIELD.match(line)
            if match:
                fields.setdefault(match.group(1).lower(), match.group(2))
                if match.group(1).lower() == "elementdatafile":
                    return fields, pos
    return fields, pos


def detached_data_file(path: str | os.PathLike, fields: dict[str, str], fmt: str) -> Path | None:
    """The detached data file a header names (``None``: the data follow the header in the same file).

    Raises:
        ImageReadError: a list or numbered pattern of data files, a data file outside the header's folder, or one
            that does not exist.
    """
    name = fields.get("data file", fields.get("datafile")) if fmt == "NRRD" else fields.get("elementdatafile")
    if name is None or (fmt == "MetaImage" and name.upper() == "LOCAL"):
        return None
    if name.upper().startswith("LIST") or ("%" in name and len(name.split()) >= 4):
        raise ImageReadError(f"{fmt} header names a list or pattern of data files; only one data file is supported",
                             path)
    folder = Path(path).resolve().parent
    data = (folder / name).resolve()
    if data.parent != folder:
        raise ImageReadError(f"{fmt} header names a data file outside the header's folder; refusing to read it",
                             path)
    if not data.is_file():
        raise ImageReadError(f"the detached data file named by this {fmt} header is missing", path)
    return data


def _itemsize(pixel_id: int) -> int | None:
    """Bytes per value of a scalar SimpleITK pixel type (``None``: not a scalar integer/float type)."""
    sizes = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
             sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8}
    return sizes.get(pixel_id)


def _check_raw_size(path: str | os.PathLike, fields: dict[str, str], fmt: str, data: Path | None, offset: int,
                    needed: int) -> None:
    """Refuse uncompressed data shorter than the header claims (compressed data are checked by ITK's decoder)."""
    if fmt == "NRRD":
        raw = fields.get("encoding", "").lower() == "raw" and not {"byte skip", "byteskip", "line skip",
                                                                   "lineskip"} & set(fields)
    else:
        raw = fields.get("compresseddata", "False").lower() != "true" and "headersize" not in fields
    if not raw:
        return
    available = os.path.getsize(data) if data is not None else os.path.getsize(path) - offset
    if available < needed:
        raise ImageReadError(f"the {fmt} data hold less than the header claims (truncated or corrupt)", path)


def check_sitk_header(path: str | os.PathLike, max_voxels: int) -> str:
    """Check a NRRD/MetaImage header; nothing but the header (and the data file's size) is read.

    Args:
        path: a ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file.
        max_voxels: most voxels.

    Returns:
        the format name (``"NRRD"`` or ``"MetaImage"``), for messages.

    Raises:
        ImageReadError: SimpleITK missing; unreadable header; missing, misplaced or short data; over the limit.
        VolumeError: not one scalar 2D/3D volume (4D, vector, complex pixels); NaN/inf or non-positive spacing,
            NaN/inf origin, singular or NaN/inf direction.
    """
    fmt, image_io = sitk_format(path)
    if not has_sitk:
        raise ImageReadError(f"reading {fmt} files needs SimpleITK (pip install 'monai-llava-med[io]')", path)
    try:
        fields, offset = header_fields(path, fmt)
    except OSError as e:
        raise ImageReadError(f"cannot read the file ({e.strerror or type(e).__name__})", path) from e
    data = detached_data_file(path, fields, fmt)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(image_io)
    reader.SetFileName(str(path))
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except Exception as e:  # ITK's RuntimeError quotes the path and header text: keep only its class
        raise ImageReadError(f"not a readable {fmt} file (ITK {type(e).__name__} while reading its header)",
                             path) from e
    ndim, size = int(reader.GetDimension()), [int(s) for s in reader.GetSize()]
    if ndim > 3:
        raise VolumeError(f"unexpected {ndim}D data; expected one 3D volume", path)
    pixel_id = reader.GetPixelID()
    if pixel_id in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise VolumeError("complex pixel values cannot be shown; expected real values", path)
    if reader.GetNumberOfComponents() != 1:  # MetaImage stores complex values as two channels: they end here too
        raise VolumeError("vector (multi-component) pixels; expected one scalar volume", path)
    itemsize = _itemsize(pixel_id)
    if itemsize is None:
        raise VolumeError("unsupported pixel type; expected integer or floating-point values", path)
    if ndim < 2 or min(size) <= 0:
        raise ImageReadError(f"zero-size or degenerate {fmt} shape", path)
    if math.prod(size) > max_voxels:
        raise ImageReadError(f"absurd {fmt} size: more than the limit of {max_voxels} voxels", path)
    spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise VolumeError(f"{fmt} voxel spacing is not finite and positive", path)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    if not np.isfinite(direction).all() or abs(np.linalg.det(direction)) < 1e-6:
        raise VolumeError(f"{fmt} direction matrix holds NaN/inf values or is singular", path)
    if not np.isfinite(np.asarray(reader.GetOrigin(), dtype=np.float64)).all():
        raise VolumeError(f"{fmt} origin holds NaN/inf values", path)
    _check_raw_size(path, fields, fmt, data, offset, math.prod(size) * itemsize)
    return fmt
