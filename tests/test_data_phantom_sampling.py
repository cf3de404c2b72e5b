# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The training mix of phantom questions: the shortcut it removes and the shares it draws."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from monai_llava_med.data.phantom import (
    DEFAULT_FAMILY_WEIGHTS,
    case_rng,
    family_probabilities,
    generate_phantom,
    make_questions,
    presence_agreement,
    weighted_questions,
)


@pytest.fixture(scope="module")
def cases():
    return [generate_phantom(case_rng(3, "train", i), size=32, ndim=2, case_id=f"c{i}") for i in range(300)]


def _presence(case):
    return "yes" if case.lesions else "no"


def test_every_question_mix_lets_presence_answer_most_side_questions(cases):
    """The root cause of the side shortcut: with every question of every phantom, copying presence is right
    on most side questions (measured here on the label-map truth; the generator's lesion sides are the oracle)."""
    pairs = [(c, qa) for c in cases for qa in make_questions(c)]
    copy_rate = presence_agreement(pairs)
    # by hand from the generator's lesions: a side question agrees unless the phantom is one-sided and asked
    # about its empty side
    one_sided = sum(len({les.side for les in c.lesions}) == 1 for c in cases)
    assert copy_rate == pytest.approx(1 - one_sided / (2 * len(cases)))
    assert copy_rate > 0.7


def test_weighted_mix_makes_presence_useless_for_sides(cases):
    rng = np.random.default_rng(0)
    mix = weighted_questions(cases, 6000, rng)
    side = [(cases[k], qa) for k, qa in mix if qa.family == "side"]
    agree = np.mean([qa.answer == _presence(c) for c, qa in side])
    assert abs(agree - 0.5) < 0.04  # copying presence scores chance on sides
    shares = Counter(qa.family for _, qa in mix)
    probs = family_probabilities()
    for fam, p in probs.items():
        assert abs(shares[fam] / len(mix) - p) < 0.025, fam
    # the answers are the label map's, whatever the mix
    truth = {(id(c), q.question): q.answer for c in cases for q in make_questions(c)}
    assert all(truth[(id(cases[k]), qa.question)] == qa.answer for k, qa in mix)
    # reproducible from the seed
    again = weighted_questions(cases, 6000, np.random.default_rng(0))
    assert [(k, q.question) for k, q in again] == [(k, q.question) for k, q in mix]


def test_family_weights_are_checked():
    assert sum(DEFAULT_FAMILY_WEIGHTS.values()) == pytest.approx(1.0)
    assert family_probabilities({"side": 1, "count": 3}) == {"side": 0.25, "count": 0.75}
    for bad in ({"sides": 1.0}, {"side": -1.0}, {"side": 0.0}, {"side": float("nan")}):
        with pytest.raises(ValueError):
            family_probabilities(bad)
    with pytest.raises(ValueError):
        weighted_questions([], 5, np.random.default_rng(0))


def test_volume_mix_balances_side_and_half_against_presence():
    from monai_llava_med.data.phantom import DEFAULT_VOLUME_FAMILY_WEIGHTS, make_volume_questions
    from monai_llava_med.data.phantom import weighted_volume_questions

    vols = [generate_phantom(case_rng(5, "train", i), size=32, ndim=3, depth=32, lesion_z="peripheral",
                             case_id=f"v{i}") for i in range(60)]
    all_pairs = [(v, qa) for v in vols for qa in make_volume_questions(v)]
    fams = ("volume_side", "volume_half")
    kwargs = {"question_fn": make_volume_questions, "presence_family": "volume_presence"}
    assert presence_agreement(all_pairs, fams, **kwargs) > 0.6  # the shortcut exists in the every-question mix
    mix = weighted_volume_questions(vols, 4000, np.random.default_rng(1))
    pairs = [(vols[k], qa) for k, qa in mix]
    for fam in fams:
        assert abs(presence_agreement(pairs, (fam,), **kwargs) - 0.5) < 0.05, fam
    shares = Counter(qa.family for _, qa in mix)
    assert set(shares) == set(DEFAULT_VOLUME_FAMILY_WEIGHTS)
    # "the largest lesion" questions come only from volumes that have a clearly largest lesion
    assert all(any(q.question == qa.question for q in make_volume_questions(vols[k])) for k, qa in mix)
