# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Seeded generator of synthetic phantoms: an ellipse/ellipsoid "organ" with 0-3 disc/sphere "lesions".

Arrays are in index order ``(y, x)`` or ``(z, y, x)``. Geometry follows DICOM LPS with an identity
orientation: x (columns) points to the patient's **left**, so a lesion in the image's right half is on
the patient's left (radiological display convention). Lesions lie inside the organ (in 2D fully; in 3D a
sphere near the organ's edge can reach past it), fully on one side of the midline, and at least 3 voxels
apart, so every lesion is one connected component of the label map, from which the answers are read.

With ``lesion_z="peripheral"`` (volumes only) no lesion voxel lies on the central slices
(:func:`central_slices`: at least the middle 20 % of the depth, always holding the middle slice), so the
middle slice alone cannot answer questions about the whole volume. Slice index ``k`` lies at LPS
``z = (k - (D - 1) / 2) * spacing_z`` (the writers' geometry): higher indices are more superior (cranial).

Intensities: CT in Hounsfield units (air -1000, organ 30-70, bright lesions +60..+150, dark lesions
-50..-120 relative to the organ, Gaussian noise 8 HU, floor -1024); MR in arbitrary units (background ~0, organ
400-700, lesions +250..+500 / -200..-350, Rician noise). Values are rounded to integers so that DICOM
and NIfTI files store them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LESION_Z_MODES", "MODALITIES", "SPLIT_CODES", "Lesion", "PhantomCase", "case_rng", "central_slices",
           "generate_phantom"]

MODALITIES = ("CT", "MR")
LESION_Z_MODES = ("any", "peripheral")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

LABEL_BACKGROUND = 0
LABEL_ORGAN = 1
LABEL_FIRST_LESION = 2


@dataclass(frozen=True)
class Lesion:
    """One lesion as generated.

    Args:
        label: its value in the label map (2, 3, 4).
        center: centre in index order ((y, x) or (z, y, x)).
        radius: radius in voxels (in-plane; spheres use the same radius in voxels along z).
        kind: "bright" or "dark".
        side: patient side, "left" or "right".
        delta: intensity difference to the organ.
    """

    label: int
    center: tuple[float, ...]
    radius: float
    kind: str
    side: str
    delta: float


