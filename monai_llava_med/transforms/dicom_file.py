# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""One DICOM file (single- or multi-frame) -> a rescaled, channel-first MetaTensor through MONAI's PydicomReader.

Rescale slope/intercept are applied, also when an enhanced multi-frame file keeps them in its functional groups,
and PALETTE COLOR images are expanded to RGB through their colour lookup table. Patient geometry follows
:mod:`.dicom_geometry`: frames with per-frame positions forming one stack are a volume, a single slice carries
the affine of its stored array.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import optional_import

from ..errors import DicomDecodeError, VolumeError
from .dicom_geometry import frame_stack, slice_affine
from .dicom_header import (
    check_dicom_pixels,
    check_rescale,
    dicom_meta,
    header_int,
    header_strings,
    header_value,
    read_dicom_header,
)
from .readers import (
    DEFAULT_MAX_VOXELS,
    QuietReaders,
    cached_loader,
    check_values,
    clean_meta,
    file_name,
    memory_guard,
    redact_text,
    run_loader,
)

pydicom, _ = optional_import("pydicom")
apply_color_lut, _has_color_lut = optional_import("pydicom.pixels", name="apply_color_lut")  # pydicom >= 3
if not _has_color_lut:  # pydicom 2.x
    apply_color_lut, _ = optional_import("pydicom.pixel_data_handlers.util", name="apply_color_lut")

__all__ = ["load_dicom_file", "decode_series_slice", "decode_error"]

_LIBJPEG = (("pylibjpeg", "pylibjpeg"), ("pylibjpeg-libjpeg", "libjpeg"))
_OPENJPEG = (("pylibjpeg", "pylibjpeg"), ("pylibjpeg-openjpeg", "openjpeg"))
_JPEGLS = (("pyjpegls", "jpeg_ls"),)
_GDCM = (("python-gdcm", "gdcm"),)
_PILLOW = (("pillow", "PIL"),)
#: Compressed transfer syntaxes and the decoder sets (package, module) of which one must be installed.
#: The ``io`` extra installs pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg and pyjpegls.
_DECODERS = {
    "1.2.840.10008.1.2.4.50": (_LIBJPEG, _PILLOW, _GDCM),
    "1.2.840.10008.1.2.4.51": (_LIBJPEG, _GDCM),
    "1.2.840.10008.1.2.4.57": (_LIBJPEG, _GDCM),
    "1.2.840.10008.1.2.4.70": (_LIBJPEG, _GDCM),
    "1.2.840.10008.1.2.4.80": (_LIBJPEG, _JPEGLS, _GDCM),
    "1.2.840.10008.1.2.4.81": (_LIBJPEG, _JPEGLS, _GDCM),
    "1.2.840.10008.1.2.4.90": (_OPENJPEG, _PILLOW, _GDCM),
    "1.2.840.10008.1.2.4.91": (_OPENJPEG, _PILLOW, _GDCM),
    "1.2.840.10008.1.2.4.201": (_OPENJPEG,),
    "1.2.840.10008.1.2.4.202": (_OPENJPEG,),
    "1.2.840.10008.1.2.4.203": (_OPENJPEG,),
}


