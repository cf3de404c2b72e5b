# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Questions and answers about a phantom, computed from its label map and pixels (not from the generator's
intentions), so that a wrong placement can never produce a wrong answer.

Families (``answer_type``): ``presence`` (CLOSED), ``side`` (CLOSED, asks about one side, often a side with
no lesion), ``brightness`` (CLOSED, bright or dark lesion, often absent), ``modality_closed`` (CLOSED),
``count`` (OPEN, "zero".."three"), ``modality`` (OPEN, "CT"/"MRI"), ``location`` (OPEN, "left", "right",
"both sides", or "none" when there is no lesion: a question about an absent finding).
Left/right are the patient's sides (patient left = image right).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .generator import LABEL_FIRST_LESION, LABEL_ORGAN, PhantomCase

__all__ = ["FAMILIES", "LesionFinding", "PhantomQA", "findings_from_label_map", "make_questions", "sample_question"]

FAMILIES = ("presence", "side", "brightness", "modality_closed", "count", "modality", "location")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
_MODALITY_NAME = {"CT": "CT", "MR": "MRI"}
_ARTICLE = {"CT": "a", "MR": "an"}


@dataclass(frozen=True)
class LesionFinding:
    """A lesion as measured from the label map.

    Args:
        label: label value.
        voxels: number of voxels.
        centroid: centroid in index order.
        side: "left" or "right" (patient side, from the centroid's column).
        kind: "bright" or "dark" (mean lesion intensity vs the organ's median).
    """

    label: int
    voxels: int
    centroid: tuple[float, ...]
    side: str
    kind: str


@dataclass(frozen=True)
class PhantomQA:
    """One question about a phantom.

    Args:
        question: question text (no ``<image>`` placeholder).
        answer: ground-truth answer.
        answer_type: "CLOSED" or "OPEN".
        family: question family (see :data:`FAMILIES`).
    """

    question: str
    answer: str
    answer_type: str
    family: str


def findings_from_label_map(image: np.ndarray, label: np.ndarray) -> list[LesionFinding]:
    """Measure the lesions of a phantom from its label map and intensities.

    Args:
        image: intensities.
        label: label map (1 organ, >= 2 lesions).
    """
    mid = (label.shape[-1] - 1) / 2.0
    organ_median = float(np.median(image[label == LABEL_ORGAN])) if (label == LABEL_ORGAN).any() else 0.0
    out = []
    for lab in sorted(int(v) for v in np.unique(label) if v >= LABEL_FIRST_LESION):
        idx = np.argwhere(label == lab)
        centroid = tuple(float(v) for v in idx.mean(0))
        mean = float(image[label == lab].mean())
        out.append(
            LesionFinding(
                lab,
                len(idx),
                centroid,
                "left" if centroid[-1] > mid else "right",
                "bright" if mean > organ_median else "dark",
            )
        )
    return out


def make_questions(case: PhantomCase, families: Sequence[str] | None = None) -> list[PhantomQA]:
    """Every question of the chosen families about a case, with answers from its label map.

    Args:
        case: the phantom.
        families: subset of :data:`FAMILIES` (all when None).
    """
    fams = FAMILIES if families is None else tuple(families)
    unknown = set(fams) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown question families {sorted(unknown)}; known: {FAMILIES}")
    found = findings_from_label_map(case.image, case.label)
    n = len(found)
    sides = {f.side for f in found}
    kinds = {f.kind for f in found}
    what = "scan" if case.ndim == 3 else "image"
    yn = ("no", "yes")
    qa: list[PhantomQA] = []
    if "presence" in fams:
        qa.append(PhantomQA(f"Is there a lesion in this {what}?", yn[n > 0], "CLOSED", "presence"))
    if "side" in fams:
        for side in ("left", "right"):
            qa.append(PhantomQA(f"Is there a lesion on the {side} side?", yn[side in sides], "CLOSED", "side"))
    if "brightness" in fams:
        for kind in ("bright", "dark"):
            qa.append(PhantomQA(f"Is there a {kind} lesion?", yn[kind in kinds], "CLOSED", "brightness"))
    if "modality_closed" in fams:
        for mod in ("CT", "MR"):
            qa.append(
                PhantomQA(
                    f"Is this {_ARTICLE[mod]} {_MODALITY_NAME[mod]} {what}?",
                    yn[case.modality == mod],
                    "CLOSED",
                    "modality_closed",
                )
            )
    if "count" in fams:
        qa.append(PhantomQA("How many lesions are there?", NUMBER_WORDS[n], "OPEN", "count"))
    if "modality" in fams:
        modality = _MODALITY_NAME[case.modality]
        qa.append(PhantomQA(f"What imaging modality is this {what}?", modality, "OPEN", "modality"))
    if "location" in fams:
        loc = "none" if n == 0 else ("both sides" if len(sides) == 2 else next(iter(sides)))
        qa.append(PhantomQA("On which side are the lesions?", loc, "OPEN", "location"))
    return qa


def sample_question(
    case: PhantomCase, rng: np.random.Generator, families: Sequence[str] | None = None
) -> PhantomQA:
    """Draw one question: a family uniformly, then one of its questions uniformly.

    Args:
        case: the phantom.
        rng: random generator.
        families: subset of :data:`FAMILIES` (all when None).
    """
    qas = make_questions(case, families)
    fams = sorted({q.family for q in qas}, key=FAMILIES.index)
    fam = fams[int(rng.integers(len(fams)))]
    pool = [q for q in qas if q.family == fam]
    return pool[int(rng.integers(len(pool)))]
