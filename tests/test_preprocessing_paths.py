# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One preprocessing path: training and inference turn the same file and question into the same tensors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from monai_llava_med.constants import CLIP_MEAN, CLIP_STD, IGNORE_INDEX
from monai_llava_med.data import LlavaMedDataset, load_llava_med_json
from monai_llava_med.engines import LlavaMedPredictor, PrepareVqaItem
from monai_llava_med.engines.train_config import TrainingConfig
from monai_llava_med.engines.training import _dataset_from_json
from monai_llava_med.errors import RecordError, TemplateError
from monai_llava_med.networks import LlavaMedConfig, build_llava_med
from monai_llava_med.transforms import MedicalImageToPixels, pixels_from_config

QUESTION = "Is there a lesion?"


def _two_colour_png(path, width: int = 64, height: int = 16):
    """A wide image: left half red, right half blue (so padding and squashing look different)."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    Image.fromarray(arr).save(path)
    return path


def _training_item(tmp_path, image_path, model, tokenizer, answer: str = "No."):
    """Item 0 of the data set ``build_trainer(data_json=...)`` trains on (``image_path`` inside ``tmp_path``)."""
    data = [{"id": "case", "image": image_path.name,
             "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": answer}]}]
    (tmp_path / "train.json").write_text(json.dumps(data))
    config = TrainingConfig(template=model.config.template, max_length=model.config.model_max_length)
    dataset = _dataset_from_json(tmp_path / "train.json", tmp_path, tokenizer, model, config, None)
    return dataset[0]


@pytest.mark.parametrize("kind", ["dicom", "png"])
def test_training_and_inference_prepare_the_same_tensors(kind, tmp_path, tiny_model, tiny_tokenizer):
    if kind == "dicom":
        image = shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    else:
        image = _two_colour_png(tmp_path / "wide.png")
    train = _training_item(tmp_path, image, tiny_model, tiny_tokenizer)
    infer = PrepareVqaItem(tiny_tokenizer, tiny_model, raise_errors=True)({"image": str(image), "question": QUESTION})
    assert torch.equal(train["pixel_values"], infer["pixel_values"])
    first_answer = int((train["labels"] != IGNORE_INDEX).nonzero()[0])
    assert torch.equal(train["input_ids"][:first_answer], infer["input_ids"])
    # the data set's generate mode builds that same prompt
    records = load_llava_med_json(tmp_path / "train.json", tmp_path)
    generate = LlavaMedDataset(records, tiny_tokenizer, template=tiny_model.config.template, mode="generate",
                               num_image_tokens=tiny_model.config.num_image_tokens,
                               image_token_id=tiny_model.config.image_token_id,
                               image_loader=pixels_from_config(tiny_model.config))[0]
    assert torch.equal(generate["input_ids"], infer["input_ids"])
    assert torch.equal(generate["pixel_values"], infer["pixel_values"])


def test_resize_config_squashes_instead_of_padding(tmp_path, tiny_tokenizer):
    png = _two_colour_png(tmp_path / "wide.png")
    image_id = tiny_tokenizer.convert_tokens_to_ids("<image>")
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    red = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    pad_colour = (torch.tensor([int(m * 255) / 255 for m in CLIP_MEAN]) - mean) / std
    padded = pixels_from_config(LlavaMedConfig.tiny(image_token_id=image_id))(png)["pixel_values"][0]
    squashed_config = LlavaMedConfig.tiny(image_token_id=image_id, image_aspect_ratio="resize")
    squashed = pixels_from_config(squashed_config)(png)["pixel_values"][0]
    side = padded.shape[-1]
    # pad: a 64x16 image on a 64x64 canvas fills rows 24..40 of 64, so the top rows are the mean colour
    assert torch.allclose(padded[:, 0, 0], pad_colour, atol=1e-4)
    assert torch.allclose(padded[:, side // 2, 0], red, atol=1e-4)
    # resize: the image fills the whole square, the top-left corner is red
    assert torch.allclose(squashed[:, 0, 0], red, atol=1e-4)
    assert torch.allclose(squashed[:, side - 1, 0], red, atol=1e-4)
    # training reads the same flag: its pixels are the squashed ones
    torch.manual_seed(0)
    model = build_llava_med(squashed_config).eval()
    assert torch.equal(_training_item(tmp_path, png, model, tiny_tokenizer)["pixel_values"][0], squashed)
    with pytest.raises(TypeError, match="come from the model config"):
        pixels_from_config(squashed_config, pad=True)


def test_in_memory_ct_phantom_matches_its_dicom_file(tmp_path):
    from monai_llava_med.data.phantom import case_rng, generate_phantom, phantom_to_pixels, write_dicom

    case = generate_phantom(case_rng(3, "train", 0), size=48, ndim=2, modality="CT", case_id="p0")
    files = write_dicom(case, tmp_path / "p0")
    for side in (48, 32):
        from_file = MedicalImageToPixels(image_size=side, max_views=1)(str(files[0]))["pixel_values"]
        levels = (phantom_to_pixels(case, side) - from_file).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
        # the file stores whole HU (the phantom holds floats): at most one 8-bit display level apart
        assert phantom_to_pixels(case, side).shape == from_file.shape and float(levels.max()) <= 1.01


def test_multi_turn_questions_with_and_without_an_image(tiny_model, tiny_tokenizer):
    predictor = LlavaMedPredictor(tiny_model, tiny_tokenizer, max_new_tokens=4)
    turns = [("user", "What modality is this image?"), ("assistant", "CT."), ("user", "Is there a lesion?")]
    text_only = predictor.prepare({"image": None, "question": turns})
    assert text_only["pixel_values"] is None
    assert tiny_tokenizer.decode(text_only["input_ids"]) == (
        "<s>[INST] What modality is this image? [/INST] CT. </s>[INST] Is there a lesion? [/INST]"
    )
    assert isinstance(predictor.ask(None, turns)["answer"], str)
    chat = [{"role": "user", "content": "What modality is this image?"}, {"role": "assistant", "content": "CT."},
            {"role": "user", "content": "Is there a lesion?"}]
    with_image = predictor.prepare({"image": get_testdata_file("CT_small.dcm"), "question": chat})
    ids, image_id = with_image["input_ids"], tiny_model.config.image_token_id
    positions = (ids == image_id).nonzero().flatten()
    assert len(positions) == tiny_model.config.num_image_tokens
    # the image block opens the first turn: right after "<s>[INST] "
    assert tiny_tokenizer.decode(ids[: int(positions[0])]) == "<s>[INST] "
    assert tiny_tokenizer.decode(ids[ids != image_id]) == tiny_tokenizer.decode(text_only["input_ids"]).replace(
        "[INST] What", "[INST] \nWhat", 1)
    assert isinstance(predictor.ask(get_testdata_file("CT_small.dcm"), chat)["answer"], str)
    with pytest.raises(RecordError, match="must be a non-empty string or a non-empty list of turns"):
        predictor.ask(None, [])
    with pytest.raises(TemplateError, match="expected a user turn"):
        predictor.ask(None, [("assistant", "CT.")])
    with pytest.raises(RecordError, match="the question is empty"):
        predictor.ask(None, [("user", "Q?"), ("assistant", "A."), ("user", "  ")])