def _transfer_syntax(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(uid) if uid is not None else "1.2.840.10008.1.2"


def _syntax_words(uid: str) -> str:
    """``"<name>, <uid>"`` for a transfer syntax pydicom knows; a UID outside its dictionary is not quoted."""
    known = getattr(pydicom.uid, "UID_dictionary", {}).get(uid)
    return f"transfer syntax {known[0]}, {uid}" if known else "an unknown transfer syntax"


def _install_hint(uid: str) -> str:
    """What to install to decode ``uid``, or ``""`` when one of its decoder sets is importable."""
    options = _DECODERS.get(uid)
    if not options or any(all(optional_import(module)[1] for _, module in option) for option in options):
        return ""
    return "; install " + " or ".join(" + ".join(pkg for pkg, _ in option) for option in options) + " to decode it"


def decode_error(e: BaseException, ds: Any, path: str | PathLike) -> DicomDecodeError:
    """The typed error for a pixel-data decode failure of ``path``.

    The transfer syntax is named; an install hint is added only when no decoder for it is importable; the reader's
    text is kept with quoted substrings and the header's text values taken out (:func:`~.readers.redact_text`).
    """
    uid = _transfer_syntax(ds) if ds is not None else ""
    where = _syntax_words(uid) if uid else "an unknown transfer syntax"
    if isinstance(e, MemoryError):
        return DicomDecodeError(f"not enough memory to decode the pixel data ({where})", path)
    values = header_strings(ds) if ds is not None else []
    return DicomDecodeError(f"cannot decode pixel data ({where}): {type(e).__name__}: {redact_text(e, values)}"
                            f"{_install_hint(uid)}", path)


def _frame_rescale(ds: Any, frames: int, path: str | PathLike) -> list[tuple[float, float]] | None:
    """Per-frame ``(slope, intercept)`` of an enhanced (multi-frame) file, from its functional groups.

    None when the top-level RescaleSlope/RescaleIntercept exist (the reader applies them) or no functional group
    holds a PixelValueTransformationSequence. A per-frame group overrides the shared one.

    Raises:
        DicomDecodeError: a zero, non-numeric or non-finite slope/intercept, or a per-frame sequence of the wrong
            length.
    """
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return None

    def transform(group_seq: Any) -> Any:
        item = group_seq[0] if group_seq else None
        seq = item.get("PixelValueTransformationSequence") if item is not None else None
        return seq[0] if seq else None

    shared = transform(ds.get("SharedFunctionalGroupsSequence"))
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence") or []
    per_frame = [transform([g]) for g in per_frame_seq]
    if shared is None and not any(t is not None for t in per_frame):
        return None
    if per_frame and len(per_frame) != frames:
        raise DicomDecodeError("PerFrameFunctionalGroupsSequence item count differs from NumberOfFrames", path)
    out = []
    for f in range(frames):
        item = (per_frame[f] if per_frame else None) or shared
        if item is None:
            out.append((1.0, 0.0))
            continue
        check_rescale(item, path, f"functional groups of frame {f + 1}: ")  # present values are finite
        slope, intercept = header_value(item, "RescaleSlope"), header_value(item, "RescaleIntercept")
        out.append((1.0 if slope is None else slope, 0.0 if intercept is None else intercept))
    return out


def _apply_frame_rescale(img: MetaTensor, ds: Any, frames: int, path: str | PathLike) -> MetaTensor:
    """Apply functional-group rescale to a ``(C, ..., F)`` (or single-frame ``(C, ...)``) image."""
    rescale = _frame_rescale(ds, frames, path)
    if rescale is None or all(r == (1.0, 0.0) for r in rescale):
        return img
    img = img.float()
    if frames == 1:
        return img * rescale[0][0] + rescale[0][1]
    slope = torch.tensor([r[0] for r in rescale], dtype=img.dtype)
    intercept = torch.tensor([r[1] for r in rescale], dtype=img.dtype)
    return img * slope + intercept


def _apply_palette(img: MetaTensor, ds: Any, path: str | PathLike) -> MetaTensor:
    """PALETTE COLOR: ``(1, ...)`` index image -> ``(3, ...)`` RGB in ``[0, 255]`` through the colour LUT."""
    if img.shape[0] != 1:
        raise DicomDecodeError(f"PALETTE COLOR image decoded with {img.shape[0]} channels (1 expected)", path)
    try:
        index = img[0].as_subclass(torch.Tensor).round().numpy().astype(np.int64)
        rgb = np.asarray(apply_color_lut(index, ds))
    except Exception as e:
        raise DicomDecodeError(f"cannot apply the PALETTE COLOR lookup table ({type(e).__name__}: "
                               f"{redact_text(e, header_strings(ds))})", path) from e
    scale = 255.0 / 65535.0 if rgb.dtype.itemsize > 1 else 1.0  # 16-bit LUT entries -> 8-bit display range
    out = torch.as_tensor(np.moveaxis(rgb, -1, 0).astype(np.float32) * scale)
    return MetaTensor(out, meta=dict(img.meta))


def load_dicom_file(path: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> MetaTensor:
    """Load one DICOM file: a single frame as ``(C, H, W)`` (``"image"``), several as ``(C, X, Y, F)`` (``"frames"``).

    Frames whose functional groups place them as one evenly spaced stack (enhanced CT/MR) are sorted by position
    along the slice normal and returned as a ``(C, X, Y, Z)`` ``"volume"`` with its RAS affine, like the same
    slices as a series. A single frame with ImageOrientationPatient keeps its stored ``(C, H, W)`` array, with
    the affine of that array and ``meta["patient_geometry"] = True``.

    Args:
        path: a DICOM file.
        max_voxels: size limit (checked from the header before decoding).

    Raises:
        DicomDecodeError: unreadable header or pixel data, undecodable transfer syntax, malformed header fields.
        ImageReadError: zero or absurd size; not enough memory.
        VolumeError: malformed geometry, unexpected decoded shape, NaN/inf values.
    """
    with QuietReaders(), memory_guard(path):
        img = _load(path, max_voxels)
        check_values(img, path)
    return img


def _rescaled(data: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """PydicomReader's rescale, ``float32(data) * slope + intercept`` (float64 scalars), as float32.

    Integer pixels of at most 16 bits with an integer slope and intercept whose results stay below 2^24 are exact
    integers in float32 arithmetic as in float64, so that common case (CT) is computed in place in float32.
    """
    out = data.astype(np.float32)
    small = data.dtype.kind in "iu" and data.dtype.itemsize <= 2
    if small and float(slope).is_integer() and float(intercept).is_integer() and (
            65535 * abs(float(slope)) + abs(float(intercept)) < 2**24):
        if slope != 1:
            out *= np.float32(slope)
        out += np.float32(intercept)
        return out
    return out * slope + intercept


def decode_series_slice(path: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> torch.Tensor:
    """The pixels of one slice of a scanned series: float32 ``(C, H, W)``, the values :func:`load_dicom_file` gives.

    A single-frame grey image (no PALETTE COLOR, rescale at the top level or none) is decoded by pydicom directly,
    with the reader's rescale (``float32(pixels) * RescaleSlope + RescaleIntercept``), and no geometry or reader
    metadata is built; any other file goes through :func:`load_dicom_file`. The checks are the same.

    Args:
        path: a DICOM file.
        max_voxels: size limit (checked from the header before decoding).

    Raises:
        DicomDecodeError: see :func:`load_dicom_file`.
        ImageReadError: see :func:`load_dicom_file`.
        VolumeError: NaN/inf values, see :func:`load_dicom_file`.
    """
    with QuietReaders(), memory_guard(path):
        ds = read_dicom_header(path)
        check_dicom_pixels(ds, path, max_voxels)
        simple = (header_int(ds, "NumberOfFrames", path, default=1) == 1
                  and header_int(ds, "SamplesPerPixel", path, default=1) == 1
                  and dicom_meta(ds, file_name(path))["photometric"] != "PALETTE COLOR"
                  and _frame_rescale(ds, 1, path) is None)
        if not simple:
            return load_dicom_file(path, max_voxels).as_subclass(torch.Tensor)
        try:
            data = ds.pixel_array
            if "RescaleSlope" in ds or "RescaleIntercept" in ds:
                data = _rescaled(data, ds.RescaleSlope if "RescaleSlope" in ds else 1.0,
                                 ds.RescaleIntercept if "RescaleIntercept" in ds else 0.0)
        except BaseException as e:
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise  # KeyboardInterrupt, SystemExit; a Rust decoder's PanicException derives from BaseException
            raise decode_error(e, ds, path) from e
        if data.ndim != 2:
            raise VolumeError(f"DICOM image decoded to {data.ndim + 1} dimensions (3 expected)", path)
        if data.shape != (header_int(ds, "Rows", path), header_int(ds, "Columns", path)):
            raise DicomDecodeError("pixel data decoded to a plane of other size than Rows x Columns", path)
        img = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
        check_values(img, path)
    return img


def _load(path: str | PathLike, max_voxels: int) -> MetaTensor:
    """:func:`load_dicom_file` without the memory guard and value check."""
    ds = read_dicom_header(path)
    check_dicom_pixels(ds, path, max_voxels)
    frames = header_int(ds, "NumberOfFrames", path, default=1)
    meta = dicom_meta(ds, file_name(path))
    img = run_loader(cached_loader("dicom"), path, lambda e: decode_error(e, ds, path))
    if header_int(ds, "SamplesPerPixel", path, default=1) > 1 and img.shape[0] == 1:
        img = img[0].movedim(-1, 0)[:3]  # colour samples last -> channel first (RGBA: alpha dropped)
    if frames > 1:
        # PydicomReader swaps the first two axes of (F, R, C): (ch, R, F, C) -> (ch, C, R, F) = (ch, X, Y, F)
        if img.ndim != 4:
            raise VolumeError(f"multi-frame DICOM decoded to {img.ndim} dimensions (4 expected)", path)
        img, layout = img.permute(0, 3, 1, 2).contiguous(), "frames"
    else:
        if img.ndim != 3:
            raise VolumeError(f"DICOM image decoded to {img.ndim} dimensions (3 expected)", path)
        img, layout = img.transpose(1, 2).contiguous(), "image"
    img = _apply_frame_rescale(img, ds, frames, path)  # enhanced files: slope/intercept of each frame
    if meta["photometric"] == "PALETTE COLOR":
        img, meta["photometric"] = _apply_palette(img, ds, path), "RGB"
    return _with_geometry(img, ds, frames, path, {**meta, "layout": layout})


def _with_geometry(img: MetaTensor, ds: Any, frames: int, path: str | PathLike, meta: dict[str, Any]) -> MetaTensor:
    """Attach the header's patient geometry (:mod:`.dicom_geometry`) to a decoded image.

    Frames that form one volume are sorted by position and become a ``"volume"`` with its RAS affine; a single
    frame with an orientation keeps its stored ``(C, rows, columns)`` array and gets the affine of that array with
    ``meta["patient_geometry"] = True`` (:class:`~.radiology.CanonicalOrientation` turns it into a one-slice
    volume).
    """
    affine = None
    if frames > 1:
        stack = frame_stack(ds, frames, path)
        if stack is not None:
            order, affine = stack
            img = MetaTensor(img.as_subclass(torch.Tensor)[..., order].contiguous(), meta=dict(img.meta))
            meta["layout"] = "volume"
    else:
        affine = slice_affine(ds, path)
        meta["patient_geometry"] = affine is not None
    img = clean_meta(img, meta)
    if affine is not None:
        img.meta["affine"] = img.meta["original_affine"] = torch.as_tensor(affine, dtype=torch.float64)
        img.meta["spatial_shape"] = tuple(img.shape[1:])
    return img
