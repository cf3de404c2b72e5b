# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Answer normalisation for VQA scoring (the LLaVA-Med protocol, made deterministic and token based).

``normalize_answer`` maps a free-text answer (or a numeric ground truth) to a canonical string of
whitespace-separated tokens; every score compares these tokens, never substrings. The steps, in order:

1. numbers given as ``int`` / ``float`` / ``bool`` become text (``2`` -> "2", ``2.0`` -> "2", ``3.5`` ->
   "3.5", ``True`` -> "yes");
2. Unicode NFKC, lower case, curly quotes to ``'``;
3. contractions expanded ("isn't" -> "is not", "can't" -> "can not", "there's" -> "there is", also the
   apostrophe-less forms "isnt", "dont"...); any other ``'s`` is a possessive and dropped;
4. thousands separators removed ("1,000" -> "1000"), a unit glued to a number split off ("3.5cm" ->
   "3.5 cm"), a leading decimal point completed (".5" -> "0.5");
5. punctuation replaced by spaces, except a decimal point between two digits ("3.5" stays);
6. number words become digits ("two" -> "2", "twenty five" / "twenty-five" -> "25", "one hundred and
   five" -> "105"); numeric tokens are canonical ("2.0" -> "2", "03" -> "3", "3.50" -> "3.5");
7. the articles a / an / the are dropped and whitespace collapsed.

Ordinals ("first") and words like "none" or "single" are left as words: "no" is never read as 0.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from monai_llava_med.data.records import ARTICLES, YES_NO, answer_to_text

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "YES_NO",
    "answer_to_text",
    "answer_tokens",
    "closed_answer",
    "is_numeric_answer",
    "normalize_answer",
]


_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000}
NUMBER_WORDS: dict[str, int] = {**_UNITS, **_TENS, **_SCALES}

# Irregular contractions first; the generic rules below handle the rest.
CONTRACTIONS: dict[str, str] = {
    "won't": "will not",
    "can't": "can not",
    "cannot": "can not",
    "shan't": "shall not",
    "ain't": "is not",
    "let's": "let us",
    # apostrophe-less forms that are not ordinary words
    "isnt": "is not",
    "arent": "are not",
    "wasnt": "was not",
    "werent": "were not",
    "doesnt": "does not",
    "dont": "do not",
    "didnt": "did not",
    "cant": "can not",
    "couldnt": "could not",
    "shouldnt": "should not",
    "wouldnt": "would not",
    "hasnt": "has not",
    "havent": "have not",
    "hadnt": "had not",
    "wont": "will not",
    "thats": "that is",
    "theres": "there is",
    "whats": "what is",
}
_CONTRACTION_RE = re.compile(r"(?<![\w'])(" + "|".join(re.escape(k) for k in CONTRACTIONS) + r")(?![\w'])")
_NOT_RE = re.compile(r"(\w)n't\b")
_SUFFIXES = ((re.compile(r"(\w)'re\b"), r"\1 are"), (re.compile(r"(\w)'ve\b"), r"\1 have"),
             (re.compile(r"(\w)'ll\b"), r"\1 will"), (re.compile(r"(\w)'d\b"), r"\1 would"),
             (re.compile(r"\bi'm\b"), "i am"))  # fmt: skip
_IS_RE = re.compile(r"\b(it|that|there|here|what|where|who|how|he|she|this)'s\b")
_POSSESSIVE_RE = re.compile(r"(\w)'s\b")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}\b)")
_UNIT_RE = re.compile(r"(\d)(mm|cm|ml|cc|mg|kg|hu|mmhg)\b")
_LEADING_POINT_RE = re.compile(r"(?<![\w.])\.(?=\d)")
_NON_DECIMAL_POINT_RE = re.compile(r"(?<!\d)\.|\.(?!\d)")
_PUNCT_RE = re.compile(r"[^\w\s.]|_")
_NUMBER_RE = re.compile(r"^\d+(?:\.\d+)?$")


