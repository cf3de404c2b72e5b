# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""LlavaMedVQAOperator on the stock SDK loader / selector / series-to-volume output: the predictor's own answers."""

from __future__ import annotations

import json

import pytest
from deploy._phantoms import MODEL_DIR, QUESTIONS, phantom_series
from monai.deploy.core import Fragment
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator

from monai_llava_med.apps.deploy import SELECTION_RULES, LlavaMedVQAOperator, series_files
from monai_llava_med.errors import RecordError, SeriesSelectionError, VolumeError

pytestmark = pytest.mark.deploy
VARIABLE = {"latency_s", "id", "image", "source"}  # timing, and the operator's own labels


def _stock_pipeline(folder, rules=SELECTION_RULES):
    """What the stock operators hand to ours: the selection and the Image of its first series."""
    fragment = Fragment()
    studies = DICOMDataLoaderOperator(fragment, input_folder=folder, name="loader").load_data_to_studies(folder)
    selected = DICOMSeriesSelectorOperator(fragment, rules=rules, name="selector").filter(json.loads(rules), studies)
    image = DICOMSeriesToVolumeOperator(fragment, name="to_volume").convert_to_image(selected) if selected else None
    return fragment, selected, image


def test_vqa_operator_answers_equal_the_predictor_on_the_selected_series(tmp_path, predictor):
    # two series under one input folder: the loader reads both, the operator must answer about the selected one
    ct = phantom_series(tmp_path / "in" / "ct", seed=5, modality="CT")
    mr = phantom_series(tmp_path / "in" / "mr", seed=6, modality="MR")
    fragment, selected, image = _stock_pipeline(tmp_path / "in")
    chosen = selected[0].selected_series[0]
    folder = {ct[0].parent: ct, mr[0].parent: mr}
    files = series_files(chosen)
    (source,) = {f.parent for f in files}
    assert sorted(files) == sorted(folder[source])  # every instance of the selected series, nothing else
    operator = LlavaMedVQAOperator(fragment, model_path=MODEL_DIR, questions=QUESTIONS, predictor=predictor,
                                   name="vqa")
    answers = operator.answer(image, selected)
    expected = predictor.ask_all(source, QUESTIONS)  # what the predictor says about the selected series
    assert [a["question"] for a in answers] == QUESTIONS
    assert [a["id"] for a in answers] == ["question-1", "question-2", "question-3"]
    for got, want in zip(answers, expected):
        assert set(got) == set(want) | VARIABLE  # every key the predictor returns (trust fields included) passes
        assert {k: v for k, v in got.items() if k not in VARIABLE} == {
            k: v for k, v in want.items() if k not in VARIABLE}
        assert got["answer"]  # the demo model answers


def test_vqa_operator_loads_the_model_once_from_the_folder(ct_series):
    fragment, selected, image = _stock_pipeline(ct_series)
    operator = LlavaMedVQAOperator(fragment, model_path=MODEL_DIR, questions=QUESTIONS[:1], device="cpu", name="vqa")
    first = operator.answer(image, selected)
    loaded = operator.predictor
    assert operator.answer(image, selected)[0]["answer"] == first[0]["answer"] and operator.predictor is loaded


def test_vqa_operator_refuses_bad_input_with_typed_errors(tmp_path, ct_series, predictor):
    fragment, selected, image = _stock_pipeline(ct_series)
    with pytest.raises(RecordError):
        LlavaMedVQAOperator(fragment, model_path=MODEL_DIR, questions=[], predictor=predictor, name="none")
    with pytest.raises(RecordError):
        LlavaMedVQAOperator(fragment, model_path=MODEL_DIR, questions=["ok", "  "], predictor=predictor, name="blank")
    operator = LlavaMedVQAOperator(fragment, model_path=MODEL_DIR, questions=QUESTIONS[:1], predictor=predictor,
                                   name="vqa")
    with pytest.raises(SeriesSelectionError, match="no DICOM series matched"):
        operator.answer(None, [])
    other = phantom_series(tmp_path / "other", seed=8, modality="CT")
    for extra in other[5:]:  # a 5-slice series: not the volume of the selected series
        extra.unlink()
    _, _, small = _stock_pipeline(tmp_path / "other")
    with pytest.raises(VolumeError, match="planes"):
        operator.answer(small, selected)
