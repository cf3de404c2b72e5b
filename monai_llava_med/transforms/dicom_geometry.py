# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Patient geometry of DICOM images: one rule for a series, an enhanced multi-frame file and a single slice.

Slices (files of a series, frames of an enhanced file) form one volume when they share orientation and pixel
spacing and sit at distinct, evenly spaced positions along the slice normal; they are sorted by that position
(:func:`stack_order`). The affine is the one MONAI's ``PydicomReader(swap_ij=True, affine_lps_to_ras=True)``
builds for a series (:func:`patient_affine`): array axes (column, row, slice), RAS world. A single slice gets the
same affine with the slice normal times its thickness as third axis, so it is reoriented like a one-slice series.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np

from ..errors import VolumeError
from .dicom_header import functional_item, header_value, tag_floats

__all__ = ["stack_order", "odd_one_out", "patient_affine", "is_orientation", "slice_affine", "frame_stack"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def odd_one_out(same_as_first: np.ndarray) -> int | None:
    """The index of the first slice that differs from most others, or None when all agree.

    Args:
        same_as_first: ``(N,)`` booleans, whether each slice agrees with slice 0 (``same_as_first[0]`` is true).

    Returns:
        the first index that disagrees with slice 0, or 0 when slice 0 is the one in the minority.
    """
    same = np.asarray(same_as_first, dtype=bool)
    if bool(same.all()):
        return None
    return 0 if int(same.sum()) * 2 < len(same) else int(np.argmin(same))


def _slice_words(names: Sequence[str] | None, *indices: int) -> str:
    """``"; slice a.dcm"`` / ``"; slices a.dcm and b.dcm"`` when ``names`` are given, else ``""``."""
    if names is None:
        return ""
    picked = [names[int(i)] for i in indices]
    return f"; slice {picked[0]}" if len(picked) == 1 else f"; slices {' and '.join(picked)}"


def stack_order(
    orientations: np.ndarray, positions: np.ndarray, spacings: np.ndarray, path: str | PathLike,
    spacing_rtol: float = 0.1, names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate slices as one volume and sort them by position along the slice normal.

    Args:
        orientations: ``(N, 6)`` ImageOrientationPatient of each slice.
        positions: ``(N, 3)`` ImagePositionPatient of each slice.
        spacings: ``(N, 2)`` PixelSpacing of each slice.
        path: the series folder or file, for messages.
        spacing_rtol: allowed relative deviation of a slice gap from the median gap.
        names: file name of each slice, to name the odd slice (or the two at one position) in messages.

    Returns:
        ``(order, sorted positions along the normal, median gap)``; ``order`` sorts the slices ascending.

    Raises:
        VolumeError: mixed orientations or pixel spacings, duplicate or unevenly spaced positions.
    """
    odd = odd_one_out(np.all(np.isclose(orientations, orientations[0], atol=1e-4), axis=1))
    if odd is not None:
        raise VolumeError("series has slices with different orientations (mixed geometry)"
                          + _slice_words(names, odd), path)
    odd = odd_one_out(np.all(np.isclose(spacings, spacings[0], rtol=1e-4), axis=1))
    if odd is not None:
        raise VolumeError("series has slices with different pixel spacings (mixed geometry)"
                          + _slice_words(names, odd), path)
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    pos = positions @ normal
    order = np.argsort(pos, kind="stable")
    pos_sorted = pos[order]
    gaps = np.diff(pos_sorted)
    if np.any(gaps < 1e-3):
        k = int(np.argmax(gaps < 1e-3))
        raise VolumeError("series has two or more slices at the same position (duplicate or mixed series)"
                          + _slice_words(names, order[k], order[k + 1]), path)
    median = float(np.median(gaps))
    if np.any(np.abs(gaps - median) > spacing_rtol * median):
        raise VolumeError(
            f"series has uneven slice spacing (gaps {gaps.min():.3g}-{gaps.max():.3g} mm): missing slices?", path
        )
    return order, pos_sorted, median


def patient_affine(orientation: Any, origin: Any, pixel_spacing: Any, step: Any) -> np.ndarray:
    """RAS affine of a ``(column, row, slice)`` array, as ``PydicomReader`` builds it for a series.

    Args:
        orientation: ImageOrientationPatient (row direction, then column direction; LPS).
        origin: ImagePositionPatient of the first slice (LPS, mm).
        pixel_spacing: PixelSpacing (row spacing, column spacing) in mm.
        step: LPS vector from one slice to the next (mm).

    Returns:
        a ``(4, 4)`` float64 array.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * float(pixel_spacing[1])  # along a row: the column index grows
    lps[:3, 1] = iop[3:] * float(pixel_spacing[0])  # down a column: the row index grows
    lps[:3, 2] = np.asarray(step, dtype=np.float64)
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return _LPS_TO_RAS @ lps


def is_orientation(orientation: Any, atol: float = 1e-2) -> bool:
    """True when ImageOrientationPatient holds two orthogonal unit vectors (anything else has no usable plane)."""
    iop = np.asarray(orientation, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    return bool(abs(np.linalg.norm(row) - 1) < atol and abs(np.linalg.norm(col) - 1) < atol
                and abs(float(row @ col)) < atol)


def _frame_geometry(ds: Any, frame: int, path: str | PathLike) -> dict[str, Any]:
    """Orientation, position, pixel spacing and thickness of one frame (functional groups, else top level)."""
    where = f"frame {frame + 1}: "
    sources = {
        "ImageOrientationPatient": ("PlaneOrientationSequence", 6),
        "ImagePositionPatient": ("PlanePositionSequence", 3),
        "PixelSpacing": ("PixelMeasuresSequence", 2),
    }
    out: dict[str, Any] = {}
    for keyword, (sequence, n) in sources.items():
        item = functional_item(ds, sequence, frame)
        value = tag_floats(item, keyword, n, path, where) if item is not None else None
        out[keyword] = value if value is not None else tag_floats(ds, keyword, n, path, where)
    measures = functional_item(ds, "PixelMeasuresSequence", frame)
    thickness = None
    for source in (measures, ds):
        for keyword in ("SliceThickness", "SpacingBetweenSlices"):
            if thickness is None and source is not None:
                value = header_value(source, keyword)
                thickness = value if value is not None and value > 0 else None
    out["thickness"] = thickness
    return out


def slice_affine(ds: Any, path: str | PathLike) -> np.ndarray | None:
    """RAS affine of a single-frame image's ``(row, column)`` array, or None when it has no usable orientation.

    The third axis is the slice normal times SliceThickness (else SpacingBetweenSlices, else 1 mm); a missing
    ImagePositionPatient puts the origin at 0 and a missing PixelSpacing means 1 mm.

    Raises:
        VolumeError: malformed ImageOrientationPatient/ImagePositionPatient/PixelSpacing.
    """
    g = _frame_geometry(ds, 0, path)
    iop = g["ImageOrientationPatient"]
    if iop is None or not is_orientation(iop):
        return None
    normal = np.cross(iop[:3], iop[3:])
    affine = patient_affine(iop, g["ImagePositionPatient"] or (0.0, 0.0, 0.0), g["PixelSpacing"] or (1.0, 1.0),
                            normal * (g["thickness"] or 1.0))
    return affine[:, [1, 0, 2, 3]]  # (column, row) -> (row, column): the image is stored (C, rows, columns)


def frame_stack(ds: Any, frames: int, path: str | PathLike) -> tuple[list[int], np.ndarray] | None:
    """Frame order and RAS affine of a multi-frame file whose frames form one volume, else None.

    Every frame needs an orientation and a position (enhanced files: PlaneOrientationSequence and
    PlanePositionSequence in the functional groups); the frames must pass :func:`stack_order`. Frames at repeated
    positions (a cine), mixed orientations or uneven gaps are no volume: they stay frames.

    Args:
        ds: the dataset.
        frames: NumberOfFrames.
        path: the file, for messages.

    Returns:
        ``(order, affine)``: ``order`` sorts the frames by position along the slice normal (ascending); the
        affine is that of the sorted ``(column, row, frame)`` array.

    Raises:
        VolumeError: malformed geometry values in the header or the functional groups.
    """
    if frames < 2 or not (ds.get("PerFrameFunctionalGroupsSequence") or ds.get("SharedFunctionalGroupsSequence")):
        return None
    geometry = [_frame_geometry(ds, f, path) for f in range(frames)]
    if any(g["ImageOrientationPatient"] is None or g["ImagePositionPatient"] is None for g in geometry):
        return None
    iops = np.array([g["ImageOrientationPatient"] for g in geometry])
    if not is_orientation(iops[0]):
        return None
    ipps = np.array([g["ImagePositionPatient"] for g in geometry])
    spacings = np.array([g["PixelSpacing"] or (1.0, 1.0) for g in geometry])
    try:
        order, _, _ = stack_order(iops, ipps, spacings, path)
    except VolumeError:
        return None
    first, last = ipps[order[0]], ipps[order[-1]]
    affine = patient_affine(iops[0], first, spacings[0], (last - first) / (frames - 1))
    return [int(i) for i in order], affine
