# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Answer normalisation, yes/no reading and per-question scores on tricky answers."""

from __future__ import annotations

import pytest

from monai_llava_med.errors import RecordError
from monai_llava_med.metrics import (
    answer_to_text,
    closed_answer,
    infer_answer_type,
    is_numeric_answer,
    normalize_answer,
    score_question,
    token_scores,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The left lung.", "left lung"),
        ("left lung", "left lung"),
        ("Two", "2"),
        (2, "2"),
        (2.0, "2"),
        (3.5, "3.5"),
        ("3.5 cm", "3.5 cm"),
        ("3.5cm", "3.5 cm"),
        ("3.50 cm.", "3.5 cm"),
        (".5", "0.5"),
        ("twenty-five", "25"),
        ("twenty five", "25"),
        ("one hundred and five", "105"),
        ("zero", "0"),
        ("one two", "1 2"),
        ("1,000 mL", "1000 ml"),
        ("Isn't it?", "is not it"),
        ("It isnt", "it is not"),
        ("can't / cannot / won't", "can not can not will not"),
        ("There\u2019s a mass", "there is mass"),
        ("the patient's lung", "patient lung"),
        ("  An   X-ray!  ", "x ray"),
        ("T2-weighted MRI", "t2 weighted mri"),
        ("e.g. 3.5.", "e g 3.5"),
        (True, "yes"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_no_is_never_zero_and_words_stay_words():
    assert normalize_answer("no") == "no"
    assert normalize_answer("none") == "none"
    assert normalize_answer("first") == "first"
    assert normalize_answer("someone") == "someone"


@pytest.mark.parametrize(
    "pred, expected",
    [
        ("No.", "no"),
        ("no, there is not", "no"),
        ("Yes, there is", "yes"),
        ("yes it is", "yes"),
        ("YES!", "yes"),
        ("Based on the image, no.", "no"),
        ("normal", None),
        ("The nodule is small", None),
        ("nothing abnormal", None),
        ("I don't know", None),
        ("not present", None),
        ("Nope", None),
        ("No, but yes on the left", "no"),  # both: the first one wins
        ("Yes and no", "yes"),
        ("", None),
    ],
)
def test_closed_answer_reads_tokens_not_substrings(pred, expected):
    assert closed_answer(pred) == expected


@pytest.mark.parametrize("answer, numeric", [
    ("3", True), ("Three lesions.", True), ("twenty one", True), ("2.5 cm", True), ("zero", True),
    ("There are two.", False), ("none", False), ("no", False), ("", False), ("CT", False),
])
def test_is_numeric_answer_reads_the_first_token(answer, numeric):
    assert is_numeric_answer(answer) is numeric


def test_answer_to_text_rejects_non_scalars():
    assert answer_to_text(None) == ""
    assert answer_to_text("  Yes \n") == "Yes"
    assert (answer_to_text(2), answer_to_text(2.0), answer_to_text(2.5), answer_to_text(True)) == ("2", "2", "2.5", "yes")
    with pytest.raises(RecordError, match="list"):
        answer_to_text(["yes"])
    with pytest.raises(RecordError, match="q7: .*finite"):
        answer_to_text(float("nan"), "q7")
    with pytest.raises(RecordError, match="q7: missing or invalid answer"):
        answer_to_text("  ", "q7", required=True)


def test_infer_answer_type():
    assert infer_answer_type("Yes.") == "CLOSED"
    assert infer_answer_type("no") == "CLOSED"
    assert infer_answer_type("normal") == "OPEN"
    assert infer_answer_type("no effusion") == "OPEN"
    assert infer_answer_type(2) == "OPEN"


def test_token_scores_are_multiset_counts():
    # gt {left:1, lung:1}, pred {lesion, is, in, left, lung}: overlap 2
    r, p, f = token_scores(["lesion", "is", "in", "left", "lung"], ["left", "lung"])
    assert (r, p) == (1.0, 0.4)
    assert f == pytest.approx(2 * 0.4 / 1.4)
    # repeated tokens count once per occurrence in the ground truth
    r, p, f = token_scores(["2", "2"], ["2", "mass"])
    assert (r, p, f) == (0.5, 0.5, 0.5)
    assert token_scores([], ["ct"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "gt, pred, correct",
    [
        ("no", "The lungs are normal.", False),  # the reference's substring test says True
        ("no", "No nodule is seen.", True),
        ("yes", "Yes, there is", True),
        ("yes", "nodule", False),
        ("left", "The left lung", True),  # non yes/no closed: the gt tokens lead the prediction
        ("left", "Left.", True),
        ("left", "right, not left", False),
        ("left lung", "left", False),
        ("liver", "spleen", False),
        ("Yes, there is", "Yes.", True),  # a sentence-form yes/no ground truth is read by its yes/no token
        ("No, there is not", "no", True),
        ("No, there is not", "Yes, there is", False),
        ("Normal", "no", False),  # "normal" is no yes/no: compared as the choice it is
    ],
)
def test_closed_scoring(gt, pred, correct):
    assert score_question("q", "d", "CLOSED", gt, pred).correct is correct


def test_open_scoring_numbers_and_articles():
    s = score_question("q", "d", "OPEN", "2", "two")
    assert (s.recall, s.f1, s.exact_match, s.correct) == (1.0, 1.0, True, True)
    s = score_question("q", "d", "OPEN", "left lung", "The left lung")
    assert s.exact_match and s.pred_normalized == "left lung"
    s = score_question("q", "d", "OPEN", "3.5 cm", "about 3.5cm")
    assert s.recall == 1.0 and s.precision == pytest.approx(2 / 3) and not s.exact_match
    s = score_question("q", "d", "OPEN", "ct", "")
    assert (s.recall, s.precision, s.f1, s.exact_match) == (0.0, 0.0, 0.0, False)


def test_score_question_rejects_bad_input():
    with pytest.raises(ValueError, match="OPEN or CLOSED"):
        score_question("q", "d", "YESNO", "yes", "yes")
    with pytest.raises(ValueError, match="empty after normalisation"):
        score_question("q", "d", "OPEN", "the", "the")
