# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Questions that only the whole volume answers, with answers from its 3-D label map and patient geometry.

Lesions are the label values >= 2 of the label map (each one connected lesion, as in
:mod:`.questions`). Each lesion's centroid is mapped through the index -> LPS affine the writers use
(:func:`~.writers.lps_affine`), and compared with the LPS position of the volume's centre:

* **side**: patient left when the centroid's L coordinate (+x) is larger than the centre's, else right;
* **half**: the **upper** (cranial, superior) half when its S coordinate (+z in LPS) is larger than the
  centre's, else the lower (caudal) half. This is the patient axis, not the array axis: a volume stored
  with its slices reversed and the affine compensating gets the same answers (:func:`volume_findings`).

A centroid exactly on a mid-plane counts as right / lower; ``lesion_z="peripheral"`` phantoms keep every
lesion clear of the axial mid-plane.

Families (all CLOSED yes/no except the OPEN count):

* ``volume_presence``: "Is there a lesion anywhere in this scan?"
* ``volume_count``: "How many lesions are in this scan?" (OPEN, "zero".."three") and "Is there more than one
  lesion in this scan?" (CLOSED).
* ``volume_half``: "Is there a lesion in the upper half of the scan?" and "... lower half ...".
* ``volume_side``: "Is there a lesion on the left side of this scan?" and "... right side ...".
* ``volume_largest``: "Is the largest lesion on the left side?" / "... right side?" / "... in the upper half of
  the scan?" / "... lower half ...". Asked **only** when there are at least two lesions and the largest has at
  least :data:`LARGEST_MARGIN` times the voxels of the second largest: with none or one lesion "the largest
  lesion" is a false or trivial premise, and near-equal sizes have no answer a reader could see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .generator import LABEL_FIRST_LESION, PhantomCase
from .questions import NUMBER_WORDS, PhantomQA
from .writers import lps_affine

__all__ = [
    "LARGEST_MARGIN", "VOLUME_FAMILIES", "VolumeFinding", "clear_largest", "index_to_lps", "make_volume_questions",
    "volume_findings",
]

VOLUME_FAMILIES = ("volume_presence", "volume_count", "volume_half", "volume_side", "volume_largest")
#: the largest lesion must have this many times the voxels of the second for ``volume_largest`` to be asked
LARGEST_MARGIN = 1.25
_YN = ("no", "yes")


@dataclass(frozen=True)
class VolumeFinding:
    """A lesion of a volume as measured from its label map.

    Args:
        label: label value.
        voxels: number of voxels.
        lps: centroid in LPS millimetres.
        side: "left" or "right" (patient side).
        half: "upper" (superior) or "lower" (inferior) half of the scan, by the patient's S axis.
    """

    label: int
    voxels: int
    lps: tuple[float, float, float]
    side: str
    half: str


