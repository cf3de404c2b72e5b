# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The chat's session and console in process, checked against the predictor's own answers."""

from __future__ import annotations

import io

import pytest

from monai_llava_med.errors import ImageReadError, LlavaMedInputError

from .conftest import MODEL_DIR, PHI, SAMPLE, planted_dicom

CT = SAMPLE / "ct_slice.dcm"


@pytest.fixture(scope="module")
def predictor():
    import torch

    from monai_llava_med.engines import LlavaMedPredictor

    torch.set_num_threads(1)
    return LlavaMedPredictor.from_pretrained(MODEL_DIR, device="cpu")


def test_turns_go_into_the_next_prompt_as_the_predictor_takes_them(predictor):
    from monai_llava_med.apps.chat import ChatSession

    session = ChatSession(predictor, max_new_tokens=8)
    session.open_image(CT)
    pieces: list[str] = []
    first = session.ask("Is there a lesion in this image?", pieces.append)
    assert "".join(pieces) == first.text
    assert first.text == predictor.ask(CT, "Is there a lesion in this image?", max_new_tokens=8)["answer"]
    second = session.ask("Is it on the left side?", lambda _: None)
    turns = [("user", "Is there a lesion in this image?"), ("assistant", first.text),
             ("user", "Is it on the left side?")]
    reference = predictor.ask(CT, turns, max_new_tokens=8)
    alone = predictor.prepare({"image": str(CT), "question": "Is it on the left side?"})
    assert second.text == reference["answer"]
    assert second.prompt_tokens == predictor.prepare({"image": str(CT), "question": turns})["input_ids"].numel()
    assert second.prompt_tokens > alone["input_ids"].numel()  # the first round is in the prompt
    assert [t["role"] for t in session.history] == ["user", "assistant", "user", "assistant"]
    session.reset()
    assert session.history == [] and session.image == CT


def test_a_refused_image_keeps_the_image_and_the_turns(predictor, tmp_path):
    from monai_llava_med.apps.chat import ChatSession

    session = ChatSession(predictor, max_new_tokens=4)
    session.open_image(CT)
    session.ask("Is this a CT image?", lambda _: None)
    bad = planted_dicom(tmp_path / "frames.dcm", {"NumberOfFrames": ("IS", PHI["PatientID"].encode())})
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    for path, reason in ((bad, None), (empty, "the file is empty"), (tmp_path / "nope.nii", "no such file or folder")):
        with pytest.raises(ImageReadError) as info:
            session.open_image(path)
        assert info.value.path == str(path)
        assert reason is None or info.value.reason == reason
        assert PHI["PatientID"] not in str(info.value)
    assert session.image == CT and len(session.history) == 2


def test_console_prints_one_line_per_error_and_goes_on(predictor, tmp_path):
    from monai_llava_med.apps.chat import ChatConsole, ChatSession

    session = ChatSession(predictor, max_new_tokens=4)
    session.open_image(CT)
    lines = iter(["Is this a CT image?", "word " * 400, f"/views {tmp_path / 'v' / 'view_00.png' / 'x'}",
                  "/views", "Is this a CT image?"])

    def read_line(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "view_00.png").write_bytes(b"not a folder")
    out = io.StringIO()
    assert ChatConsole(session, out, read_line).run() == 0
    text = out.getvalue().splitlines()
    errors = [line for line in text if line.startswith("error: ")]
    assert len(errors) == 3, text
    assert errors[0].startswith("error: conversation: the generation prompt has ")
    assert errors[0].endswith("/reset starts a new conversation")
    assert errors[1].startswith("error: x: cannot write the views (")
    assert errors[2] == "error: command: usage: /views DIR"
    answers = [line for line in text if line.startswith("llava-med> ")]
    assert len(answers) == 2 and answers[0] == answers[1] != "llava-med> "  # the refused prompt printed no answer
    assert len(session.history) == 4  # the too-long question did not join the conversation


def test_views_need_an_image(predictor):
    from monai_llava_med.apps.chat import ChatSession

    with pytest.raises(LlavaMedInputError, match="no image is open"):
        ChatSession(predictor).save_views("anywhere")
