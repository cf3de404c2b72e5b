# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Probe sets for the trust evaluation: one datalist whose items say which set they belong to (``probe_set``).

* ``in_domain``: ordinary phantoms (every question family), the gate's false-refusal set;
* ``lesion_free``: phantoms with no lesion, asked only about lesions (presence, side, brightness: every answer
  is "no"), the absent-finding set whose "yes" rate is the hallucination rate;
* out of domain, asked "Is there a lesion in this image?": ``blank`` (a uniform grey image), ``noise`` (uniform
  RGB noise), ``gradient`` (a smooth random colour gradient, photo-like) with ground truth "no" (none has a
  lesion, by construction); ``ct_small`` and ``mr_small`` (pydicom's real CT and MR test slices) and ``photo``
  (scikit-image's sample photographs) without ground truth: they count only in the refusal rates.

The bundle's ``evaluate.json`` reports refusal, reason and false-yes rates per probe set (``docs/trust.md``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .export import _write_datalist
from .generator import case_rng, generate_phantom
from .questions import make_questions

__all__ = ["OUT_OF_DOMAIN_SETS", "PROBE_SETS", "write_probe_datalist"]

#: sets without phantoms (their images are nothing the demo model was trained on).
OUT_OF_DOMAIN_SETS = ("blank", "noise", "gradient", "ct_small", "mr_small", "photo")
#: every probe set, in the order they are written.
PROBE_SETS = ("in_domain", "lesion_free", *OUT_OF_DOMAIN_SETS)
_ABSENT_FAMILIES = ("presence", "side", "brightness")
_PRESENCE = "Is there a lesion in this image?"
_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "horse")


def _synthetic(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if kind == "blank":
        return np.full((size, size), int(rng.integers(0, 256)), dtype=np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    channels = [a * yy + b * xx + c for a, b, c in rng.uniform(-1, 1, (3, 3))]
    stack = np.stack(channels, -1)
    stack = (stack - stack.min()) / max(float(np.ptp(stack)), 1e-6)
    return (255 * stack).astype(np.uint8)


def _write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def _out_of_domain_items(kind: str, out: Path, n_cases: int, seed: int, size: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if kind in ("blank", "noise", "gradient"):
        for index in range(n_cases):
            name = f"{kind}{index:03d}.png"
            _write_png(_synthetic(kind, case_rng(seed, "test", 1000 * (1 + OUT_OF_DOMAIN_SETS.index(kind)) + index),
                                  size), out / name)
            items.append({"image": name, "question": _PRESENCE, "answer": "no", "answer_type": "CLOSED"})
    elif kind in ("ct_small", "mr_small"):
        from pydicom.data import get_testdata_file

        name = f"{kind}.dcm"
        shutil.copyfile(get_testdata_file(f"{kind.split('_')[0].upper()}_small.dcm"), out / name)
        items.append({"image": name, "question": _PRESENCE, "answer_type": "CLOSED"})
    else:
        from skimage import data as skimage_data

        for photo in _PHOTOS[:n_cases]:
            name = f"photo_{photo}.png"
            _write_png(np.asarray(getattr(skimage_data, photo)()), out / name)
            items.append({"image": name, "question": _PRESENCE, "answer_type": "CLOSED"})
    return [{**it, "id": f"{kind}-{i}", "probe_set": kind, "family": "presence"} for i, it in enumerate(items)]


def write_probe_datalist(
    out_dir: str | os.PathLike,
    n_cases: int,
    *,
    seed: int,
    split: str = "test",
    size: int = 64,
    sets: Sequence[str] = PROBE_SETS,
) -> Path:
    """Write the chosen probe sets' images and one ``datalist.json`` whose items carry ``probe_set``.

    Args:
        out_dir: output folder (created); each set's images are in its own sub-folder.
        n_cases: images per set (``ct_small`` and ``mr_small`` have one each, ``photo`` at most 8).
        seed: data set seed (phantoms are ``case_rng(seed, split, index)``, as in
            :func:`~.export.write_vqa_datalist`; lesion-free ones use the index offset by ``n_cases``).
        split: split name of the phantoms' random streams.
        size: in-plane size of phantoms and synthetic images.
        sets: a subset of :data:`PROBE_SETS`.

    Returns:
        the path of ``datalist.json``; image paths in it are relative to its folder.

    Raises:
        ValueError: an unknown probe set.
    """
    unknown = sorted(set(sets) - set(PROBE_SETS))
    if unknown:
        raise ValueError(f"unknown probe sets {unknown}; known: {PROBE_SETS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, Any]] = []
    for kind in sets:
        folder = out / kind
        if kind in ("in_domain", "lesion_free"):
            lesions = None if kind == "in_domain" else 0
            offset = 0 if kind == "in_domain" else n_cases

            def case(index: int, lesions: int | None = lesions, offset: int = offset) -> Any:
                return generate_phantom(case_rng(seed, split, offset + index), size=size, ndim=2,
                                        num_lesions=lesions, case_id=f"{split}-{kind}-{index}")

            families = None if kind == "in_domain" else _ABSENT_FAMILIES
            listed = json.loads(_write_datalist(folder, n_cases, case, "case{:03d}.dcm", f"{kind}-", make_questions,
                                                families).read_text())
            (folder / "datalist.json").unlink()
            batch = [{**it, "probe_set": kind} for it in listed]
        else:
            folder.mkdir(parents=True, exist_ok=True)
            batch = _out_of_domain_items(kind, folder, n_cases, seed, size)
        items += [{**it, "image": f"{kind}/{it['image']}"} for it in batch]
    path = out / "datalist.json"
    path.write_text(json.dumps(items, indent=1))
    return path
