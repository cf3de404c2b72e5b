# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI readers shared by every loader, with the checks and metadata cleaning they all apply.

One cached :class:`monai.transforms.LoadImage` per reader kind (``PydicomReader`` for files and series,
``NibabelReader``, ``PILReader``); :func:`run_loader` turns any reader failure into a typed error naming the file;
:func:`clean_meta` keeps only geometry and our own non-identifying keys; :func:`check_values` refuses empty and
NaN/inf images.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage

from ..errors import ImageReadError, VolumeError
from .limits import reduce_photo

__all__ = ["DEFAULT_MAX_VOXELS", "file_name", "short_text", "cached_loader", "run_loader", "clean_meta",
           "check_values"]

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


@functools.lru_cache(maxsize=None)
def cached_loader(kind: str) -> LoadImage:
    """One cached ``LoadImage`` per reader kind (building one instantiates every MONAI reader).

    Args:
        kind: ``"dicom"`` (one file), ``"series"`` (a folder), ``"nifti"`` or ``"photo"``.
    """

    def convert(im: Any) -> Any:
        im = reduce_photo(im)  # huge photos are reduced while decoding (limits.MAX_DECODE_SIDE)
        return im if im.mode in ("L", "RGB", "I;16", "I", "F") else im.convert("RGB")

    readers: dict[str, Callable[[], Any]] = {
        "dicom": lambda: PydicomReader(affine_lps_to_ras=True, swap_ij=True, prune_metadata=True),
        "series": lambda: PydicomReader(affine_lps_to_ras=True, swap_ij=True, prune_metadata=True, fname_regex=None),
        "nifti": NibabelReader,
        "photo": lambda: PILReader(reverse_indexing=False, converter=convert),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LoadImage(reader=readers[kind](), image_only=True, ensure_channel_first=True)


def run_loader(loader: LoadImage, path: str | PathLike, on_error: Callable[[BaseException], Exception] | None = None
               ) -> MetaTensor:
    """Run a MONAI loader with warnings silenced; a failure becomes ``on_error(e)`` or an :class:`ImageReadError`.

    Args:
        loader: from :func:`cached_loader`.
        path: the file or folder.
        on_error: builds the typed error from the reader's exception (e.g. a DICOM decode error).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return loader(path)
        except Exception as e:
            if on_error is not None:
                raise on_error(e) from e
            raise ImageReadError(f"cannot read image ({type(e).__name__}: {short_text(e)})", path) from e


def clean_meta(img: MetaTensor, extra: dict[str, Any]) -> MetaTensor:
    """Keep only geometry and our own non-identifying keys in ``img.meta``."""
    keep = {k: img.meta[k] for k in ("affine", "original_affine", "spatial_shape", "space") if k in img.meta}
    img.meta = {**keep, **extra}
    return img


def check_values(img: torch.Tensor, path: str | PathLike) -> None:
    """Refuse an empty image or one holding NaN/inf values.

    Raises:
        VolumeError: naming ``path``.
    """
    if img.numel() == 0:
        raise VolumeError(f"image is empty (shape {tuple(img.shape)})", path)
    if img.is_floating_point() and not bool(torch.isfinite(img).all()):
        bad = int((~torch.isfinite(img)).sum())
        raise VolumeError(f"image holds {bad} NaN/inf values", path)