@dataclass(frozen=True)
class PhantomCase:
    """A generated phantom.

    Args:
        case_id: identifier (also used as the DICOM PatientID; no real patient data).
        image: intensities, float32, ``(H, W)`` or ``(D, H, W)``.
        label: uint8 label map (0 background, 1 organ, 2.. lesions).
        modality: "CT" or "MR".
        spacing: voxel size in mm, index order.
        lesions: the lesions placed.
        organ_value: mean organ intensity before noise.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    modality: str
    spacing: tuple[float, ...]
    lesions: tuple[Lesion, ...]
    organ_value: float

    @property
    def ndim(self) -> int:
        """2 for images, 3 for volumes."""
        return self.image.ndim


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one case: independent per (seed, split, index), so any case can be rebuilt alone.

    Args:
        seed: data set seed.
        split: "train", "val" or "test".
        index: case index within the split.
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])


def central_slices(depth: int) -> range:
    """Slice indices kept free of lesions by ``lesion_z="peripheral"``: ``floor(0.4 D)`` to ``ceil(0.6 D) - 1``.

    At least the middle 20 % of the depth, and always both middle slices of an even depth.

    Args:
        depth: number of slices.
    """
    return range(int(np.floor(0.4 * depth)), int(np.ceil(0.6 * depth)))


def _peripheral_centre(
    rng: np.random.Generator,
    c: np.ndarray,
    axes: np.ndarray,
    mid: float,
    radius: float,
    side: str,
    band: range,
) -> tuple[float, float, float] | None:
    """A lesion centre ``(z, y, x)`` wholly above or below ``band``, on ``side``, inside the shrunk organ.

    Returns None when no lesion of this radius fits off the band; the centre may still fail the caller's
    inside/apart checks (then it draws again).
    """
    gap = (band.stop - 1 - c[0]) + radius + 1e-3  # the band is symmetric about the middle: same gap below
    inner = np.maximum(axes - (radius + 1), 1e-3)
    if inner[0] <= gap:
        return None
    z = c[0] + (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(gap, inner[0])
    room = 1.0 - ((z - c[0]) / inner[0]) ** 2  # what is left of the shrunk ellipse in this plane
    off = rng.uniform(radius + 2, max(radius + 2, np.sqrt(room) * inner[2]))
    x = mid + off if side == "left" else mid - off  # patient left = larger x
    rest = room - ((x - c[2]) / inner[2]) ** 2
    y = c[1] + rng.uniform(-1, 1) * inner[1] * np.sqrt(max(rest, 0.0))
    return float(z), float(y), float(x)


def generate_phantom(
    rng: np.random.Generator,
    *,
    size: int = 64,
    ndim: int = 2,
    depth: int | None = None,
    modality: str | None = None,
    num_lesions: int | None = None,
    case_id: str = "phantom",
    lesion_z: str = "any",
) -> PhantomCase:
    """Generate one phantom.

    Args:
        rng: random generator (see :func:`case_rng`).
        size: in-plane side in voxels (>= 32).
        ndim: 2 (image) or 3 (volume).
        depth: number of slices of a volume (default ``size // 2``, or ``size`` with ``lesion_z="peripheral"``).
        modality: "CT" or "MR" (random when None).
        num_lesions: 0-3 (random when None); fewer are placed if they do not fit (rare).
        case_id: identifier stored on the case.
        lesion_z: ``"any"`` (default: lesion centres anywhere along z inside the organ) or ``"peripheral"``
            (volumes: no lesion voxel on :func:`central_slices`; each lesion lies wholly above or below them, and
            the sphere grown by one voxel lies inside the organ; a lesion that does not fit is shrunk down to
            the smallest radius before it is dropped).

    Raises:
        ValueError: a bad argument, or ``"peripheral"`` with a depth too small for any lesion to fit
            off the central slices.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    modality = modality if modality is not None else MODALITIES[int(rng.integers(2))]
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    n_les = int(rng.integers(0, 4)) if num_lesions is None else int(num_lesions)
    if not 0 <= n_les <= 3:
        raise ValueError(f"num_lesions must be 0-3, got {n_les}")
    if lesion_z not in LESION_Z_MODES:
        raise ValueError(f"lesion_z must be one of {LESION_Z_MODES}, got {lesion_z!r}")
    peripheral = lesion_z == "peripheral"
    if peripheral and ndim != 3:
        raise ValueError("lesion_z='peripheral' is for volumes (ndim=3)")
    d = (depth or (size if peripheral else max(8, size // 2))) if ndim == 3 else 1
    shape = (d, size, size)
    zz, yy, xx = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    mid = (size - 1) / 2.0
    c = np.array([(d - 1) / 2.0, mid + rng.uniform(-0.03, 0.03) * size, mid + rng.uniform(-0.02, 0.02) * size])
    axes = np.array(
        [
            (rng.uniform(0.40, 0.46) if peripheral else rng.uniform(0.32, 0.42)) * d if ndim == 3 else 1.0,
            rng.uniform(0.28, 0.40) * size,
            rng.uniform(0.34, 0.44) * size,
        ]
    )
    dz = (zz - c[0]) / axes[0] if ndim == 3 else np.zeros_like(zz)
    organ = dz**2 + ((yy - c[1]) / axes[1]) ** 2 + ((xx - c[2]) / axes[2]) ** 2 <= 1.0
    label = np.where(organ, LABEL_ORGAN, LABEL_BACKGROUND).astype(np.uint8)

    if modality == "CT":
        background, organ_value = -1000.0, float(rng.uniform(30, 70))
    else:
        background, organ_value = 0.0, float(rng.uniform(400, 700))
    image = np.full(shape, background, dtype=np.float32)
    image[organ] = organ_value

    band = central_slices(d)
    if peripheral and (0.46 * d - 0.05 * size - 1.0) - (band.stop - 1 - c[0]) <= 0.05 * size:
        raise ValueError(f"lesion_z='peripheral' needs more depth than {d} slices for size {size} (try depth=size)")
    lesions: list[Lesion] = []
    for k in range(n_les):
        radius = float(rng.uniform(0.05, 0.11) * size)
        side = "left" if rng.random() < 0.5 else "right"
        kind = "bright" if rng.random() < 0.5 else "dark"
        radius0 = radius
        for attempt in range(200):
            if peripheral:
                # crowded slabs: shrink the lesion every 40 failed draws, never below the smallest radius
                radius = max(0.05 * size, radius0 * 0.85 ** (attempt // 40))
                centre = _peripheral_centre(rng, c, axes, mid, radius, side, band)
                if centre is None:
                    break
                z, y, x = centre
            else:
                # patient left = larger x (LPS, identity orientation)
                off = rng.uniform(radius + 2, axes[2] - radius - 1) if axes[2] - radius - 1 > radius + 2 else None
                if off is None:
                    break
                x = mid + off if side == "left" else mid - off
                y = c[1] + rng.uniform(-1, 1) * (axes[1] - radius - 1)
                z = c[0] + (rng.uniform(-1, 1) * max(axes[0] - radius - 1, 0.0) if ndim == 3 else 0.0)
            # fully inside the organ: the ellipse shrunk by radius + 1 must contain the centre
            inner = np.maximum(axes - (radius + 1), 1e-3)
            inside = ((x - c[2]) / inner[2]) ** 2 + ((y - c[1]) / inner[1]) ** 2
            if ndim == 3:
                inside += ((z - c[0]) / inner[0]) ** 2
            if inside > 1.0:
                continue
            if any(
                np.hypot(np.hypot(x - o.center[-1], y - o.center[-2]), (z - o.center[0]) if ndim == 3 else 0.0)
                < radius + o.radius + 3
                for o in lesions
            ):
                continue
            dist2 = (xx - x) ** 2 + (yy - y) ** 2 + ((zz - z) ** 2 if ndim == 3 else 0.0)
            if peripheral and not organ[dist2 <= (radius + 1.0) ** 2].all():
                continue  # strictly inside: the sphere grown by one voxel lies in the organ
            if modality == "CT":
                delta = float(rng.uniform(60, 150) if kind == "bright" else -rng.uniform(50, 120))
            else:
                delta = float(rng.uniform(250, 500) if kind == "bright" else -rng.uniform(200, 350))
            center = (float(z), float(y), float(x)) if ndim == 3 else (float(y), float(x))
            lesions.append(Lesion(LABEL_FIRST_LESION + len(lesions), center, radius, kind, side, delta))
            disc = dist2 <= radius**2
            label[disc] = lesions[-1].label
            image[disc] = organ_value + delta
            break

    if modality == "CT":
        image = np.maximum(image + rng.normal(0.0, 8.0, shape).astype(np.float32), -1024.0)  # scanner floor
    else:
        sigma = 15.0
        image = np.hypot(image + rng.normal(0.0, sigma, shape), rng.normal(0.0, sigma, shape)).astype(np.float32)
    image = np.round(image).astype(np.float32)
    spacing = (2.5, 0.8, 0.8) if ndim == 3 else (0.8, 0.8)
    if ndim == 2:
        image, label = image[0], label[0]
    return PhantomCase(case_id, image, label, modality, spacing, tuple(lesions), organ_value)
