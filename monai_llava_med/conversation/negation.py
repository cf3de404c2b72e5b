# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The negated form of a yes/no question, for paired probes (ProbMed-style consistency checks).

One rule for every yes/no question, with no parsing of its subject or predicate::

    Q                      ->  Is "no" the correct answer to this question: Q

e.g. ``Is there a lesion in this image?`` -> ``Is "no" the correct answer to this question: Is there a lesion in
this image?``. The probe is grammatical whatever ``Q`` looks like (``Q`` is quoted material after a colon, so its
shape never has to be rearranged), and it is a *positive* question whose proposition is the negation of ``Q``'s:
"yes" to the probe means "no" to ``Q``. So a question and its probe contradict each other exactly when both get
the same yes/no.

Inserting "not" into ``Q`` itself ("Is there not a lesion?", "Isn't there a lesion?", "Is there no lesion?") would
not do: a negative interrogative is answered by the proposition, not by its polarity ("Isn't there a lesion?" -
"No, there isn't"), so "no" to both forms would be consistent, not a contradiction; and where to put "not" needs
the end of the subject ("Is the left kidney enlarged?"), which a rule cannot find for every sentence.

A question is **refused** (no probe; :func:`negation_refusal` says why) when its yes/no answer, or the probe's,
would be ambiguous rather than mangled into something else:

* it is not a yes/no question: its first word is not an auxiliary verb (:data:`AUXILIARIES`; "What ...", "How
  many ...", "Describe ...", "In this image, is ...");
* it already holds a negation (:data:`NEGATION_WORDS` or a word ending in "n't": "Is there no lesion?", "Isn't it
  enlarged?"): a yes/no to a negative question is ambiguous, see above (a probe is refused for this reason too,
  so a probe is never probed again);
* it is an alternative question ("Is it CT or MR?"): "yes"/"no" does not answer it;
* it holds more than one sentence or question ("Is there a lesion? Where?"), or a line break.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .templates import Turn, normalize_turns

__all__ = [
    "AUXILIARIES",
    "NEGATION_WORDS",
    "PROBE_PREFIX",
    "negate_question",
    "negation_refusal",
    "paired_conversation",
    "probed_question",
]

#: the words a yes/no question starts with (matched case-insensitively, uncontracted).
AUXILIARIES = (
    "am", "is", "are", "was", "were", "do", "does", "did", "have", "has", "had", "can", "could", "will", "would",
    "shall", "should", "may", "might", "must",
)
#: words that make a question negative already (and any word ending in "n't").
NEGATION_WORDS = ("not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "cannot")
#: what the probe puts before the question.
PROBE_PREFIX = 'Is "no" the correct answer to this question: '

_WORD = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)*")
_INNER_BREAK = re.compile(r"[?!;]|\.\s|\n|\r")


def _body(question: str) -> str:
    """The question without surrounding space and without its final question marks."""
    return question.strip().rstrip("?").rstrip()


def negation_refusal(question: str) -> str | None:
    """Why ``question`` gets no negated form, or ``None`` when it gets one.

    Args:
        question: one user message.

    Returns:
        ``None``, or one of "not a yes/no question", "already negative", "an alternative question",
        "more than one sentence".
    """
    body = _body(question)
    words = [w.lower().replace("\u2019", "'") for w in _WORD.findall(body)]
    if words and body[:1].isalpha() and words[0].endswith("n't"):  # "Isn't ...", "Doesn't ...", "Won't ..."
        return "already negative"
    if not words or words[0] not in AUXILIARIES or not body[:1].isalpha():
        return "not a yes/no question"
    if any(w in NEGATION_WORDS or w.endswith("n't") for w in words):
        return "already negative"
    if "or" in words:
        return "an alternative question"
    if _INNER_BREAK.search(body):
        return "more than one sentence"
    return None


def negate_question(question: str) -> str | None:
    """The probe of a yes/no question: ``PROBE_PREFIX + question`` (one final ``?``), or ``None`` when refused.

    Args:
        question: one user message, e.g. "Is there a lesion in this image?".

    Returns:
        e.g. 'Is "no" the correct answer to this question: Is there a lesion in this image?', or ``None``
        (see :func:`negation_refusal`).
    """
    if negation_refusal(question) is not None:
        return None
    return f"{PROBE_PREFIX}{_body(question)}?"


def probed_question(probe: str) -> str | None:
    """The question a probe was made from (the inverse of :func:`negate_question`), or ``None`` for other text."""
    return probe[len(PROBE_PREFIX):] if probe.startswith(PROBE_PREFIX) else None


def paired_conversation(conversation: str | Sequence[Any]) -> tuple[list[Turn], str] | None:
    """A conversation whose last user turn is negated, and that negated text; ``None`` when it is refused.

    Earlier turns (and their answers) are kept, so a follow-up question is probed in its context.

    Args:
        conversation: a question string or turns (any form :func:`~.templates.normalize_turns` accepts), ending
            with a user turn (a trailing assistant turn is dropped, as :func:`~.tokenization.build_prompt` does).

    Raises:
        TemplateError: the turns are malformed.
    """
    turns = normalize_turns(conversation.strip() if isinstance(conversation, str) else conversation)
    if turns[-1].role == "assistant":
        turns = turns[:-1]
    if not turns:
        return None
    negated = negate_question(turns[-1].text)
    if negated is None:
        return None
    return [*turns[:-1], Turn("user", negated)], negated
