# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Typed errors shared by the whole package.

Every error caused by bad input (a file, a record, a checkpoint, a request) derives from
:class:`LlavaMedInputError`, a :class:`ValueError`, so callers can catch one class and report
the file and the cause. Messages never contain patient identifiers.
"""

from __future__ import annotations

from os import PathLike

__all__ = [
    "LlavaMedError",
    "LlavaMedInputError",
    "ImageReadError",
    "DicomDecodeError",
    "VolumeError",
    "SlideError",
    "CheckpointError",
    "ExportError",
    "RecordError",
    "TemplateError",
    "BundleError",
    "CalibrationError",
    "DicomSRError",
    "SeriesSelectionError",
    "PacsError",
    "PacsConfigError",
    "PacsUnavailableError",
    "StudyNotFoundError",
    "NoMatchingSeriesError",
    "as_input_error",
]


class LlavaMedError(Exception):
    """Base class of every error raised on purpose by monai-llava-med."""


class LlavaMedInputError(LlavaMedError, ValueError):
    """Bad input: the message names the offending file (or record) and the cause.

    Args:
        message: what is wrong, in words a user can act on.
        path: the file, folder or record id the problem was found in, if any.
    """

    def __init__(self, message: str, path: str | PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class ImageReadError(LlavaMedInputError):
    """An image file cannot be read or decoded (wrong format, truncated, zero-size, absurd size)."""


class DicomDecodeError(ImageReadError):
    """A DICOM file or series cannot be decoded (not DICOM, no PixelData, unsupported transfer syntax...)."""


class VolumeError(LlavaMedInputError):
    """A volume has unusable content: NaN/inf values, unexpected dimensionality, mixed geometry."""


class SlideError(LlavaMedInputError):
    """A whole-slide image cannot be used: unreadable pyramid, no tissue, level out of range."""


class CheckpointError(LlavaMedInputError):
    """A checkpoint folder or file cannot be loaded: missing/unexpected keys, shape mismatch, unsafe pickle."""


class ExportError(CheckpointError):
    """A model cannot be written in the requested layout (e.g. a pooled model as HF Llava): nothing is written."""


class RecordError(LlavaMedInputError):
    """A dataset record is malformed (missing fields, bad conversation turns, unknown image)."""


class TemplateError(LlavaMedInputError):
    """A conversation cannot be rendered with the chosen template (unknown template, bad roles)."""


class BundleError(LlavaMedInputError):
    """A MONAI bundle is run with settings that cannot work (wrong ``bundle_root``, missing bundle file)."""


class CalibrationError(LlavaMedInputError):
    """A ``calibration.json`` (or its gate tensors) cannot be read or does not fit the model, or a calibration
    cannot be fitted from the data given (too few labelled answers)."""


class DicomSRError(LlavaMedInputError):
    """Answers cannot be written as a DICOM SR: no source instance, sources of several studies, a malformed answer."""


class SeriesSelectionError(LlavaMedInputError):
    """A DICOM input has nothing to answer about: no DICOM file, or no series matching the selection rules."""


class PacsError(LlavaMedError):
    """A PACS exchange failed (DICOMweb or DIMSE); ``where`` names the service, never a patient or study value.

    Args:
        message: what failed.
        where: the service (``DICOMweb http://host:port/dicom-web``, ``DIMSE AE@host:port``), if any.
    """

    def __init__(self, message: str, where: str | None = None) -> None:
        self.where = where
        self.reason = message
        super().__init__(f"{where}: {message}" if where is not None else message)


class PacsUnavailableError(PacsError):
    """The PACS cannot be reached or refused the request (connection refused, timeout, HTTP 5xx, C-STORE failure).

    Transient: the PACS node retries it with backoff.
    """


class PacsConfigError(LlavaMedInputError):
    """The PACS node is configured with settings that cannot work (bad destination, no question, bad port)."""


class StudyNotFoundError(LlavaMedInputError):
    """The PACS holds no instance of the requested study."""


class NoMatchingSeriesError(SeriesSelectionError):
    """No series of the study matches the selection rules (modality, body part, series description)."""


def as_input_error(err: Exception, where: str) -> LlavaMedInputError:
    """The typed error standing for a failure on one input (file, item): ``err`` itself when typed, else a new one.

    A library's own message can quote file content (a DICOM header value), so an untyped error is reported by
    its class and the module that raised it, never by its text; an ``OSError`` keeps only its ``strerror``.

    Args:
        err: what reading or preparing the input raised.
        where: the file (or record id) named by the new error.

    Returns:
        a :class:`LlavaMedInputError` naming ``where`` and the cause.
    """
    if isinstance(err, LlavaMedInputError):
        return err
    if isinstance(err, OSError):
        return ImageReadError(f"cannot read the file ({err.strerror or type(err).__name__})", where)
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "?") if tb is not None else "?"
    return ImageReadError(f"unexpected {type(err).__name__} raised in {module} (library message withheld)", where)
