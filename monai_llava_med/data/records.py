# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Record types shared by all data sets, and the one answer vocabulary every layer uses.

:class:`ConversationRecord` is one LLaVA-Med JSON entry (image files + turns); :class:`VQARecord` is one
question of a VQA benchmark (VQA-RAD, SLAKE, PathVQA, the synthetic phantoms), which becomes a
single-round conversation for training with :meth:`VQARecord.to_conversation`.

The answer vocabulary lives here, below both the data loaders and the metrics, so that they cannot
disagree: :data:`ANSWER_TYPES`, :data:`YES_NO`, the id keys of a question (:data:`ID_KEYS`, looked up with
:func:`question_id_of`), answers as text (:func:`answer_to_text`) and the OPEN / CLOSED rule
(:func:`closed_answer_type`: CLOSED when the answer, ignoring case, punctuation and articles, is the single
word "yes" or "no": "Yes!", "No,", "yes." are CLOSED; "Yes, there is", "No, there is not", "normal" are OPEN).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monai_llava_med.conversation.templates import Turn
from monai_llava_med.errors import RecordError

__all__ = [
    "ANSWER_TYPES",
    "ARTICLES",
    "ID_KEYS",
    "YES_NO",
    "ConversationRecord",
    "VQARecord",
    "answer_to_text",
    "closed_answer_type",
    "first_key",
    "question_id_of",
    "yes_no_answer",
]

#: the answer types of a VQA question.
ANSWER_TYPES = ("OPEN", "CLOSED")
#: the two answers of a yes/no question, as normalised tokens.
YES_NO = ("yes", "no")
#: words ignored when answers are compared.
ARTICLES = frozenset({"a", "an", "the"})
#: keys that hold a question's id, in order of preference (LLaVA-Med eval files use ``question_id``,
#: VQA-RAD / SLAKE ``qid``, datalists ``id``).
ID_KEYS = ("question_id", "qid", "id")

_WORD_RE = re.compile(r"[^\W_]+")


def first_key(record: Mapping, keys: Sequence[str]) -> str | None:
    """The first of ``keys`` present in ``record`` with a non-None value, or None.

    Args:
        record: a mapping.
        keys: candidate keys in order of preference.
    """
    for k in keys:
        if record.get(k) is not None:
            return k
    return None


def question_id_of(record: Mapping) -> Any:
    """The value of the first :data:`ID_KEYS` key of ``record`` that is not None, or None when it has none.

    Args:
        record: a question, prediction or datalist item.
    """
    key = first_key(record, ID_KEYS)
    return None if key is None else record[key]


def answer_to_text(value: Any, record_id: str | None = None, *, required: bool = False) -> str:
    """An answer (ground truth or prediction) as stripped text.

    Numbers are written out (VQA-RAD has numeric answers: ``2`` -> "2", ``2.0`` -> "2", ``2.5`` -> "2.5"),
    booleans become "yes" / "no", ``None`` is "".

    Args:
        value: a string, an int/float, a bool or None.
        record_id: named in errors.
        required: an empty answer (None or blank text) is an error instead of "".

    Raises:
        RecordError: a value that is not a scalar (a list, a dict...), a non-finite float, or an empty answer
            when ``required``.
    """
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError(f"answer {value!r} is not a finite number", record_id)
        text = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise RecordError(f"answer must be a string or a number, got {type(value).__name__}", record_id)
    if required and not text:
        raise RecordError(f"missing or invalid answer {value!r}", record_id)
    return text


def yes_no_answer(answer: Any) -> str | None:
    """"yes" / "no" when the answer is that single word (ignoring case, punctuation and articles), else None.

    Args:
        answer: an answer (see :func:`answer_to_text`).
    """
    text = unicodedata.normalize("NFKC", answer_to_text(answer)).lower()
    words = [w for w in _WORD_RE.findall(text) if w not in ARTICLES]
    return words[0] if len(words) == 1 and words[0] in YES_NO else None


def closed_answer_type(answer: Any) -> str:
    """"CLOSED" for a yes/no answer (:func:`yes_no_answer`), "OPEN" otherwise: the rule PathVQA and
    LLaVA-Med use when a data set gives no answer type.

    Args:
        answer: the ground-truth answer (string or number).
    """
    return "CLOSED" if yes_no_answer(answer) is not None else "OPEN"


@dataclass(frozen=True)
class ConversationRecord:
    """One conversation with its image files.

    Args:
        id: record id (named in every error about the record).
        images: absolute paths of the image files (empty for text-only records); a file may yield several
            images (a volume's views, a slide's tiles).
        turns: alternating user/assistant turns, starting with the user.
        dataset: name of the source data set.
        meta: extra fields (answer type, modality...), never patient identifiers.
    """

    id: str
    images: tuple[str, ...]
    turns: tuple[Turn, ...]
    dataset: str = "llava_med"
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VQARecord:
    """One VQA question, in one form for every benchmark.

    Args:
        qid: question id, unique within the data set.
        question: the question text (no ``<image>`` placeholder).
        answer: the ground-truth answer as a string (numbers are converted).
        answer_type: "OPEN" or "CLOSED".
        image: absolute path of the image file.
        split: "train", "val" or "test".
        dataset: "vqa_rad", "slake", "pathvqa", "phantom"...
        meta: extra fields (question type, organ, modality...).
    """

    qid: str
    question: str
    answer: str
    answer_type: str
    image: str
    split: str
    dataset: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_conversation(self) -> ConversationRecord:
        """The record as a single-round conversation ``<image>\\n{question}`` -> ``{answer}``."""
        turns = (Turn("user", f"<image>\n{self.question}"), Turn("assistant", self.answer))
        meta = {"answer_type": self.answer_type, "split": self.split, "question": self.question, **self.meta}
        return ConversationRecord(self.qid, (self.image,), turns, self.dataset, meta)
