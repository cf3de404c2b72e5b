# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The checks the chat makes itself before an image reaches a reader, and the one line it prints for an error.

Standard library and :mod:`monai_llava_med.errors` only, so a missing image is reported before torch is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import ImageReadError, LlavaMedError, LlavaMedInputError, TemplateError

__all__ = ["check_image_path", "error_line"]


def check_image_path(path: Path) -> None:
    """Refuse a path the reader would fail on for a reason the chat can name itself.

    Args:
        path: the image file or series folder.

    Raises:
        ImageReadError: no such file or folder, permission denied, or an empty file.
    """
    if not path.exists():
        raise ImageReadError("no such file or folder", path)
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise ImageReadError("permission denied", path)
    if path.is_file() and path.stat().st_size == 0:
        raise ImageReadError("the file is empty", path)


def error_line(err: LlavaMedError) -> str:
    """``error: <file name>: <cause>`` for a typed error: a file is named by its last path component only.

    Args:
        err: the error; an input error's ``reason`` is printed as it is (the session makes it safe to print).
    """
    if isinstance(err, LlavaMedInputError):
        name = Path(err.path).name if err.path else ""
        hint = "; /reset starts a new conversation" if isinstance(err, TemplateError) else ""
        return f"error: {name or err.path or 'input'}: {err.reason}{hint}"
    return f"error: {err}"
