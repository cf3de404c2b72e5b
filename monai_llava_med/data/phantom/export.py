# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Write a phantom VQA data set to disk in the LLaVA-Med JSON and VQA-eval formats.

Layout of ``out``::

    images/{split}/{case_id}.dcm            2-D case, DICOM          (also .nii.gz, _seg.nii.gz, .png)
    images/{split}/{case_id}/slice_*.dcm    3-D case, DICOM series   (also {case_id}.nii.gz, _seg.nii.gz)
    llava_med_{split}.json                  one multi-turn conversation per case (instruct format)
    vqa_{split}_questions.jsonl             {"question_id", "image", "text"} per question
    vqa_{split}_answers.json                [{"id", "image", "conversations", "answer_type", "family"}]
    manifest.json                           parameters and counts

Cases are the same as :class:`PhantomVQADataset` items for 2-D cases with the same seed and split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .generator import SPLIT_CODES, PhantomCase, case_rng, generate_phantom
from .questions import PhantomQA, make_questions
from .volume_questions import make_volume_questions
from .writers import write_dicom, write_nifti, write_png

__all__ = ["split_sizes", "write_phantom_dataset", "write_vqa_datalist", "write_volume_vqa_datalist"]

FORMATS = ("dcm", "nii", "png")


def split_sizes(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, int]:
    """Cases per split: val and test get their fraction (at least 1 each when ``n >= 3``), train the rest.

    Args:
        n: total number of cases.
        fractions: train/val/test fractions.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    val = max(1, int(round(n * fractions[1]))) if n >= 3 else 0
    test = max(1, int(round(n * fractions[2]))) if n >= 3 else 0
    return {"train": n - val - test, "val": val, "test": test}


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    size: int = 64,
    fraction_3d: float = 0.25,
    formats: Sequence[str] = FORMATS,
    image_format: str = "dcm",
) -> dict[str, Any]:
    """Generate ``n`` phantoms split train/val/test and write images, conversations and VQA files.

    Args:
        out_dir: output folder (created).
        n: number of cases.
        seed: data set seed.
        size: in-plane size.
        fraction_3d: fraction of cases that are volumes (chosen per case from its own random stream).
        formats: files to write per case among "dcm", "nii", "png" (png only for 2-D cases).
        image_format: which file the JSON ``image`` fields name ("dcm", "nii" or "png"; volumes fall back
            from png to nii). It must be among ``formats``.

    Returns:
        The manifest (also written to ``manifest.json``).
    """
    unknown = set(formats) - set(FORMATS)
    if unknown or image_format not in formats:
        raise ValueError(f"formats must be among {FORMATS} and include image_format={image_format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = split_sizes(n)
    counts: dict[str, dict[str, int]] = {}
    for split, n_split in sizes.items():
        conversations, questions, answers = [], [], []
        n3d = 0
        for i in range(n_split):
            rng = case_rng(seed, split, i)
            ndim = 3 if fraction_3d > 0 and rng.random() < fraction_3d else 2
            # 2-D cases reuse the in-memory stream layout: rebuild the rng so item i matches PhantomVQADataset
            rng = case_rng(seed, split, i) if ndim == 2 else rng
            case = generate_phantom(rng, size=size, ndim=ndim, case_id=f"phantom_{split}_{i:06d}")
            n3d += ndim == 3
            base = out / "images" / split
            files: dict[str, Path] = {}
            if "dcm" in formats:
                target = base / case.case_id if ndim == 3 else base / f"{case.case_id}.dcm"
                write_dicom(case, target, seed=seed)
                files["dcm"] = target
            if "nii" in formats:
                files["nii"] = write_nifti(case, base / f"{case.case_id}.nii.gz", base / f"{case.case_id}_seg.nii.gz")
            if "png" in formats and ndim == 2:
                files["png"] = write_png(case, base / f"{case.case_id}.png")
            key = image_format if image_format in files else "nii"
            if key not in files:
                raise ValueError(f"{case.case_id}: no file of format {image_format!r} for a {ndim}-D case")
            rel = files[key].relative_to(out).as_posix()
            qas = make_questions(case)
            order = np.random.default_rng([seed, 7, SPLIT_CODES[split], i]).permutation(len(qas))
            turns = []
            for j, k in enumerate(order):
                q = qas[int(k)]
                turns.append({"from": "human", "value": f"<image>\n{q.question}" if j == 0 else q.question})
                turns.append({"from": "gpt", "value": q.answer})
            conversations.append({"id": case.case_id, "image": rel, "conversations": turns, "modality": case.modality})
            for k, q in enumerate(qas):
                qid = f"{case.case_id}_q{k:02d}"
                questions.append({"question_id": qid, "image": rel, "text": q.question})
                answers.append(
                    {
                        "id": qid,
                        "image": rel,
                        "conversations": [
                            {"from": "human", "value": f"<image>\n{q.question}"},
                            {"from": "gpt", "value": q.answer},
                        ],
                        "answer_type": q.answer_type,
                        "family": q.family,
                    }
                )
        (out / f"llava_med_{split}.json").write_text(json.dumps(conversations, indent=1))
        (out / f"vqa_{split}_questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
        (out / f"vqa_{split}_answers.json").write_text(json.dumps(answers, indent=1))
        counts[split] = {"cases": n_split, "volumes": n3d, "questions": len(questions)}
    manifest = {
        "generator": "monai_llava_med.data.phantom",
        "seed": seed,
        "size": size,
        "fraction_3d": fraction_3d,
        "formats": list(formats),
        "image_format": image_format,
        "splits": counts,
        "left_right": "patient sides; patient left = image right (DICOM LPS, identity orientation)",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def write_vqa_datalist(
    out_dir: str | os.PathLike,
    n_cases: int,
    *,
    seed: int,
    split: str = "test",
    size: int = 64,
    families: Sequence[str] | None = None,
) -> Path:
    """2-D phantom DICOMs and their questions as a bundle datalist (``{"id", "image", "question", "answer",
    "answer_type", "family"}`` per question), the input of the bundle's ``evaluate.json``.

    Args:
        out_dir: output folder (created); images are written as ``case{index:03d}.dcm`` beside the list.
        n_cases: number of phantoms.
        seed: data set seed (cases are ``case_rng(seed, split, index)``).
        split: split name of the random streams ("train", "val" or "test").
        size: in-plane size.
        families: question families (all when None).

    Returns:
        the path of ``datalist.json``.
    """
    def case(index: int) -> PhantomCase:
        return generate_phantom(case_rng(seed, split, index), size=size, ndim=2, case_id=f"{split}-{index}")

    return _write_datalist(Path(out_dir), n_cases, case, "case{:03d}.dcm", "", make_questions, families)


def _write_datalist(
    out: Path,
    n_cases: int,
    make_case: Callable[[int], PhantomCase],
    name: str,
    id_prefix: str,
    question_fn: Callable[..., list[PhantomQA]],
    families: Sequence[str] | None,
) -> Path:
    """Write ``n_cases`` cases as DICOM (``name.format(index)``) and their questions as ``datalist.json``."""
    out.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, Any]] = []
    for index in range(n_cases):
        case = make_case(index)
        image = name.format(index)
        write_dicom(case, out / image, seed=index)
        for qa in question_fn(case, families=families):
            items.append({"id": f"{id_prefix}{index}-{qa.family}-{len(items)}", "image": image, "question": qa.question,
                          "answer": qa.answer, "answer_type": qa.answer_type, "family": qa.family})
    path = out / "datalist.json"
    path.write_text(json.dumps(items))
    return path


def write_volume_vqa_datalist(
    out_dir: str | os.PathLike,
    n_cases: int,
    *,
    seed: int,
    split: str = "test",
    size: int = 64,
    depth: int = 48,
    families: Sequence[str] | None = None,
) -> Path:
    """3-D phantom DICOM series and their whole-volume questions (:func:`~.volume_questions.make_volume_questions`)
    as a bundle datalist, like :func:`write_vqa_datalist`.

    Lesions lie only on slices away from the middle (``lesion_z="peripheral"``), so the middle slice alone
    cannot answer them.

    Args:
        out_dir: output folder (created); each series is a folder ``volume{index:03d}`` beside the list.
        n_cases: number of volumes.
        seed: data set seed (cases are ``case_rng(seed, split, index)``).
        split: split name of the random streams.
        size: in-plane size.
        depth: number of slices.
        families: volume question families (all when None).

    Returns:
        the path of ``datalist.json``.
    """
    def case(index: int) -> PhantomCase:
        return generate_phantom(case_rng(seed, split, index), size=size, ndim=3, depth=depth, lesion_z="peripheral",
                                case_id=f"{split}-volume-{index}")

    return _write_datalist(Path(out_dir), n_cases, case, "volume{:03d}", "v", make_volume_questions, families)
