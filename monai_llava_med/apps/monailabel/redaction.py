# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What the server may say about an image: fixed error details, a closed modality vocabulary, quiet readers.

A DICOM header can hold anything, patient identifiers included, in any tag (``NumberOfFrames = "MRN99887766"``).
Messages of the readers (pydicom's ``Invalid value for VR IS: 'MRN99887766'``, ``int()`` of a bad string) and
exception texts built from them quote such values. The server therefore never echoes the text of an error raised
while an image is read:

* :func:`input_error_detail` gives a fixed detail per typed error class (:data:`INPUT_ERROR_DETAILS`);
* :func:`safe_modality` passes only DICOM's defined modality terms (:data:`MODALITY_CODES`), else ``"unknown"``;
* :func:`install_reader_redaction` withholds the text of warnings and log records that image readers (pydicom,
  PIL, SimpleITK, nibabel, tifffile) emit in the server process, keeping their category and origin.

Standard library only.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from ...constants import MODALITY_CODES
from ...transforms.readers import READER_LOGGERS
from ...errors import (
    CheckpointError,
    DicomDecodeError,
    ImageReadError,
    LlavaMedInputError,
    RecordError,
    SlideError,
    TemplateError,
    VolumeError,
)

__all__ = [
    "MODALITY_CODES",
    "INPUT_ERROR_DETAILS",
    "READER_PACKAGES",
    "READER_SOURCES",
    "WITHHELD",
    "safe_modality",
    "input_error_detail",
    "ReaderRecordFilter",
    "install_reader_redaction",
]

#: The detail answered for each typed input error raised while an image is read (first match in order wins).
INPUT_ERROR_DETAILS: tuple[tuple[type[LlavaMedInputError], str], ...] = (
    (DicomDecodeError, "the DICOM file cannot be decoded (invalid or unsupported header values or pixel data)"),
    (SlideError, "the whole-slide image cannot be used (unreadable pyramid, no tissue or level out of range)"),
    (ImageReadError, "the image cannot be read (wrong format, truncated, empty, or a size over the limits)"),
    (VolumeError, "the image content cannot be used (non-finite values, unexpected dimensions or mixed geometry)"),
    (TemplateError, "the question cannot be put into the model's conversation template"),
    (RecordError, "the request cannot be turned into a model input"),
    (CheckpointError, "the model cannot be used"),
)
#: Loggers of the packages that parse image files (the list the transforms mute); their texts may quote header values.
READER_PACKAGES = READER_LOGGERS
#: Source folders whose warnings are withheld: the readers above plus MONAI's and this library's image loaders.
READER_SOURCES = (*READER_PACKAGES, "monai/data", "monai/transforms/io", "monai_llava_med/transforms")
#: What replaces a withheld message.
WITHHELD = "message withheld: an image reader's text may quote file header values"


def safe_modality(value: Any) -> str:
    """``value`` when it is one of :data:`MODALITY_CODES` (case-insensitive), else ``"unknown"``."""
    if isinstance(value, str) and value.strip().upper() in MODALITY_CODES:
        return value.strip().upper()
    return "unknown"


def input_error_detail(err: LlavaMedInputError) -> str:
    """A fixed description of a typed input error: never the error's own text (it may quote header values)."""
    for kind, detail in INPUT_ERROR_DETAILS:
        if isinstance(err, kind):
            return detail
    return "the input cannot be used"


def _from_reader(origin: str) -> bool:
    """Whether a logger name (dotted) or a source file path lies in one of :data:`READER_SOURCES`."""
    path = "/" + origin.replace("\\", "/").replace(".", "/") + "/"
    return any(f"/{source}/" in path for source in READER_SOURCES)


class ReaderRecordFilter(logging.Filter):
    """A logging filter that withholds the text of records that image readers produced.

    Records of the readers' loggers (:data:`READER_PACKAGES`) and warnings routed through ``py.warnings``
    (``logging.captureWarnings``) that a file in :data:`READER_SOURCES` issued keep their level, logger and
    category; their message becomes :data:`WITHHELD` and their exception text is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place when a reader produced it; always keep the record."""
        if record.name == "py.warnings":
            text = str(record.args[0]) if record.args else str(record.msg)
            filename, _, rest = text.partition(":")
            fields = rest.split(": ", 2)
            if _from_reader(filename):
                category = fields[1] if len(fields) > 1 else "Warning"
                record.msg, record.args = f"{category} ({WITHHELD})", ()
        elif _from_reader(record.name):
            record.msg, record.args = f"{record.levelname.lower()} from {record.name} ({WITHHELD})", ()
            record.exc_info, record.exc_text = None, None
        return True


_INSTALLED: dict[str, Any] = {}


def install_reader_redaction() -> ReaderRecordFilter:
    """Withhold the text of image readers' warnings and log records in this process (idempotent).

    Warnings are routed into ``logging`` (``logging.captureWarnings(True)``); ``warnings.showwarning`` is wrapped
    so a warning issued from a file in :data:`READER_SOURCES` is shown as :data:`WITHHELD` with its category and
    origin; and a :class:`ReaderRecordFilter` is put on the root logger's handlers and the readers' loggers, so
    neither the server's stderr nor its log files receive a reader's text.

    Returns:
        the installed filter.
    """
    filt = _INSTALLED.get("filter")
    if filt is None:
        filt = _INSTALLED["filter"] = ReaderRecordFilter()
    logging.captureWarnings(True)
    shown = warnings.showwarning
    if not getattr(shown, "_reader_redaction", False):

        def showwarning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                        line: str | None = None) -> None:
            if _from_reader(filename):
                message, line = WITHHELD, ""
            shown(message, category, filename, lineno, file, line)

        showwarning._reader_redaction = True  # type: ignore[attr-defined]
        warnings.showwarning = showwarning
    loggers = [logging.getLogger(), logging.getLogger("py.warnings"), *map(logging.getLogger, READER_PACKAGES)]
    for logger in loggers:
        for target in (logger, *logger.handlers):
            if filt not in target.filters:
                target.addFilter(filt)
    return filt
