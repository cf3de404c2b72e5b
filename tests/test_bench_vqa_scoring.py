# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""benchmarks/vqa_scoring.py: Wilson intervals (published values), split disjointness, image-free baselines."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from vqa_scoring import check_disjoint, image_free_baselines, wilson  # noqa: E402

from monai_llava_med.data.phantom import case_rng, generate_phantom, make_questions  # noqa: E402


@pytest.mark.parametrize(
    "k, n, low, high",
    [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775), (81, 100, 0.7222, 0.8749), (10, 10, 0.7225, 1.0)],
)
def test_wilson_matches_published_intervals(k, n, low, high):
    p, lo, hi = wilson([1] * k + [0] * (n - k))
    assert p == pytest.approx(k / n)
    assert (lo, hi) == pytest.approx((low, high), abs=1e-4)


def _cases(split, n):
    return [generate_phantom(case_rng(0, split, i), size=32, ndim=2, case_id=f"{split}{i}") for i in range(n)]


def test_splits_are_disjoint_and_a_shared_image_is_refused():
    train, val = _cases("train", 6), _cases("val", 6)
    check_disjoint({"train": train, "val": val})
    with pytest.raises(RuntimeError, match="val"):
        check_disjoint({"train": train, "val": [*val, train[2]]})


def test_majority_and_chance_come_from_the_train_answers():
    train = _cases("train", 30)
    questions = [(k, qa) for k, case in enumerate(_cases("test", 10)) for qa in make_questions(case)]
    chance, majority = image_free_baselines(train, questions)
    for (_, qa), c, m in zip(questions, chance, majority):
        answers = [t.answer for case in train for t in make_questions(case) if t.question == qa.question]
        counts = sorted(((answers.count(a), a) for a in set(answers)), reverse=True)
        if len(counts) == 1 or counts[0][0] > counts[1][0]:  # a tie has no single majority answer to compare with
            assert m == int(counts[0][1] == qa.answer)
        assert c == (1 / len(set(answers)) if qa.answer in answers else 0.0)


def test_balanced_accuracy_weights_each_truth_equally():
    from vqa_scoring import balanced_accuracy

    # 9 "no" questions all right, 1 "yes" question wrong: plain accuracy 0.9, balanced 0.5
    assert balanced_accuracy([1] * 9 + [0], ["no"] * 9 + ["yes"]) == pytest.approx(0.5)
    assert balanced_accuracy([1, 0, 1, 1], ["yes", "yes", "no", "no"]) == pytest.approx(0.75)
    assert balanced_accuracy([1, 1], ["yes", "yes"]) != balanced_accuracy([1, 1], ["yes", "yes"])  # nan: one truth only


@pytest.mark.parametrize(
    "answers, ok",
    [
        (("no", "no", "no", "zero"), True),
        (("yes", "yes", "no", "one"), True),
        (("yes", "yes", "yes", "two"), True),
        (("yes", "no", "yes", "three"), True),
        (("yes", "yes", "yes", "one"), False),  # both sides but one lesion: the example
        (("yes", "no", "no", "one"), False),  # a lesion on no side
        (("no", "yes", "no", "zero"), False),  # a side lesion but no lesion
        (("yes", "yes", "no", "zero"), False),
        (("yes", None, "no", "one"), False),  # not a yes/no answer
        (("yes", "yes", "no", "several"), False),
    ],
)
def test_consistent_answers(answers, ok):
    from vqa_scoring import consistent_answers

    assert consistent_answers(*answers) is ok
