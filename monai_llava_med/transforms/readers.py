# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI readers shared by every loader, with the checks and metadata cleaning they all apply.

One cached :class:`monai.transforms.LoadImage` per reader kind (``PydicomReader`` for files and series,
``NibabelReader``, ``PILReader``, our SimpleITK reader for NRRD/MetaImage); :func:`run_loader` turns any reader
failure into a typed error naming the file; :func:`clean_meta` keeps only geometry and our own non-identifying keys;
:func:`check_values` refuses empty and NaN/inf images. :class:`QuietReaders` keeps the readers' warnings and log
records (which may quote header values) from reaching the user, and :func:`redact_text` takes quoted values out of
a reader's exception text.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage

from ..errors import ImageReadError, VolumeError
from .limits import reduce_photo

__all__ = ["DEFAULT_MAX_VOXELS", "READER_LOGGERS", "file_name", "short_text", "redact_text", "QuietReaders",
           "memory_guard", "cached_loader", "run_loader", "clean_meta", "all_finite", "check_values"]

#: Refuse anything larger than this many voxels (x channels) for a radiology volume: 2^27 (512 x 512 x 512). The
#: whole-volume path peaks at about 22 bytes per voxel (docs/limits.md), ~3 GB here; 2D images have their own,
#: lower limits (:mod:`.limits`).
DEFAULT_MAX_VOXELS = 1 << 27


def file_name(path: str | PathLike) -> str:
    """The last path component (what messages and ``meta["source"]`` show; never the full path)."""
    return Path(path).name


