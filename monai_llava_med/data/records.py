# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Record types shared by all data sets.

:class:`ConversationRecord` is one LLaVA-Med JSON entry (image files + turns); :class:`VQARecord` is one
question of a VQA benchmark (VQA-RAD, SLAKE, PathVQA, the synthetic phantoms), which becomes a
single-round conversation for training with :meth:`VQARecord.to_conversation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from monai_llava_med.conversation.templates import Turn

__all__ = ["ANSWER_TYPES", "ConversationRecord", "VQARecord", "closed_answer_type"]

ANSWER_TYPES = ("OPEN", "CLOSED")


def closed_answer_type(answer: str) -> str:
    """"CLOSED" for yes/no answers, "OPEN" otherwise (the rule PathVQA and LLaVA-Med use).

    Args:
        answer: the ground-truth answer.
    """
    return "CLOSED" if answer.strip().lower().rstrip(".") in ("yes", "no") else "OPEN"


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
