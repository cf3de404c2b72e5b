# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The questions of the MONAI Deploy app: its defaults and the ``--questions`` file. Does not import the SDK."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

from ...errors import RecordError

__all__ = ["DEFAULT_QUESTIONS", "load_questions"]

#: Asked when the app is given no questions (the demo model answers these about phantoms).
DEFAULT_QUESTIONS = ("Is there a lesion anywhere in the scan?", "How many lesions are there?", "Is this a CT image?")


def load_questions(path: str | PathLike) -> list[str]:
    """The questions of a file: a JSON list of strings, or plain text with one question per line.

    Args:
        path: the file.

    Raises:
        RecordError: the file cannot be read, or holds no question / a question that is not a non-empty string.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecordError(f"cannot read the questions file ({type(err).__name__})", path) from None
    if text.lstrip().startswith("["):
        try:
            questions = json.loads(text)
        except ValueError:
            raise RecordError("the questions file is not valid JSON", path) from None
    else:
        questions = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(questions, list) or not questions:
        raise RecordError("the questions file holds no question (a JSON list, or one question per line)", path)
    if not all(isinstance(q, str) and q.strip() for q in questions):
        raise RecordError("every question must be a non-empty string", path)
    return [q.strip() for q in questions]