def short_text(e: BaseException, limit: int = 200) -> str:
    """An exception's text on one line, at most ``limit`` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Loggers of the image readers and decoder plugins; their records may quote header values or dump tracebacks.
READER_LOGGERS = ("pydicom", "pylibjpeg", "libjpeg", "openjpeg", "jpeg_ls", "PIL", "nibabel", "SimpleITK", "tifffile",
                  "highdicom", "LoadImage", "monai.data")
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_QUIET_LOCK = threading.Lock()
_QUIET_STATE: dict[str, Any] = {"depth": 0, "levels": {}}


def redact_text(e: BaseException, values: Iterable[str] = (), limit: int = 200) -> str:
    """:func:`short_text` of ``e`` with quoted substrings and each of ``values`` replaced by ``'...'``.

    Readers quote the offending value in their messages (``invalid literal for int() with base 10: 'MRN123'``);
    a header can hold anything, patient identifiers included, so none of it may reach a message.

    Args:
        e: the reader's exception.
        values: header strings to take out as well (e.g. every text element of the dataset).
        limit: most characters kept.
    """
    text = _QUOTED.sub("'...'", " ".join(str(e).split()))
    for value in sorted({v for v in values if len(v) >= 3}, key=len, reverse=True):
        text = text.replace(value, "'...'")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class QuietReaders:
    """Context manager: the readers' warnings are recorded instead of shown, their log records are dropped.

    pydicom warns with the offending value (``Invalid value for VR IS: 'MRN123'``) and logs an ERROR with a
    traceback for each decoder plugin that fails; neither may reach the user. Nested and concurrent uses share one
    count: the loggers in :data:`READER_LOGGERS` are muted while any is active.

    Attributes:
        warnings: the messages of the warnings caught inside the block (to inspect, never to show).
    """

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self._catch = warnings.catch_warnings(record=True)

    def __enter__(self) -> QuietReaders:
        with _QUIET_LOCK:
            if _QUIET_STATE["depth"] == 0:
                for name in READER_LOGGERS:
                    logger = logging.getLogger(name)
                    _QUIET_STATE["levels"][name] = logger.level
                    logger.setLevel(logging.CRITICAL + 1)
            _QUIET_STATE["depth"] += 1
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.warnings = [str(w.message) for w in self._records or []]
        self._catch.__exit__(*exc)
        with _QUIET_LOCK:
            _QUIET_STATE["depth"] -= 1
            if _QUIET_STATE["depth"] == 0:
                for name, level in _QUIET_STATE["levels"].items():
                    logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def memory_guard(path: str | PathLike) -> Iterator[None]:
    """Turn an allocation failure inside the block (``MemoryError``, torch's "can't allocate memory"
    ``RuntimeError``) into an :class:`ImageReadError` naming ``path``, so one large input does not abort a run.

    Raises:
        ImageReadError: not enough memory for this input.
    """
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "alloc" not in str(e).lower():
            raise
        raise ImageReadError(f"not enough memory to load and convert this image ({type(e).__name__})", path) from e


def _sitk_reader() -> Any:
    from .sitk_reader import SimpleITKImageReader  # local import: sitk_reader builds on this module

    return SimpleITKImageReader()


@functools.lru_cache(maxsize=None)
def cached_loader(kind: str) -> LoadImage:
    """One cached ``LoadImage`` per reader kind (building one instantiates every MONAI reader).

    Args:
        kind: ``"dicom"`` (one file), ``"series"`` (a folder), ``"nifti"``, ``"photo"`` or ``"sitk"`` (NRRD and
            MetaImage, :class:`~.sitk_reader.SimpleITKImageReader`).
    """

    def convert(im: Any) -> Any:
        im = reduce_photo(im)  # huge photos are reduced while decoding (limits.MAX_DECODE_SIDE)
        return im if im.mode in ("L", "RGB", "I;16", "I", "F") else im.convert("RGB")

    readers: dict[str, Callable[[], Any]] = {
        "dicom": lambda: PydicomReader(affine_lps_to_ras=True, swap_ij=True, prune_metadata=True),
        "series": lambda: PydicomReader(affine_lps_to_ras=True, swap_ij=True, prune_metadata=True, fname_regex=None),
        "nifti": NibabelReader,
        "photo": lambda: PILReader(reverse_indexing=False, converter=convert),
        "sitk": _sitk_reader,
    }
    with QuietReaders():  # building it instantiates every MONAI reader, some of which warn about missing plugins
        return LoadImage(reader=readers[kind](), image_only=True, ensure_channel_first=True)


def run_loader(loader: LoadImage, path: str | PathLike, on_error: Callable[[BaseException], Exception] | None = None
               ) -> MetaTensor:
    """Run a MONAI loader inside :class:`QuietReaders`; a failure becomes ``on_error(e)`` or an :class:`ImageReadError`.

    The loader's own reader is passed explicitly, so a failure is that reader's exception (not ``LoadImage``'s
    "cannot find a suitable reader ... Please install the reader libraries" after trying every other reader).

    Args:
        loader: from :func:`cached_loader`.
        path: the file or folder.
        on_error: builds the typed error from the reader's exception (e.g. a DICOM decode error).
    """
    with QuietReaders():
        try:
            return loader(path, reader=loader.readers[-1])
        except BaseException as e:
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise  # KeyboardInterrupt, SystemExit; a Rust decoder's PanicException derives from BaseException
            if on_error is not None:
                raise on_error(e) from e
            raise ImageReadError(f"cannot read image ({type(e).__name__}: {redact_text(e)})", path) from e


def clean_meta(img: MetaTensor, extra: dict[str, Any]) -> MetaTensor:
    """Keep only geometry and our own non-identifying keys in ``img.meta``."""
    keep = {k: img.meta[k] for k in ("affine", "original_affine", "spatial_shape", "space") if k in img.meta}
    img.meta = {**keep, **extra}
    return img


def all_finite(t: torch.Tensor) -> bool:
    """Whether a float tensor holds no NaN/inf, in one min/max pass (NaN propagates to both, inf shows in one).

    Args:
        t: a non-empty floating-point tensor.
    """
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def check_values(img: torch.Tensor, path: str | PathLike) -> None:
    """Refuse an empty image or one holding NaN/inf values.

    Raises:
        VolumeError: naming ``path``.
    """
    if img.numel() == 0:
        raise VolumeError(f"image is empty (shape {tuple(img.shape)})", path)
    if img.is_floating_point() and not all_finite(img):
        bad = int((~torch.isfinite(img)).sum())
        raise VolumeError(f"image holds {bad} NaN/inf values", path)
