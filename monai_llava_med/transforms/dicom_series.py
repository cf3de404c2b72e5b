# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A DICOM series folder: header scan and validation, then the whole volume through MONAI's PydicomReader.

The scan reads only the fields it needs from every slice (no pixel value) and checks one series: every slice's
PixelData holds the pixels its header declares (:func:`~.dicom_pixel_data.check_pixel_data_size`, so a truncated
slice is refused even where only some slices are decoded), same size, pixel layout, orientation and pixel
spacing, distinct and evenly spaced positions; a message names the odd slice's file. Slices are sorted by
position along the slice normal (:func:`~.dicom_geometry.stack_order`, the rule enhanced multi-frame files follow
too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import MetaTensor

from ..errors import DicomDecodeError, ImageReadError, VolumeError
from .dicom_file import decode_error, load_dicom_file
from .dicom_geometry import odd_one_out, stack_order
from .dicom_header import (
    check_dicom_pixels,
    check_geometry,
    check_rescale,
    dicom_meta,
    header_int,
    header_value,
    read_dicom_header,
)
from .dicom_pixel_data import check_pixel_data_size
from .input_kind import is_dicom_file
from .readers import DEFAULT_MAX_VOXELS, QuietReaders, cached_loader, clean_meta, file_name, run_loader

__all__ = ["DicomSeriesInfo", "scan_dicom_series", "load_dicom_series"]


@dataclass
class DicomSeriesInfo:
    """What a header scan of a DICOM series folder found.

    Attributes:
        files: slice files sorted by position along the slice normal (ascending).
        positions: position of each sorted slice along the normal (mm).
        orientation: ImageOrientationPatient (6 values, shared by all slices).
        spacing: (row spacing, column spacing, slice spacing) in mm.
        shape: (Rows, Columns) shared by all slices.
        meta: non-identifying fields of the first slice (modality, photometric, window, source).
        instance_order_matches: whether sorting by InstanceNumber gives the same order (or its reverse).
    """

    files: list[str]
    positions: list[float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float, float]
    shape: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)
    instance_order_matches: bool = True

    @property
    def is_standard_axial(self) -> bool:
        """True when slices are stored as axial images in display orientation (IOP close to 1,0,0,0,1,0)."""
        return bool(np.allclose(self.orientation, (1, 0, 0, 0, 1, 0), atol=1e-3))


def scan_dicom_series(
    folder: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS, spacing_rtol: float = 0.1
) -> DicomSeriesInfo:
    """Read the headers of a DICOM series folder and validate its geometry.

    Args:
        folder: a folder holding the slices of one series (non-DICOM files are ignored).
        max_voxels: refuse series with more voxels than this.
        spacing_rtol: allowed relative deviation of a slice gap from the median gap.

    Returns:
        a :class:`DicomSeriesInfo` with slices sorted by position.

    Raises:
        ImageReadError: no DICOM files, absurd size.
        DicomDecodeError: an unreadable slice header; a slice without PixelData or whose PixelData is shorter
            than its header declares (truncated; the error names that file).
        VolumeError: several series, mixed size/pixel layout (BitsAllocated, SamplesPerPixel, NumberOfFrames,
            PhotometricInterpretation)/orientation/pixel spacing, duplicate or unevenly spaced positions,
            malformed ImageOrientationPatient/ImagePositionPatient/PixelSpacing.
    """
    with QuietReaders():
        return _scan(folder, max_voxels, spacing_rtol)


