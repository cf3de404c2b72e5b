# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""VQA-RAD, SLAKE and PathVQA in their public layouts, mapped to :class:`VQARecord`.

- VQA-RAD: ``VQA_RAD Dataset Public.json`` + ``VQA_RAD Image Folder/``; test = ``phrase_type`` ``test_*``.
- SLAKE: ``{train,validation,test}.json`` + ``imgs/``; English questions only by default.
- PathVQA: parquet shards (``*{split}*.parquet`` with image bytes, needs ``pyarrow``; images are extracted
  to files once) or the original pickles ``qas/{split}/{split}_qa.pkl`` + ``images/{split}/{image}.jpg``
  read with a restricted unpickler that only builds plain containers, strings and numbers.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.utils import optional_import

from monai_llava_med.errors import RecordError

from .llava_json import read_json_records, resolve_image_path
from .records import ANSWER_TYPES, VQARecord, answer_to_text, closed_answer_type

pq, _has_pyarrow = optional_import("pyarrow.parquet")

__all__ = ["safe_load_pickle", "load_vqa_rad", "load_slake", "load_pathvqa"]

_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


def _split(split: str) -> str:
    if split not in _SPLIT_ALIASES and split != "all":
        raise ValueError(f"unknown split {split!r}: use train, val (validation), test or all")
    return split if split == "all" else _SPLIT_ALIASES[split]


def _field(raw: Any, key: str, rid: str) -> str:
    if not isinstance(raw, Mapping):
        raise RecordError(f"expected an object, got {type(raw).__name__}", rid)
    v = raw.get(key)
    if not isinstance(v, str) or not v.strip():
        raise RecordError(f"missing or empty {key!r}", rid)
    return v.strip()


def _answer_type(raw: Mapping, answer: str) -> str:
    at = str(raw.get("answer_type", "")).strip().upper()
    return at if at in ANSWER_TYPES else closed_answer_type(answer)


def load_vqa_rad(root: str | os.PathLike, split: str = "test") -> list[VQARecord]:
    """VQA-RAD questions of one split.

    Args:
        root: folder with ``VQA_RAD Dataset Public.json`` and ``VQA_RAD Image Folder/``.
        split: "train" (freeform/para phrases), "test" (``test_*`` phrase types) or "all".

    Raises:
        RecordError: missing file or a malformed record (named by ``qid``).
    """
    split = _split(split)
    root = Path(root)
    images = root / "VQA_RAD Image Folder"
    out = []
    for i, raw in enumerate(read_json_records(root / "VQA_RAD Dataset Public.json")):
        rid = str(raw.get("qid", f"record #{i}")) if isinstance(raw, Mapping) else f"record #{i}"
        question = _field(raw, "question", rid)
        answer = answer_to_text(raw.get("answer"), rid, required=True)
        phrase = str(raw.get("phrase_type", "")).strip().lower()
        rec_split = "test" if phrase.startswith("test") else "train"
        if split != "all" and rec_split != split:
            continue
        out.append(
            VQARecord(
                qid=rid,
                question=question,
                answer=answer,
                answer_type=_answer_type(raw, answer),
                image=resolve_image_path(images, _field(raw, "image_name", rid), rid),
                split=rec_split,
                dataset="vqa_rad",
                meta={
                    k: raw[k] for k in ("question_type", "image_organ", "phrase_type") if raw.get(k) is not None
                },
            )
        )
    return out


def load_slake(root: str | os.PathLike, split: str = "test", language: str | None = "en") -> list[VQARecord]:
    """SLAKE questions of one split.

    Args:
        root: folder with ``train.json``, ``validation.json``, ``test.json`` and ``imgs/``.
        split: "train", "val"/"validation" or "test".
        language: keep questions with this ``q_lang`` ("en", evaluation standard); None keeps all.

    Raises:
        RecordError: missing file or a malformed record (named by ``qid``).
    """
    split = _split(split)
    if split == "all":
        return [r for s in ("train", "val", "test") for r in load_slake(root, s, language)]
    root = Path(root)
    fname = {"train": "train.json", "val": "validation.json", "test": "test.json"}[split]
    out = []
    for i, raw in enumerate(read_json_records(root / fname)):
        rid = str(raw.get("qid", f"record #{i}")) if isinstance(raw, Mapping) else f"record #{i}"
        if language is not None and isinstance(raw, Mapping) and raw.get("q_lang") != language:
            continue
        question = _field(raw, "question", rid)
        answer = answer_to_text(raw.get("answer"), rid, required=True)
        out.append(
            VQARecord(
                qid=rid,
                question=question,
                answer=answer,
                answer_type=_answer_type(raw, answer),
                image=resolve_image_path(root / "imgs", _field(raw, "img_name", rid), rid),
                split=split,
                dataset="slake",
                meta={
                    k: raw[k]
                    for k in ("q_lang", "location", "modality", "content_type", "base_type")
                    if raw.get(k) is not None
                },
            )
        )
    return out


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global: only opcodes for plain containers, strings, numbers remain."""

    _ALLOWED = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain containers and strings")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may only contain dicts, lists, tuples, sets, strings and numbers.

    Args:
        path: the pickle file.

    Raises:
        RecordError: unreadable file, or a pickle that references any class or function.
    """
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise RecordError(f"unsafe or unreadable pickle: {e}", path) from e


