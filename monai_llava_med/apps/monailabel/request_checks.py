# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Checks on what a MONAI Label client sends: ids, the question, generation settings, upload names.

Stock MONAI Label 0.8.5 trusts these values (an ``image`` that exists on disk is read as a server path,
``params`` can replace ``image``/``model``, ``../`` in an upload id writes outside the studies folder). Every
check here raises :class:`RequestError` (a :class:`~monai_llava_med.errors.LlavaMedInputError`) carrying the
HTTP status to answer with; the server layer turns it into a 4xx response. Standard library only, so the
checks are importable (and tested) without ``monailabel``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import PurePath
from typing import Any

from ...errors import LlavaMedInputError
from ..file_signatures import matches_signature

__all__ = [
    "ID_PATTERN",
    "IMAGE_EXTENSIONS",
    "GENERATION_KEYS",
    "MAX_JSON_DEPTH",
    "RESERVED_PARAMS",
    "RequestError",
    "RequestLimits",
    "InferParams",
    "validate_id",
    "image_extension",
    "check_file_content",
    "parse_json_object",
    "is_utf8_text",
    "parse_infer_params",
]

#: Image, label, tag and model ids: no path separators, no leading dot, at most 128 characters.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: File types the datastore accepts, longest first (what the library's preprocessing reads).
IMAGE_EXTENSIONS = (
    ".nii.gz", ".nii", ".nrrd", ".mha", ".dcm", ".png", ".jpg", ".jpeg", ".tiff", ".tif", ".svs",
)
#: Generation settings a client may set in ``params``.
GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p")
#: ``params`` keys refused because they would replace what the URL names or steer the server.
RESERVED_PARAMS = frozenset(
    {"image", "model", "file", "label", "session", "session_id", "device", "save_label", "label_tag", "timeout",
     "description", "model_dir"}
)


class RequestError(LlavaMedInputError):
    """A request a client can fix: the message says what is wrong; ``status_code`` is the HTTP status.

    Args:
        message: the cause, in words a user can act on.
        path: the id or field concerned, if any.
        status_code: 400 (bad value), 404 (unknown id/model), 413 (too large), 415 (file type).
    """

    def __init__(self, message: str, path: str | PathLike | None = None, status_code: int = 400) -> None:
        super().__init__(message, path)
        self.status_code = status_code


def _positive_int(conf: Mapping[str, Any], key: str, default: int) -> int:
    value = conf.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError) as err:
        raise RequestError(f"conf {key} must be a positive integer, got {value!r}", key) from err
    if number <= 0:
        raise RequestError(f"conf {key} must be a positive integer, got {value!r}", key)
    return number


@dataclass(frozen=True)
class RequestLimits:
    """Upper bounds enforced on every request.

    Args:
        max_question_chars: longest question.
        max_new_tokens: largest ``max_new_tokens`` a client may ask for.
        default_max_new_tokens: answer length when the client sets none.
        min_temperature: smallest sampling temperature (smaller ones overflow the logits: use ``do_sample=false``
            for greedy answers).
        max_temperature: largest sampling temperature.
        max_params_chars: longest ``params`` JSON text.
        max_upload_bytes: largest request body (uploads included).
    """

    max_question_chars: int = 2000
    max_new_tokens: int = 512
    default_max_new_tokens: int = 128
    min_temperature: float = 0.01
    max_temperature: float = 2.0
    max_params_chars: int = 16384
    max_upload_bytes: int = 1 << 30

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> RequestLimits:
        """Read ``max_question_chars``, ``max_new_tokens`` and ``max_upload_mb`` from ``--conf`` values (strings).

        Raises:
            RequestError: for a value that is not a positive integer.
        """
        base = cls()
        max_new = _positive_int(conf, "max_new_tokens", base.max_new_tokens)
        return cls(
            max_question_chars=_positive_int(conf, "max_question_chars", base.max_question_chars),
            max_new_tokens=max_new,
            default_max_new_tokens=min(base.default_max_new_tokens, max_new),
            max_upload_bytes=_positive_int(conf, "max_upload_mb", base.max_upload_bytes >> 20) << 20,
        )