def _scan(folder: str | PathLike, max_voxels: int, spacing_rtol: float) -> DicomSeriesInfo:
    """:func:`scan_dicom_series` without the quiet readers."""
    paths = sorted(str(f) for f in Path(folder).iterdir() if f.is_file() and is_dicom_file(f))
    if not paths:
        raise ImageReadError("folder holds no DICOM files (expected one DICOM series)", folder)
    headers = [read_dicom_header(p, scan=True) for p in paths]  # an element cut by the file's end is refused
    first = headers[0]
    uids = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(uids) > 1:
        raise VolumeError(f"folder mixes {len(uids)} DICOM series; put one series per folder", folder)
    where = [f"slice {file_name(p)}: " for p in paths]
    for h, p in zip(headers, paths):
        check_pixel_data_size(h, p)  # every slice, also those the lazy paths never decode
    layouts = [_pixel_layout(h, folder, w) for h, w in zip(headers, where)]
    for what, part in (("sizes (Rows/Columns differ: mixed geometry)", slice(0, 2)),
                       ("pixel layouts (BitsAllocated, SamplesPerPixel, NumberOfFrames or "
                        "PhotometricInterpretation differ)", slice(2, None))):
        odd = odd_one_out(np.array([lay[part] == layouts[0][part] for lay in layouts]))
        if odd is not None:
            raise VolumeError(f"series has slices of different {what}; slice {file_name(paths[odd])} differs "
                              "from the others", folder)
    rows, cols = layouts[0][:2]
    if rows <= 0 or cols <= 0:
        raise ImageReadError("zero-size slices: Rows or Columns is not positive", folder)
    if rows * cols * len(paths) > max_voxels:
        raise ImageReadError(f"absurd series size: Rows x Columns x {len(paths)} slices is over the limit of "
                             f"{max_voxels} voxels", folder)
    for h, w in zip(headers, where):
        check_rescale(h, folder, w)
    geometry = [check_geometry(h, folder, w) for h, w in zip(headers, where)]
    if len(paths) == 1:
        iop = geometry[0]["ImageOrientationPatient"] or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        ps = geometry[0]["PixelSpacing"] or (1.0, 1.0)
        thick = header_value(first, "SliceThickness") or 1.0
        return DicomSeriesInfo(
            paths, [0.0], iop, (ps[0], ps[1], thick), (rows, cols), dicom_meta(first, file_name(folder))
        )
    for g, p in zip(geometry, paths):
        if g["ImageOrientationPatient"] is None or g["ImagePositionPatient"] is None:
            raise VolumeError(f"slice {file_name(p)} lacks ImageOrientationPatient/ImagePositionPatient", folder)
    iops = np.array([g["ImageOrientationPatient"] for g in geometry])
    spacings = np.array([g["PixelSpacing"] or (1.0, 1.0) for g in geometry])
    ipps = np.array([g["ImagePositionPatient"] for g in geometry])
    names = [file_name(p) for p in paths]
    order, pos_sorted, median = stack_order(iops, ipps, spacings, folder, spacing_rtol, names)
    inst = [header_int(h, "InstanceNumber", folder, default=None, where=w) for h, w in zip(headers, where)]
    matches = False
    if all(i is not None for i in inst) and len(set(inst)) == len(inst):
        by_inst = np.argsort(inst, kind="stable")
        matches = bool(np.array_equal(by_inst, order) or np.array_equal(by_inst, order[::-1]))
    return DicomSeriesInfo(
        files=[paths[i] for i in order],
        positions=[float(v) for v in pos_sorted],
        orientation=tuple(float(v) for v in iops[0]),
        spacing=(float(spacings[0][0]), float(spacings[0][1]), median),
        shape=(rows, cols),
        meta=dicom_meta(first, file_name(folder)),
        instance_order_matches=matches,
    )


def _pixel_layout(ds: Any, folder: str | PathLike, where: str) -> tuple[Any, ...]:
    """``(Rows, Columns, BitsAllocated, SamplesPerPixel, NumberOfFrames, photometric)`` of a slice, to compare.

    The photometric interpretation is compared as stored (upper-cased), never shown.
    """
    ints = tuple(header_int(ds, k, folder, default=d, where=where) for k, d in
                 (("Rows", 0), ("Columns", 0), ("BitsAllocated", 0), ("SamplesPerPixel", 1), ("NumberOfFrames", 1)))
    try:
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    except Exception as e:  # pydicom cannot convert the value
        raise DicomDecodeError(f"{where}unreadable PhotometricInterpretation element", folder) from e
    return (*ints, photometric)


def load_dicom_series(folder: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> MetaTensor:
    """Load a validated series as a ``(C, X, Y, Z)`` volume with the reader's RAS affine (``"volume"``).

    A folder holding one slice gives that slice (see :func:`~.dicom_file.load_dicom_file`).

    Args:
        folder: the series folder.
        max_voxels: size limit.

    Raises:
        VolumeError: see :func:`scan_dicom_series`; InstanceNumber order that disagrees with the positions.
    """
    with QuietReaders():
        return _load_series(folder, max_voxels)


def _load_series(folder: str | PathLike, max_voxels: int) -> MetaTensor:
    """:func:`load_dicom_series` without the quiet readers."""
    info = scan_dicom_series(folder, max_voxels)
    if len(info.files) == 1:
        img = load_dicom_file(info.files[0], max_voxels)
        img.meta["source"] = file_name(folder)
        return img
    if not info.instance_order_matches:
        # PydicomReader stacks by InstanceNumber; refuse rather than build a scrambled volume
        raise VolumeError("InstanceNumber order disagrees with slice positions (or is missing)", folder)
    first = read_dicom_header(info.files[0])
    check_dicom_pixels(first, info.files[0], max_voxels)
    img = run_loader(cached_loader("series"), folder, lambda e: decode_error(e, first, folder))
    if img.ndim != 4 or tuple(img.shape[1:]) != (info.shape[1], info.shape[0], len(info.files)):
        raise VolumeError("series decoded to an unexpected shape (not one Columns x Rows plane per slice)", folder)
    return clean_meta(img, {**info.meta, "layout": "volume"})