def _pathvqa_parquet_files(root: Path, split: str) -> list[Path]:
    names = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}[split]
    files = sorted(root.rglob("*.parquet"))
    return [f for f in files if any(f.name.startswith(n) or f"{n}-" in f.name for n in names)]


def load_pathvqa(
    root: str | os.PathLike,
    split: str = "test",
    *,
    image_cache_dir: str | os.PathLike | None = None,
) -> list[VQARecord]:
    """PathVQA questions of one split (parquet form if present, else the original pickles).

    Closed = yes/no answers. Parquet images are written once to ``image_cache_dir`` (default
    ``root/extracted_images/{split}``) so that records carry file paths like the other data sets.

    Args:
        root: the data set folder.
        split: "train", "val"/"validation" or "test".
        image_cache_dir: where parquet images are extracted.

    Raises:
        RecordError: no data for the split, an unsafe pickle, or a malformed record.
    """
    split = _split(split)
    if split == "all":
        return [r for s in ("train", "val", "test") for r in load_pathvqa(root, s, image_cache_dir=image_cache_dir)]
    root = Path(root)
    parquet = _pathvqa_parquet_files(root, split)
    if parquet:
        return _load_pathvqa_parquet(parquet, split, Path(image_cache_dir or root / "extracted_images" / split))
    pkl = root / "qas" / split / f"{split}_qa.pkl"
    if not pkl.exists():
        raise RecordError(f"no PathVQA data for split {split!r} (no *.parquet, no {pkl.relative_to(root)})", root)
    data = safe_load_pickle(pkl)
    if not isinstance(data, list):
        raise RecordError(f"expected a list of question dicts, got {type(data).__name__}", pkl)
    out = []
    for i, raw in enumerate(data):
        rid = f"{split}_{i:06d}"
        image = _field(raw, "image", rid)
        question = _field(raw, "question", rid)
        answer = answer_to_text(raw.get("answer"), rid, required=True)
        out.append(
            VQARecord(
                qid=rid,
                question=question,
                answer=answer,
                answer_type=closed_answer_type(answer),
                image=resolve_image_path(root / "images" / split, f"{image}.jpg", rid),
                split=split,
                dataset="pathvqa",
            )
        )
    return out


def _load_pathvqa_parquet(files: list[Path], split: str, cache: Path) -> list[VQARecord]:
    if not _has_pyarrow:
        raise RecordError("reading PathVQA parquet files needs pyarrow (pip install pyarrow)", files[0])
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        try:
            rows = pq.read_table(f).to_pylist()
        except Exception as e:  # pyarrow raises its own exception types for corrupt files
            raise RecordError(f"cannot read parquet: {type(e).__name__}: {e}", f) from e
        for i, raw in enumerate(rows):
            rid = f"{f.stem}_{i:06d}"
            question = _field(raw, "question", rid)
            answer = answer_to_text(raw.get("answer"), rid, required=True)
            img = raw.get("image")
            data = img.get("bytes") if isinstance(img, Mapping) else img
            if not isinstance(data, (bytes, bytearray)) or not data:
                raise RecordError("missing image bytes", rid)
            digest = hashlib.sha1(data).hexdigest()[:16]
            ext = ".png" if bytes(data[:8]) == b"\x89PNG\r\n\x1a\n" else ".jpg"
            path = cache / f"{digest}{ext}"
            if not path.exists():
                with io.open(path, "wb") as fh:
                    fh.write(data)
            out.append(VQARecord(rid, question, answer, closed_answer_type(answer), str(path), split, "pathvqa"))
    return out
