# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The terminal side of the chat: the prompt, the commands, the streamed answers, one-line errors.

A line that does not start with ``/`` is a question; the answer is printed as it is generated, after
:data:`ANSWER_PREFIX`. Commands: ``/image PATH``, ``/views DIR``, ``/reset``, ``/help``, ``/quit`` (or Ctrl-D).
A refused image, folder or prompt prints one line, ``error: <file name>: <cause>``, and the chat goes on. Files
are named by their last path component only (a folder name can be a patient's name); nothing read from a file
header is printed but the modality, and only when it is one of DICOM's defined terms.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from ...errors import LlavaMedError, LlavaMedInputError
from .input_checks import error_line

if TYPE_CHECKING:
    from .session import ChatSession

__all__ = ["PROMPT", "ANSWER_PREFIX", "HELP", "ChatConsole", "describe_views"]

#: Shown when the chat waits for a question or a command.
PROMPT = "you> "
#: Printed before each answer.
ANSWER_PREFIX = "llava-med> "
#: The ``/help`` text.
HELP = """commands:
  /image PATH   switch to another image (file or DICOM series folder); starts a new conversation
  /views DIR    save the views the model sees of the image as PNG files in DIR
  /reset        start a new conversation about the same image
  /help         show this list
  /quit         leave (Ctrl-D too)
anything else is a question about the image; Ctrl-C stops an answer"""


def describe_views(views: list[dict]) -> str:
    """``1 view (axial slice 0)``: how many views the model sees, and which."""
    parts = [" ".join(str(v[k]) for k in ("plane", "kind", "index") if v.get(k) is not None) for v in views]
    shown = ", ".join(p for p in parts[:6] if p) + (", ..." if len(parts) > 6 else "")
    noun = "view" if len(views) == 1 else "views"
    return f"{len(views)} {noun}" + (f" ({shown})" if shown else "")


class ChatConsole:
    """Reads lines, runs commands and questions on a :class:`ChatSession`, writes to ``out``.

    Args:
        session: the conversation state.
        out: where answers, messages and errors go.
        read_line: reads one line after showing a prompt; raises ``EOFError`` at the end (default ``input``).
    """

    def __init__(self, session: ChatSession, out: TextIO | None = None,
                 read_line: Callable[[str], str] | None = None) -> None:
        self.session = session
        self.out = out or sys.stdout
        self.read_line = read_line or input
        self.commands: dict[str, Callable[[str], bool]] = {
            "/image": self._image, "/views": self._views, "/reset": self._reset, "/help": self._help,
            "/quit": self._quit, "/exit": self._quit,
        }

    def say(self, text: str) -> None:
        """Write one line."""
        self.out.write(text + "\n")
        self.out.flush()

    def show_image(self) -> None:
        """One line about the current image: its file name, modality and views."""
        s = self.session
        if s.image is not None:
            self.say(f"image {s.image.name}: {s.modality}, {describe_views(s.views)}")

    def run(self) -> int:
        """Chat until ``/quit`` or end of input; returns the exit status (0)."""
        self.say(f"LLaVA-Med chat ({self.session.predictor.model_name}); /help lists the commands, Ctrl-D leaves")
        self.show_image()
        while True:
            try:
                line = self.read_line(PROMPT).strip()
            except EOFError:
                self.say("")
                return 0
            except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line, as in a shell
                self.say("")
                continue
            if not line:
                continue
            try:
                if not self.handle(line):
                    return 0
            except LlavaMedError as err:
                self.say(error_line(err))

    def handle(self, line: str) -> bool:
        """Run one command or question; ``False`` ends the chat."""
        if line.startswith("/"):
            name, _, arg = line.partition(" ")
            command = self.commands.get(name.lower())
            if command is None:
                self.say(f"error: unknown command {name[:32]} (/help lists the commands)")
                return True
            return command(arg.strip())
        self._ask(line)
        return True

    def _ask(self, question: str) -> None:
        started = []  # the prefix goes out with the first piece: a refused prompt prints only its error line

        def piece(text: str) -> None:
            self.out.write(text if started else ANSWER_PREFIX + text)
            self.out.flush()
            started.append(True)

        try:
            done = self.session.ask(question, piece)
        except BaseException:
            if started:
                self.out.write("\n")
            raise
        self.out.write("\n" if started else ANSWER_PREFIX + "\n")
        self.out.flush()
        if done.finish_reason == "cancelled":
            self.say("(answer stopped; it is not part of the conversation)")
        elif done.finish_reason == "length":
            self.say(f"(answer cut at {self.session.max_new_tokens} tokens; --max_new_tokens sets the bound)")

    @staticmethod
    def _path_argument(arg: str, usage: str) -> str:
        if not arg:
            raise LlavaMedInputError(f"usage: {usage}", "command")
        try:
            parts = shlex.split(arg)
        except ValueError:  # an unmatched quote: the text as typed
            parts = []
        return parts[0] if len(parts) == 1 else arg  # a quoted path, or an unquoted one with spaces

    def _image(self, arg: str) -> bool:
        self.session.open_image(self._path_argument(arg, "/image PATH"))
        self.say("new conversation")
        self.show_image()
        return True

    def _views(self, arg: str) -> bool:
        written = self.session.save_views(self._path_argument(arg, "/views DIR"))
        names = ", ".join(p.name for p in written)
        self.say(f"saved {len(written)} {'view' if len(written) == 1 else 'views'} as PNG: {names}")
        return True

    def _reset(self, arg: str) -> bool:
        self.session.reset()
        self.say("new conversation")
        return True

    def _help(self, arg: str) -> bool:
        self.say(HELP)
        return True

    def _quit(self, arg: str) -> bool:
        return False
