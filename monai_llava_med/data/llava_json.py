# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""LLaVA-Med JSON (alignment and instruct) and VQA-eval JSON files.

Instruct/alignment files are a list of ``{"id", "image", "conversations": [{"from", "value"}, ...]}``;
``image`` may also be a list of files or absent (text-only). Every record is validated on load; a bad
record raises :class:`RecordError` naming its id and the cause.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_llava_med.conversation.templates import normalize_turns
from monai_llava_med.errors import RecordError, TemplateError

from .records import ConversationRecord

__all__ = ["read_json_records", "resolve_image_path", "parse_llava_record", "load_llava_med_json"]


def read_json_records(path: str | os.PathLike, list_keys: Sequence[str] = ()) -> list[Any]:
    """Read a JSON list (``.json``) or JSON lines (``.jsonl``) file.

    Args:
        path: the file.
        list_keys: also accept a JSON object holding the list under the first of these keys present.

    Raises:
        RecordError: missing file, invalid JSON (with the line), or not a list.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"cannot read the file: {e}", p) from e
    if p.suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RecordError(f"line {n} is not valid JSON: {e.msg}", p) from e
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}", p) from e
    if isinstance(data, dict) and list_keys:
        key = next((k for k in list_keys if isinstance(data.get(k), list)), None)
        if key is None:
            raise RecordError(f"expected a JSON list, or an object with a list under one of {tuple(list_keys)}", p)
        data = data[key]
    if not isinstance(data, list):
        raise RecordError(f"expected a JSON list of records, got {type(data).__name__}", p)
    return data


def resolve_image_path(image_root: str | os.PathLike, name: Any, record_id: str) -> str:
    """Join an image name to the image root, refusing names that leave the root.

    Args:
        image_root: folder the names are relative to.
        name: the image name from the record.
        record_id: named in errors.

    Raises:
        RecordError: the name is not a non-empty string, is absolute, or escapes the root.
    """
    if not isinstance(name, str) or not name.strip():
        raise RecordError(f"image must be a non-empty string, got {name!r}", record_id)
    if os.path.isabs(name):
        raise RecordError(f"image {name!r} must be relative to the image root", record_id)
    root = Path(image_root).resolve()
    full = (root / name).resolve()
    if root != full and root not in full.parents:
        raise RecordError(f"image {name!r} points outside the image root", record_id)
    return str(full)


def parse_llava_record(
    raw: Any,
    image_root: str | os.PathLike,
    *,
    index: int = 0,
    dataset: str = "llava_med",
    check_images: bool = False,
    require_answer: bool = True,
) -> ConversationRecord:
    """Validate one LLaVA-Med JSON entry and turn it into a :class:`ConversationRecord`.

    Args:
        raw: the decoded JSON object.
        image_root: folder the ``image`` names are relative to.
        index: position in the file, used as the name when the record has no id.
        dataset: recorded on the result.
        check_images: also check that the image files exist.
        require_answer: the conversation must end with an assistant turn.

    Raises:
        RecordError: naming the record id and what is wrong.
    """
    if not isinstance(raw, Mapping):
        raise RecordError(f"expected an object, got {type(raw).__name__}", f"record #{index}")
    rid = raw.get("id", raw.get("question_id"))
    if rid is None or (isinstance(rid, str) and not rid.strip()) or not isinstance(rid, (str, int)):
        raise RecordError("missing or invalid 'id'", f"record #{index}")
    rid = str(rid)
    conv = raw.get("conversations")
    if not isinstance(conv, Sequence) or isinstance(conv, str) or not conv:
        raise RecordError("'conversations' must be a non-empty list of turns", rid)
    try:
        turns = normalize_turns(conv)
    except TemplateError as e:
        raise RecordError(e.reason, rid) from e
    if require_answer and turns[-1].role != "assistant":
        raise RecordError("the last turn must be an answer (from 'gpt')", rid)
    image = raw.get("image")
    if image is None:
        names: list[Any] = []
    elif isinstance(image, list):
        names = image
    else:
        names = [image]
    images = tuple(resolve_image_path(image_root, n, rid) for n in names)
    n_ph = sum(t.text.count("<image>") for t in turns)
    if not images and n_ph:
        raise RecordError(f"{n_ph} <image> placeholder(s) but no 'image' field", rid)
    if any("<image>" in t.text for t in turns if t.role == "assistant"):
        raise RecordError("an answer (from 'gpt') contains an <image> placeholder", rid)
    if check_images:
        for p in images:
            if not os.path.exists(p):
                raise RecordError(f"image file not found: {p}", rid)
    meta = {k: raw[k] for k in ("answer_type", "domain", "type") if k in raw}
    return ConversationRecord(rid, images, tuple(turns), dataset, meta)


def load_llava_med_json(
    json_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    dataset: str = "llava_med",
    check_images: bool = False,
) -> list[ConversationRecord]:
    """Load and validate a LLaVA-Med alignment or instruct file.

    Args:
        json_path: ``llava_med_alignment_500k.json``, ``llava_med_instruct_60k_inline_mention.json`` or any
            file in that format (``.json`` list or ``.jsonl``).
        image_root: folder of the images (default: the JSON file's folder).
        dataset: name recorded on each record.
        check_images: also check that every image file exists (slower on 600K records).

    Raises:
        RecordError: unreadable file or a malformed record (named by id).
    """
    root = Path(json_path).parent if image_root is None else Path(image_root)
    raws = read_json_records(json_path)
    return [
        parse_llava_record(r, root, index=i, dataset=dataset, check_images=check_images) for i, r in enumerate(raws)
    ]