@dataclass
class InferParams:
    """A checked infer request: the question, generation settings, and the keys that were ignored."""

    question: str
    generation: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def validate_id(value: Any, what: str = "image") -> str:
    """Return ``value`` if it is a safe datastore id (see :data:`ID_PATTERN`), else raise.

    Args:
        value: the id sent by the client.
        what: what the id names (``"image"``, ``"tag"``, ``"model"``), for the message.

    Raises:
        RequestError: (400) for a non-string, empty, too long id or one with characters outside ``[A-Za-z0-9._-]``
            or starting with ``.``/``-``/``_``.
    """
    if not isinstance(value, str) or not value:
        raise RequestError(f"{what} is missing", what)
    if not ID_PATTERN.fullmatch(value):
        shown = value if len(value) <= 64 else value[:64] + "..."
        raise RequestError(
            f"invalid {what} {shown!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit",
            what,
        )
    return value


def image_extension(filename: str) -> str:
    """The accepted extension of an uploaded file name (lower case), e.g. ``"scan.NII.GZ"`` -> ``".nii.gz"``.

    Raises:
        RequestError: (415) when the name ends with none of :data:`IMAGE_EXTENSIONS`.
    """
    lower = (filename or "").lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(lower) > len(ext):
            return ext
    suffix = "".join(PurePath(lower).suffixes[-2:]) or "no extension"
    raise RequestError(
        f"unsupported file type ({suffix}): expected one of {', '.join(IMAGE_EXTENSIONS)}", "file", status_code=415
    )


def check_file_content(path: str | PathLike, ext: str) -> None:
    """Check that a file starts the way its extension says (PNG/JPEG/TIFF signature, DICOM preamble, NIfTI header
    size, gzip magic, NRRD magic, MetaImage header key), so a renamed text or executable file is refused before it reaches the datastore.

    Args:
        path: the uploaded file.
        ext: its accepted extension (from :func:`image_extension`).

    Raises:
        RequestError: (415) when the content does not match ``ext``; (400) for an empty file.
    """
    with open(path, "rb") as f:
        head = f.read(132)
    if not head:
        raise RequestError("the uploaded file is empty", "file")
    if not matches_signature(head, ext):
        raise RequestError(f"the uploaded file's content is not {ext} (its leading bytes do not match)", "file", 415)


def _shown(value: Any) -> str:
    """``repr(value)`` cut to 64 characters; a huge integer (whose ``repr`` may even be refused) by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 64 else text[:64] + "..."


def _number(
    params: Mapping[str, Any], key: str, low: float, high: float, integer: bool, open_low: bool | None = None
) -> int | float:
    """``params[key]`` checked to be an int (or a number) in ``[low, high]``; ``(low, high]`` for floats unless
    ``open_low`` is False.

    Integers are compared exactly (no float conversion), so a 400-digit integer is refused as out of range rather
    than overflowing.
    """
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise RequestError(f"params.{key} must be {kind}, got {_shown(value)}", key)
    open_low = not integer if open_low is None else open_low
    finite = isinstance(value, int) or math.isfinite(value)
    inside = finite and (low < value <= high if open_low else low <= value <= high)
    if not inside:
        bounds = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise RequestError(f"params.{key}={_shown(value)} is outside the allowed range {bounds}", key)
    return value


#: Deepest nesting of objects/arrays accepted in a JSON form field (deeper values break copying and responses).
MAX_JSON_DEPTH = 32


class _NotFinite(Exception):
    """Raised by the JSON number hooks for NaN, Infinity and floats beyond the double range."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _no_constant(text: str) -> float:
    raise _NotFinite(text)