def index_to_lps(affine: np.ndarray, index: Sequence[float] | np.ndarray) -> np.ndarray:
    """Map array indices ``(z, y, x)`` (slice, row, column) of a volume to LPS millimetres.

    Args:
        affine: 4x4 affine taking ``(x, y, z, 1)`` = (column, row, slice, 1) to LPS, as
            :func:`~.writers.lps_affine` gives.
        index: one index ``(z, y, x)`` or an array ``(N, 3)`` of them (fractional indices allowed).

    Returns:
        ``(3,)`` or ``(N, 3)`` LPS coordinates ``(L, P, S)``.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    idx = np.asarray(index, dtype=np.float64)
    if idx.shape[-1] != 3:
        raise ValueError(f"index must end in 3 values (z, y, x), got shape {idx.shape}")
    xyz = idx[..., ::-1]
    return xyz @ affine[:3, :3].T + affine[:3, 3]


def volume_findings(label: np.ndarray, affine: np.ndarray) -> list[VolumeFinding]:
    """Measure the lesions of a volume: size, LPS centroid, patient side and half.

    Args:
        label: ``(D, H, W)`` label map (1 organ, >= 2 lesions).
        affine: index ``(x, y, z, 1)`` -> LPS affine of ``label`` (see :func:`index_to_lps`).
    """
    if label.ndim != 3:
        raise ValueError(f"volume_findings takes a (D, H, W) label map, got {label.ndim} dimensions")
    centre = index_to_lps(affine, (np.asarray(label.shape, dtype=np.float64) - 1.0) / 2.0)
    out = []
    for lab in sorted(int(v) for v in np.unique(label) if v >= LABEL_FIRST_LESION):
        idx = np.argwhere(label == lab)
        lps = index_to_lps(affine, idx.mean(0))
        out.append(
            VolumeFinding(
                lab,
                len(idx),
                (float(lps[0]), float(lps[1]), float(lps[2])),
                "left" if lps[0] > centre[0] else "right",  # LPS: +x is the patient's left
                "upper" if lps[2] > centre[2] else "lower",  # LPS: +z is superior
            )
        )
    return out


def clear_largest(found: list[VolumeFinding]) -> VolumeFinding | None:
    """The clearly largest lesion, the one ``volume_largest`` asks about (see :data:`LARGEST_MARGIN`), or None.

    Args:
        found: the lesions of a volume, from :func:`volume_findings`.
    """
    if len(found) < 2:
        return None
    first, second = sorted(found, key=lambda f: f.voxels, reverse=True)[:2]
    return first if first.voxels >= LARGEST_MARGIN * second.voxels else None


def make_volume_questions(case: PhantomCase, families: Sequence[str] | None = None) -> list[PhantomQA]:
    """Every question of the chosen volume families about a 3-D case, answered from its label map.

    Args:
        case: a 3-D phantom.
        families: subset of :data:`VOLUME_FAMILIES` (all when None).

    Raises:
        ValueError: a 2-D case or an unknown family.
    """
    fams = VOLUME_FAMILIES if families is None else tuple(families)
    unknown = set(fams) - set(VOLUME_FAMILIES)
    if unknown:
        raise ValueError(f"unknown volume question families {sorted(unknown)}; known: {VOLUME_FAMILIES}")
    if case.ndim != 3:
        raise ValueError(f"{case.case_id}: volume questions need a 3-D phantom")
    found = volume_findings(case.label, lps_affine(case))
    n = len(found)
    sides = {f.side for f in found}
    halves = {f.half for f in found}
    qa: list[PhantomQA] = []
    if "volume_presence" in fams:
        qa.append(PhantomQA("Is there a lesion anywhere in this scan?", _YN[n > 0], "CLOSED", "volume_presence"))
    if "volume_count" in fams:
        qa.append(PhantomQA("How many lesions are in this scan?", NUMBER_WORDS[n], "OPEN", "volume_count"))
        qa.append(PhantomQA("Is there more than one lesion in this scan?", _YN[n > 1], "CLOSED", "volume_count"))
    if "volume_half" in fams:
        for half in ("upper", "lower"):
            qa.append(
                PhantomQA(f"Is there a lesion in the {half} half of the scan?", _YN[half in halves], "CLOSED",
                          "volume_half")
            )
    if "volume_side" in fams:
        for side in ("left", "right"):
            qa.append(
                PhantomQA(f"Is there a lesion on the {side} side of this scan?", _YN[side in sides], "CLOSED",
                          "volume_side")
            )
    largest = clear_largest(found) if "volume_largest" in fams else None
    if largest is not None:
        for side in ("left", "right"):
            qa.append(
                PhantomQA(f"Is the largest lesion on the {side} side?", _YN[largest.side == side], "CLOSED",
                          "volume_largest")
            )
        for half in ("upper", "lower"):
            qa.append(
                PhantomQA(f"Is the largest lesion in the {half} half of the scan?", _YN[largest.half == half],
                          "CLOSED", "volume_largest")
            )
    return qa