def _canonical_number(token: str) -> str:
    whole, _, frac = token.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def _merge_number_words(tokens: list[str]) -> list[str]:
    """Replace runs of number words by their value ("twenty five" -> "25"); other tokens pass through."""
    out: list[str] = []
    total = part = 0
    last: str | None = None  # kind of the previous number word: unit, teen, tens, hundred, thousand

    def flush() -> None:
        nonlocal total, part, last
        if last is not None:
            out.append(str(total + part))
        total = part = 0
        last = None

    for tok in tokens:
        if tok == "and" and last in ("hundred", "thousand"):
            continue  # "one hundred and five"
        if tok in _UNITS:
            val = _UNITS[tok]
            kind = "unit" if 0 < val < 10 else "teen" if val >= 10 else "zero"
            if kind == "zero" or last not in (None, "tens", "hundred", "thousand") or (
                last == "tens" and kind != "unit"
            ):
                flush()
            if kind == "zero":
                out.append("0")
                continue
            part += val
            last = kind
        elif tok in _TENS:
            if last not in (None, "hundred", "thousand"):
                flush()
            part += _TENS[tok]
            last = "tens"
        elif tok in _SCALES and last in ("unit", "teen", "tens", "hundred") and not (
            tok == "hundred" and last == "hundred"
        ):
            if tok == "hundred":
                part *= 100
            else:
                total, part = (total + part) * 1000, 0
            last = tok
        else:
            flush()
            out.append(tok)
    flush()
    return out


def answer_tokens(value: Any) -> list[str]:
    """The normalised tokens of an answer (see the module docstring for the steps).

    Args:
        value: a string, an int/float or a bool (see :func:`answer_to_text`).
    """
    text = unicodedata.normalize("NFKC", answer_to_text(value)).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = _CONTRACTION_RE.sub(lambda m: CONTRACTIONS[m.group(1)], text)
    text = _NOT_RE.sub(r"\1 not", text)
    for pattern, repl in _SUFFIXES:
        text = pattern.sub(repl, text)
    text = _IS_RE.sub(r"\1 is", text)
    text = _POSSESSIVE_RE.sub(r"\1", text)
    text = text.replace("'", "")
    text = _THOUSANDS_RE.sub("", text)
    text = _UNIT_RE.sub(r"\1 \2", text)
    text = _LEADING_POINT_RE.sub("0.", text)
    text = _NON_DECIMAL_POINT_RE.sub(" ", text)
    text = _PUNCT_RE.sub(" ", text)
    tokens = _merge_number_words(text.split())
    return [_canonical_number(t) if _NUMBER_RE.match(t) else t for t in tokens if t not in ARTICLES]


def normalize_answer(value: Any) -> str:
    """Canonical form of an answer: lower case, no punctuation (decimal points kept), digits for number
    words, no articles, contractions expanded, single spaces.

    Examples: "The left lung." -> "left lung"; "Two" -> "2"; ``2.0`` -> "2"; "3.5cm" -> "3.5 cm";
    "Isn't it?" -> "is not it".

    Args:
        value: a string, an int/float or a bool (see :func:`answer_to_text`).
    """
    return " ".join(answer_tokens(value))


def is_numeric_answer(value: Any) -> bool:
    """Whether an answer states a number first: its first normalised token is a number ("3", "Three lesions.",
    "twenty one", "2.5 cm"; not "There are two.", not "none").

    Args:
        value: the answer.
    """
    tokens = answer_tokens(value)
    return bool(tokens) and _NUMBER_RE.match(tokens[0]) is not None


def closed_answer(prediction: Any) -> str | None:
    """The yes/no decision of a prediction, read from its normalised tokens.

    Whole tokens are compared, so "normal", "nodule", "nothing", "know" or "not" are not "no". When a
    prediction contains both "yes" and "no", the first one wins ("No, ... yes" -> "no"): models state the
    decision first and explain after. ``None`` means the prediction gives no yes/no at all (it is scored
    as wrong, never dropped).

    Args:
        prediction: the model's answer.
    """
    for tok in answer_tokens(prediction):
        if tok in YES_NO:
            return tok
    return None
