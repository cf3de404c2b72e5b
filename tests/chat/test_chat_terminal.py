# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``python -m monai_llava_med.apps.chat`` driven like a user in a real pseudo-terminal."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from .conftest import MODEL_DIR, PHI, SAMPLE, pexpect, planted_dicom

PROMPT = "you> "
ANSWER = re.compile(r"llava-med> ([^\r\n]+)\r\n")
IMAGE_LINE = r"image {name}: (\w+), (\d+) views? \(([^)\r\n]*)\)\r\n"


def ask(child: pexpect.spawn, question: str) -> str:
    """Send a question; the answer line, once the prompt is back."""
    child.sendline(question)
    child.expect(ANSWER)
    answer = child.match.group(1).strip()
    child.expect_exact(PROMPT)
    return answer


def command(child: pexpect.spawn, line: str, expected: str) -> re.Match:
    """Send a command; its reply line matched against ``expected`` (a regex), once the prompt is back."""
    child.sendline(line)
    child.expect(expected)
    match = child.match
    child.expect_exact(PROMPT)
    return match


def printed(child: pexpect.spawn) -> str:
    """What the chat wrote, without the lines the terminal echoed back (those start with the prompt)."""
    lines = child.transcript.getvalue().replace("\r\n", "\n").split("\n")
    return "\n".join(line for line in lines if not line.startswith(PROMPT))


def test_a_conversation_in_a_terminal(chat_factory, tmp_path):
    from PIL import Image

    size = json.loads((MODEL_DIR / "llava_med_config.json").read_text())["vision_config"]["image_size"]
    phi = planted_dicom(tmp_path / "phi.dcm")
    unreadable = planted_dicom(tmp_path / "frames.dcm", {"NumberOfFrames": ("IS", PHI["PatientID"].encode())})
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((SAMPLE / "ct_slice.dcm").read_bytes()[:600])

    child = chat_factory(str(SAMPLE / "ct_slice.dcm"))
    child.expect(IMAGE_LINE.format(name=re.escape("ct_slice.dcm")))
    modality, n_views = child.match.group(1), int(child.match.group(2))
    assert modality == "CT" and n_views >= 1
    child.expect_exact(PROMPT)

    first = ask(child, "Is there a lesion in this image?")
    second = ask(child, "Is it on the left side?")  # a second turn of the same conversation
    assert first and second and "error" not in first + second

    views = tmp_path / "views"
    match = command(child, f"/views {views}", r"saved (\d+) views? as PNG: ([^\r\n]+)\r\n")
    files = sorted(views.glob("*.png"))
    assert int(match.group(1)) == len(files) == n_views
    assert match.group(2).split(", ") == [f.name for f in files]
    for f in files:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.size == (size, size) and im.mode == "RGB"
            assert np.asarray(im).std() > 0  # an image, not a blank

    command(child, f"/image {SAMPLE / 'mr_slice.dcm'}", r"new conversation\r\n")
    assert ask(child, "Is this an MRI image?")
    assert "image mr_slice.dcm: MR, 1 view" in child.transcript.getvalue()

    command(child, f"/image {tmp_path / 'missing.dcm'}", r"error: missing\.dcm: no such file or folder\r\n")
    command(child, f"/image {truncated}", r"error: truncated\.dcm: [^\r\n]+\r\n")
    command(child, f"/image {unreadable}", r"error: frames\.dcm: [^\r\n]+\r\n")
    command(child, "/image", r"error: command: usage: /image PATH\r\n")
    assert ask(child, "Is this a CT image?")  # the chat goes on, on the image it had

    command(child, f"/image {phi}", r"image phi\.dcm: CT, ")
    assert ask(child, "Is there a lesion in this image?")
    command(child, "/reset", r"new conversation\r\n")
    command(child, "/help", r"/views DIR +save the views")
    command(child, "/nosuch", r"error: unknown command /nosuch")
    child.sendintr()  # Ctrl-C at the prompt drops the line
    child.expect_exact(PROMPT)
    assert ask(child, "How many lesions are there?")

    child.sendeof()  # Ctrl-D leaves
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 0

    out = printed(child)
    assert "Traceback" not in out and "WARNING" not in out
    for value in (*PHI.values(), "ZZCHAT", str(tmp_path), str(SAMPLE)):
        assert value not in out  # no patient identifier, no folder: files are named by their name only


def test_quit_and_a_series_folder(chat_factory, tmp_path):
    child = chat_factory(str(SAMPLE / "ct_series"), "--max_new_tokens", "4")
    child.expect(IMAGE_LINE.format(name="ct_series"))
    n_views = int(child.match.group(2))
    child.expect_exact(PROMPT)
    assert ask(child, "Is there a lesion anywhere in this scan?")
    match = command(child, f"/views {tmp_path / 'series views'}", r"saved (\d+) views? as PNG")
    assert int(match.group(1)) == n_views == len(list((tmp_path / "series views").glob("view_*.png")))
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 0


@pytest.mark.parametrize("name", ["missing.dcm", "no_such_folder"])
def test_a_missing_start_image_is_one_line_and_status_2(chat_factory, tmp_path, name):
    child = chat_factory(str(tmp_path / name))
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 2
    assert printed(child).strip() == f"error: {name}: no such file or folder"