def is_utf8_text(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (no lone surrogate such as ``"\\ud800"``, which JSON allows)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _structure_problem(value: Any, limit: int) -> str | None:
    """Why ``value`` cannot be used: objects/arrays nest more than ``limit`` levels, or a key or string holds a lone
    surrogate (it cannot be encoded, stored or sent back). ``None`` when fine. Iterative: no recursion limit."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not is_utf8_text(item):
                return "a string holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid Unicode text"
            continue
        if isinstance(item, Mapping):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth > limit:
            return f"it nests more than {limit} levels deep"
        stack.extend((child, depth + 1) for child in children)
    return None


def parse_json_object(
    text: str | Mapping[str, Any] | None, name: str = "params", max_depth: int = MAX_JSON_DEPTH
) -> dict[str, Any]:
    """Decode a form field that must hold a JSON object (``params``, ``info``); empty or missing means ``{}``.

    Args:
        text: the field's JSON text, or an already decoded mapping.
        name: the field's name, for the message.
        max_depth: the deepest nesting of objects/arrays accepted.

    Raises:
        RequestError: (400) for text that is not JSON, holds NaN/Infinity, a float beyond the double range or an
            integer with more digits than Python converts (4300), nests deeper than ``max_depth``, holds a lone
            surrogate (``"\\ud800"``) in a key or string, or is not an object.
    """
    if text is None or text == "":
        return {}
    if isinstance(text, str):
        try:
            text = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
        except json.JSONDecodeError as err:
            raise RequestError(f"{name} is not valid JSON ({err.msg} at position {err.pos})", name) from err
        except _NotFinite as err:
            raise RequestError(f"{name} is not usable JSON: NaN, Infinity and numbers beyond 1.8e308 are not "
                               f"allowed (got {str(err)[:32]})", name) from err
        except ValueError as err:  # an integer literal over sys.get_int_max_str_digits()
            raise RequestError(f"{name} is not usable JSON: it holds a number with too many digits", name) from err
        except RecursionError as err:
            raise RequestError(f"{name} is not usable JSON: it is nested too deeply", name) from err
    if not isinstance(text, Mapping):
        raise RequestError(f"{name} must be a JSON object, got {type(text).__name__}", name)
    problem = _structure_problem(text, max_depth)
    if problem:
        raise RequestError(f"{name} is not usable JSON: {problem}", name)
    return dict(text)


def _flag(params: Mapping[str, Any], key: str) -> bool:
    value = params[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise RequestError(f"params.{key} must be true or false, got {_shown(value)}", key)


def parse_infer_params(params: str | Mapping[str, Any] | None, limits: RequestLimits | None = None) -> InferParams:
    """Check the ``params`` of an infer request and return the question and generation settings.

    Accepted keys: ``question`` (required), ``max_new_tokens`` (1..limit), ``do_sample`` (bool), ``temperature``
    (min <= t <= max, default 0.01..2), ``top_p`` (0 < p <= 1). Keys in :data:`RESERVED_PARAMS` are refused; any
    other key is ignored and listed in :attr:`InferParams.ignored` (MONAI Label clients add their own).

    Args:
        params: the JSON text of the ``params`` form field, or the decoded object.
        limits: the bounds (default :class:`RequestLimits`).

    Raises:
        RequestError: (400) for bad JSON, a missing/empty question or a value out of range; (413) for a question
            or params text over the limits.
    """
    limits = limits or RequestLimits()
    if isinstance(params, str) and len(params) > limits.max_params_chars:
        raise RequestError(
            f"params has {len(params)} characters; the limit is {limits.max_params_chars}", "params", 413
        )
    params = parse_json_object(params, "params")
    reserved = sorted(k for k in params if k in RESERVED_PARAMS)
    if reserved:
        raise RequestError(
            f"params may not set {', '.join(reserved)}: the image and model come from the URL only", "params"
        )
    question = params.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RequestError('params.question is required: a non-empty string, e.g. {"question": "Is there a lesion?"}',
                           "question")
    question = question.strip()
    if len(question) > limits.max_question_chars:
        raise RequestError(
            f"question has {len(question)} characters; the limit is {limits.max_question_chars}", "question", 413
        )
    generation: dict[str, Any] = {"max_new_tokens": limits.default_max_new_tokens}
    if "max_new_tokens" in params:
        generation["max_new_tokens"] = int(_number(params, "max_new_tokens", 1, limits.max_new_tokens, True))
    if "do_sample" in params:
        generation["do_sample"] = _flag(params, "do_sample")
    if "temperature" in params:
        generation["temperature"] = float(
            _number(params, "temperature", limits.min_temperature, limits.max_temperature, False, open_low=False)
        )
    if "top_p" in params:
        generation["top_p"] = float(_number(params, "top_p", 0.0, 1.0, False))
    ignored = sorted(str(k) for k in params if k != "question" and k not in GENERATION_KEYS)
    return InferParams(question=question, generation=generation, ignored=ignored)
