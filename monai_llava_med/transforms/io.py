# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Loading medical images through MONAI readers, with validation and typed errors.

:class:`LoadMedicalImage` reads a DICOM file, a DICOM series folder, a multi-frame DICOM, a NIfTI volume or a
PNG/JPEG/single-page TIFF with :class:`monai.transforms.LoadImage` (``PydicomReader``, ``NibabelReader``,
``PILReader``) and returns a channel-first :class:`monai.data.MetaTensor`:

* 2D images: ``(C, H, W)`` in display orientation, ``meta["layout"] == "image"``;
* volumes with patient geometry: ``(C, X, Y, Z)`` with the reader's RAS affine, ``meta["layout"] == "volume"``;
* multi-frame DICOM without per-slice geometry: ``(C, X, Y, F)``, ``meta["layout"] == "frames"``.

Only non-identifying fields are kept in ``meta``: ``modality``, ``photometric``, ``window_center``,
``window_width``, ``source`` (the file or folder name), the affine and spacing; photos also get ``bit_depth``
(8 for 8-bit greyscale/colour files, ``None`` for 16-bit, integer or float ones). Rescale slope/intercept are
applied, also when an enhanced multi-frame file keeps them in its functional groups, and PALETTE COLOR images
are expanded to RGB through their colour lookup table. DICOM series are validated from
their headers first (one series, same size/orientation/spacing, distinct positions) and sorted by position along
the slice normal.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform, Transform
from monai.utils import optional_import

from ..errors import DicomDecodeError, ImageReadError, VolumeError

pydicom, _ = optional_import("pydicom")
tifffile, _ = optional_import("tifffile")
apply_color_lut, _has_color_lut = optional_import("pydicom.pixels", name="apply_color_lut")  # pydicom >= 3
if not _has_color_lut:  # pydicom 2.x
    apply_color_lut, _ = optional_import("pydicom.pixel_data_handlers.util", name="apply_color_lut")

__all__ = [
    "InputKind",
    "DicomSeriesInfo",
    "detect_input_kind",
    "read_dicom_header",
    "check_dicom_pixels",
    "scan_dicom_series",
    "load_dicom_slice",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "LoadMedicalImageD",
    "LoadMedicalImageDict",
    "DEFAULT_MAX_VOXELS",
]

InputKind = Literal["dicom", "dicom_series", "nifti", "image", "slide"]

#: Refuse anything larger than this many voxels (x channels) for a radiology image (~1.1e9, 4.3 GB as float32).
DEFAULT_MAX_VOXELS = 1 << 30

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_TIFF_SUFFIXES = (".tif", ".tiff", ".svs")
#: A single-level TIFF larger than this on a side is treated as a slide, not as a photo.
_SLIDE_MIN_SIDE = 10000

#: Transfer syntaxes that need a decoder plugin, with what to install (pillow covers JPEG baseline and J2K).
_PLUGIN_HINTS = {
    "1.2.840.10008.1.2.4.50": "pillow (or pylibjpeg + pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pylibjpeg + pylibjpeg-libjpeg, or python-gdcm",
    "1.2.840.10008.1.2.4.90": "pillow with OpenJPEG (or pylibjpeg + pylibjpeg-openjpeg)",
    "1.2.840.10008.1.2.4.91": "pillow with OpenJPEG (or pylibjpeg + pylibjpeg-openjpeg)",
    "1.2.840.10008.1.2.4.201": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg + pylibjpeg-openjpeg",
}
_BITS_ALLOWED = (1, 8, 16, 32, 64)
#: PIL modes (after the photo reader's conversion) that hold 8-bit samples.
_PIL_8BIT_MODES = ("L", "RGB")
#: Header fields a series scan reads (``specific_tags`` keeps the scan of hundreds of slices fast).
_SCAN_TAGS = (
    "SeriesInstanceUID", "Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "InstanceNumber", "SliceThickness", "Modality", "PhotometricInterpretation", "WindowCenter", "WindowWidth",
)
#: Geometry elements and the number of values each must hold.
_GEOMETRY_TAGS = {"ImageOrientationPatient": 6, "ImagePositionPatient": 3, "PixelSpacing": 2}


def _name(path: str | PathLike) -> str:
    return Path(path).name


def _suffix(path: str | PathLike) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _is_dicom_file(path: str | PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def detect_input_kind(path: str | PathLike) -> InputKind:
    """Decide how a path is read: by folder/suffix, then by content (DICOM preamble, TIFF pyramid).

    Args:
        path: a file or a DICOM series folder.

    Returns:
        one of ``"dicom"``, ``"dicom_series"``, ``"nifti"``, ``"image"`` (PNG/JPEG/small single-page TIFF) or
        ``"slide"`` (pyramidal or very large TIFF/SVS).

    Raises:
        ImageReadError: missing path, empty file, empty folder, unsupported type.
        DicomDecodeError: a ``.dcm`` file without the DICOM preamble.
        SlideError: an unreadable TIFF.
    """
    p = Path(path)
    if p.is_dir():
        if not any(_is_dicom_file(f) for f in p.iterdir() if f.is_file()):
            raise ImageReadError("folder holds no DICOM files (expected one DICOM series)", path)
        return "dicom_series"
    if not p.is_file():
        raise ImageReadError("no such file or folder", path)
    if p.stat().st_size == 0:
        raise ImageReadError("file is empty (0 bytes)", path)
    suffix = _suffix(p)
    if suffix in _NIFTI_SUFFIXES:
        return "nifti"
    if suffix in _IMAGE_SUFFIXES:
        return "image"
    if suffix in _TIFF_SUFFIXES:
        from .pathology import tiff_level_shapes  # local import: pathology imports this module

        shapes = tiff_level_shapes(p)
        if suffix == ".svs" or len(shapes) > 1 or max(shapes[0][:2]) > _SLIDE_MIN_SIDE:
            return "slide"
        return "image"
    if _is_dicom_file(p):
        return "dicom"
    if suffix in (".dcm", ".dicom", ""):
        raise DicomDecodeError("not a DICOM file (no 'DICM' marker at byte 128)", path)
    raise ImageReadError(f"unsupported file type {suffix!r} (DICOM, NIfTI, PNG/JPEG or TIFF expected)", path)


def read_dicom_header(path: str | PathLike, stop_before_pixels: bool = False) -> Any:
    """Read a DICOM header with pydicom, turning every parse failure into :class:`DicomDecodeError`.

    Args:
        path: the DICOM file.
        stop_before_pixels: read only the fields a series scan needs and stop at PixelData; otherwise read the
            whole header with large values deferred.

    Returns:
        the ``pydicom.Dataset`` (pixel data not decoded).
    """
    try:
        if stop_before_pixels:
            return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_SCAN_TAGS))
        return pydicom.dcmread(path, defer_size=4096)
    except Exception as e:  # InvalidDicomError, EOFError, struct.error, OSError ...
        raise DicomDecodeError(f"not a readable DICOM file ({type(e).__name__}: {_short(e)})", path) from e


def _short(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _transfer_syntax(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(uid) if uid is not None else "1.2.840.10008.1.2"


def _uid_name(uid: str) -> str:
    try:
        return str(pydicom.uid.UID(uid).name)
    except Exception:
        return uid


def check_dicom_pixels(ds: Any, path: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    """Validate a DICOM header before decoding: PixelData present, sane size, known sample layout.

    Args:
        ds: a dataset from :func:`read_dicom_header` (read with pixels deferred, not stopped before them).
        path: the file, for messages.
        max_voxels: refuse images with more samples than this.

    Raises:
        DicomDecodeError: no PixelData, bad BitsAllocated.
        ImageReadError: zero or absurd dimensions.
        VolumeError: malformed ImageOrientationPatient, ImagePositionPatient or PixelSpacing.
    """
    if "PixelData" not in ds:
        kind = "FloatPixelData" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else None
        detail = f" (has {kind}, which is not supported)" if kind else " (it may be a report or presentation state)"
        raise DicomDecodeError("DICOM file has no PixelData" + detail, path)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise ImageReadError(f"zero-size image: Rows={rows}, Columns={cols}, NumberOfFrames={frames}", path)
    if spp not in (1, 3, 4):
        raise ImageReadError(f"unsupported SamplesPerPixel={spp}", path)
    if rows * cols * frames * spp > max_voxels:
        raise ImageReadError(
            f"absurd image size {rows}x{cols}x{frames}x{spp} samples (limit {max_voxels}); refusing to decode", path
        )
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in _BITS_ALLOWED:
        raise DicomDecodeError(f"unsupported BitsAllocated={bits}", path)
    _check_geometry(ds, path)


def _decode_error(e: BaseException, ds: Any, path: str | PathLike) -> DicomDecodeError:
    uid = _transfer_syntax(ds) if ds is not None else ""
    hint = _PLUGIN_HINTS.get(uid)
    name = _uid_name(uid) if uid else "unknown"
    msg = f"cannot decode pixel data (transfer syntax {name}, {uid}): {_short(e)}"
    if hint:
        msg += f"; install {hint} to decode it"
    return DicomDecodeError(msg, path)


def _header_value(ds: Any, keyword: str) -> float | None:
    """First numeric value of a (possibly multi-valued) header element, or None."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _tag_floats(ds: Any, keyword: str, n: int, path: str | PathLike, where: str = "") -> tuple[float, ...] | None:
    """A geometry element as exactly ``n`` finite floats, or None when it is absent or empty.

    Args:
        ds: a pydicom dataset.
        keyword: the element, e.g. ``"ImageOrientationPatient"`` (6 values) or ``"PixelSpacing"`` (2).
        n: number of values the element must hold.
        path: the file or folder, for messages.
        where: prefix naming the slice inside a folder, for messages.

    Raises:
        VolumeError: the element holds other than ``n`` values, or non-numeric or non-finite ones.
    """
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        multi = isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
        values = tuple(float(v) for v in (value if multi else [value]))
    except (TypeError, ValueError, OverflowError) as e:
        raise VolumeError(f"{where}malformed {keyword}: values are not numbers", path) from e
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise VolumeError(f"{where}malformed {keyword}: expected {n} finite numbers, got {len(values)}", path)
    return values


def _check_geometry(ds: Any, path: str | PathLike, where: str = "") -> dict[str, tuple[float, ...] | None]:
    """ImageOrientationPatient, ImagePositionPatient and PixelSpacing parsed by :func:`_tag_floats` (None: absent)."""
    return {k: _tag_floats(ds, k, n, path, where) for k, n in _GEOMETRY_TAGS.items()}


def _frame_rescale(ds: Any, frames: int, path: str | PathLike) -> list[tuple[float, float]] | None:
    """Per-frame ``(slope, intercept)`` of an enhanced (multi-frame) file, from its functional groups.

    None when the top-level RescaleSlope/RescaleIntercept exist (the reader applies them) or no functional group
    holds a PixelValueTransformationSequence. A per-frame group overrides the shared one.

    Raises:
        DicomDecodeError: a non-numeric or non-finite slope/intercept, or a per-frame sequence of the wrong length.
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
        raise DicomDecodeError(
            f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {frames} frames", path)
    out = []
    for f in range(frames):
        item = (per_frame[f] if per_frame else None) or shared
        if item is None:
            out.append((1.0, 0.0))
            continue
        pair = []
        for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
            try:
                raw = item.get(keyword)
                value = default if raw is None or raw == "" else _header_value(item, keyword)
            except (TypeError, ValueError):
                value = None
            if value is None:
                raise DicomDecodeError(f"invalid {keyword} in the functional groups of frame {f + 1}", path)
            pair.append(value)
        out.append((pair[0], pair[1]))
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
        raise DicomDecodeError(f"cannot apply the PALETTE COLOR lookup table ({type(e).__name__}: {_short(e)})",
                               path) from e
    scale = 255.0 / 65535.0 if rgb.dtype.itemsize > 1 else 1.0  # 16-bit LUT entries -> 8-bit display range
    out = torch.as_tensor(np.moveaxis(rgb, -1, 0).astype(np.float32) * scale)
    return MetaTensor(out, meta=dict(img.meta))


def _dicom_meta(ds: Any, source: str) -> dict[str, Any]:
    """The non-identifying fields of a DICOM header that the transforms use."""
    return {
        "modality": str(ds.get("Modality", "OT") or "OT").upper(),
        "photometric": str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper(),
        "window_center": _header_value(ds, "WindowCenter"),
        "window_width": _header_value(ds, "WindowWidth"),
        "source": source,
    }


@dataclass
class DicomSeriesInfo:
    """What a header scan of a DICOM series folder found.

    Attributes:
        files: slice files sorted by position along the slice normal (ascending).
        positions: position of each sorted slice along the normal (mm).
        orientation: ImageOrientationPatient (6 values, shared by all slices).
        spacing: (row spacing, column spacing, slice spacing) in mm.
        shape: (Rows, Columns) shared by all slices.
        meta: non-identifying fields of the first slice (modality, photometric, window, source).
        instance_order_matches: whether sorting by InstanceNumber gives the same order (or its reverse).
    """

    files: list[str]
    positions: list[float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float, float]
    shape: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)
    instance_order_matches: bool = True

    @property
    def is_standard_axial(self) -> bool:
        """True when slices are stored as axial images in display orientation (IOP close to 1,0,0,0,1,0)."""
        return bool(np.allclose(self.orientation, (1, 0, 0, 0, 1, 0), atol=1e-3))


def scan_dicom_series(
    folder: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS, spacing_rtol: float = 0.1
) -> DicomSeriesInfo:
    """Read the headers of a DICOM series folder and validate its geometry.

    Args:
        folder: a folder holding the slices of one series (non-DICOM files are ignored).
        max_voxels: refuse series with more voxels than this.
        spacing_rtol: allowed relative deviation of a slice gap from the median gap.

    Returns:
        a :class:`DicomSeriesInfo` with slices sorted by position.

    Raises:
        ImageReadError: no DICOM files, absurd size.
        DicomDecodeError: an unreadable slice header.
        VolumeError: several series, mixed size/orientation/pixel spacing, duplicate or unevenly spaced positions,
            malformed ImageOrientationPatient/ImagePositionPatient/PixelSpacing.
    """
    paths = sorted(str(f) for f in Path(folder).iterdir() if f.is_file() and _is_dicom_file(f))
    if not paths:
        raise ImageReadError("folder holds no DICOM files (expected one DICOM series)", folder)
    headers = [read_dicom_header(p, stop_before_pixels=True) for p in paths]
    first = headers[0]
    uids = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(uids) > 1:
        raise VolumeError(f"folder mixes {len(uids)} DICOM series; put one series per folder", folder)
    shapes = {(int(h.get("Rows", 0) or 0), int(h.get("Columns", 0) or 0)) for h in headers}
    if len(shapes) > 1:
        raise VolumeError(f"series has slices of different sizes {sorted(shapes)} (mixed geometry)", folder)
    rows, cols = shapes.pop()
    if rows <= 0 or cols <= 0:
        raise ImageReadError(f"zero-size slices: Rows={rows}, Columns={cols}", folder)
    if rows * cols * len(paths) > max_voxels:
        raise ImageReadError(f"absurd series size {rows}x{cols}x{len(paths)} (limit {max_voxels})", folder)
    geometry = [_check_geometry(h, folder, f"slice {_name(p)}: ") for h, p in zip(headers, paths)]
    if len(paths) == 1:
        iop = geometry[0]["ImageOrientationPatient"] or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        ps = geometry[0]["PixelSpacing"] or (1.0, 1.0)
        thick = _header_value(first, "SliceThickness") or 1.0
        return DicomSeriesInfo(
            paths, [0.0], iop, (ps[0], ps[1], thick), (rows, cols), _dicom_meta(first, _name(folder))
        )
    for g, p in zip(geometry, paths):
        if g["ImageOrientationPatient"] is None or g["ImagePositionPatient"] is None:
            raise VolumeError(f"slice {_name(p)} lacks ImageOrientationPatient/ImagePositionPatient", folder)
    iops = np.array([g["ImageOrientationPatient"] for g in geometry])
    if not np.allclose(iops, iops[0], atol=1e-4):
        raise VolumeError("series has slices with different orientations (mixed geometry)", folder)
    spacings = np.array([g["PixelSpacing"] or (1.0, 1.0) for g in geometry])
    if not np.allclose(spacings, spacings[0], rtol=1e-4):
        raise VolumeError("series has slices with different pixel spacings (mixed geometry)", folder)
    normal = np.cross(iops[0][:3], iops[0][3:])
    ipps = np.array([g["ImagePositionPatient"] for g in geometry])
    pos = ipps @ normal
    order = np.argsort(pos, kind="stable")
    pos_sorted = pos[order]
    gaps = np.diff(pos_sorted)
    if np.any(gaps < 1e-3):
        raise VolumeError("series has two or more slices at the same position (duplicate or mixed series)", folder)
    median = float(np.median(gaps))
    if np.any(np.abs(gaps - median) > spacing_rtol * median):
        raise VolumeError(
            f"series has uneven slice spacing (gaps {gaps.min():.3g}-{gaps.max():.3g} mm): missing slices?", folder
        )
    inst = [h.get("InstanceNumber") for h in headers]
    matches = False
    if all(i is not None for i in inst) and len({int(i) for i in inst}) == len(inst):
        by_inst = np.argsort([int(i) for i in inst], kind="stable")
        matches = bool(np.array_equal(by_inst, order) or np.array_equal(by_inst, order[::-1]))
    return DicomSeriesInfo(
        files=[paths[i] for i in order],
        positions=[float(v) for v in pos_sorted],
        orientation=tuple(float(v) for v in iops[0]),
        spacing=(float(spacings[0][0]), float(spacings[0][1]), median),
        shape=(rows, cols),
        meta=_dicom_meta(first, _name(folder)),
        instance_order_matches=matches,
    )


def _pydicom_reader() -> PydicomReader:
    return PydicomReader(affine_lps_to_ras=True, swap_ij=True, prune_metadata=True)


@functools.lru_cache(maxsize=None)
def _loader(kind: str) -> LoadImage:
    """One cached ``LoadImage`` per reader kind (building one instantiates every MONAI reader)."""

    def convert(im: Any) -> Any:
        return im if im.mode in ("L", "RGB", "I;16", "I", "F") else im.convert("RGB")

    readers = {
        "dicom": _pydicom_reader,
        "series": lambda: PydicomReader(affine_lps_to_ras=True, swap_ij=True, prune_metadata=True, fname_regex=None),
        "nifti": NibabelReader,
        "photo": lambda: PILReader(reverse_indexing=False, converter=convert),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LoadImage(reader=readers[kind](), image_only=True, ensure_channel_first=True)


def _run_loader(loader: LoadImage, path: str | PathLike, ds: Any = None) -> MetaTensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return loader(path)
        except Exception as e:
            if ds is not None or Path(path).is_dir():
                raise _decode_error(e, ds, path) from e
            raise ImageReadError(f"cannot read image ({type(e).__name__}: {_short(e)})", path) from e


def _clean_meta(img: MetaTensor, extra: dict[str, Any]) -> MetaTensor:
    """Keep only geometry and our own non-identifying keys in ``img.meta``."""
    keep = {k: img.meta[k] for k in ("affine", "original_affine", "spatial_shape", "space") if k in img.meta}
    img.meta = {**keep, **extra}
    return img


def load_dicom_slice(path: str | PathLike, max_voxels: int = DEFAULT_MAX_VOXELS) -> MetaTensor:
    """Load one single-frame DICOM slice as a ``(C, H, W)`` display-oriented, rescaled MetaTensor.

    Args:
        path: a DICOM file.
        max_voxels: size limit.
    """
    ds = read_dicom_header(path)
    check_dicom_pixels(ds, path, max_voxels)
    img = _run_loader(_loader("dicom"), path, ds)
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1 and img.shape[0] == 1:
        img = img[0].movedim(-1, 0)[:3]
    if img.ndim != 3:
        raise VolumeError(f"DICOM slice decoded to unexpected shape {tuple(img.shape)}", path)
    meta = _dicom_meta(ds, _name(path))
    img = _apply_frame_rescale(img, ds, 1, path)
    if meta["photometric"] == "PALETTE COLOR":
        img, meta["photometric"] = _apply_palette(img, ds, path), "RGB"
    return _clean_meta(img.transpose(1, 2), {**meta, "layout": "image"})


def _check_values(img: torch.Tensor, path: str | PathLike) -> None:
    if img.numel() == 0:
        raise VolumeError(f"image is empty (shape {tuple(img.shape)})", path)
    if img.is_floating_point() and not bool(torch.isfinite(img).all()):
        bad = int((~torch.isfinite(img)).sum())
        raise VolumeError(f"image holds {bad} NaN/inf values", path)


def _guess_nifti_modality(img: torch.Tensor) -> str:
    """``"CT"`` when values look like Hounsfield units (5th percentile <= -700, max <= 4000: air), else ``"MR"``."""
    flat = img.reshape(-1)
    sample = flat[:: max(1, flat.numel() // 1_000_000)].double().numpy()
    return "CT" if float(np.percentile(sample, 5)) <= -700 and float(flat.max()) <= 4000 else "MR"


class LoadMedicalImage(Transform):
    """Load any supported radiology input or photo through MONAI readers into a validated MetaTensor.

    Args:
        max_voxels: refuse inputs larger than this (zero-size inputs are always refused).
        modality: override the modality (NIfTI and photos have none); ``None`` keeps the file's or a guess
            (NIfTI: ``"CT"`` when the values look like Hounsfield units, see ``_guess_nifti_modality``, else ``"MR"``).

    Returns (from ``__call__``):
        a channel-first MetaTensor; see the module docstring for layouts and ``meta`` keys.
    """

    def __init__(self, max_voxels: int = DEFAULT_MAX_VOXELS, modality: str | None = None) -> None:
        self.max_voxels = max_voxels
        self.modality = modality

    def __call__(self, path: str | PathLike, kind: InputKind | None = None) -> MetaTensor:  # type: ignore[override]
        """Load ``path``.

        Args:
            path: file or DICOM series folder.
            kind: skip detection when the caller already knows the kind.
        """
        kind = kind or detect_input_kind(path)
        if kind == "dicom":
            img = self._load_dicom(path)
        elif kind == "dicom_series":
            img = self._load_series(path)
        elif kind == "nifti":
            img = self._load_nifti(path)
        elif kind == "image":
            img = self._load_photo(path)
        else:
            raise ImageReadError("a whole-slide image must go through the pathology transforms", path)
        _check_values(img, path)
        if self.modality is not None:
            img.meta["modality"] = self.modality.upper()
        return img

    def _load_dicom(self, path: str | PathLike) -> MetaTensor:
        ds = read_dicom_header(path)
        check_dicom_pixels(ds, path, self.max_voxels)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        meta = _dicom_meta(ds, _name(path))
        img = _run_loader(_loader("dicom"), path, ds)
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1 and img.shape[0] == 1:
            img = img[0].movedim(-1, 0)[:3]  # colour samples last -> channel first (RGBA: alpha dropped)
        if frames > 1:
            # PydicomReader swaps the first two axes of (F, R, C): (ch, R, F, C) -> (ch, C, R, F) = (ch, X, Y, F)
            if img.ndim != 4:
                raise VolumeError(f"multi-frame DICOM decoded to unexpected shape {tuple(img.shape)}", path)
            img, layout = img.permute(0, 3, 1, 2).contiguous(), "frames"
        else:
            if img.ndim != 3:
                raise VolumeError(f"DICOM image decoded to unexpected shape {tuple(img.shape)}", path)
            img, layout = img.transpose(1, 2).contiguous(), "image"
        img = _apply_frame_rescale(img, ds, frames, path)  # enhanced files: slope/intercept of each frame
        if meta["photometric"] == "PALETTE COLOR":
            img, meta["photometric"] = _apply_palette(img, ds, path), "RGB"
        return _clean_meta(img, {**meta, "layout": layout})

    def _load_series(self, folder: str | PathLike) -> MetaTensor:
        info = scan_dicom_series(folder, self.max_voxels)
        if len(info.files) == 1:
            img = self._load_dicom(info.files[0])
            img.meta["source"] = _name(folder)
            return img
        if not info.instance_order_matches:
            # PydicomReader stacks by InstanceNumber; refuse rather than build a scrambled volume
            raise VolumeError("InstanceNumber order disagrees with slice positions (or is missing)", folder)
        first = read_dicom_header(info.files[0])
        check_dicom_pixels(first, info.files[0], self.max_voxels)
        img = _run_loader(_loader("series"), folder, first)
        if img.ndim != 4 or img.shape[-1] != len(info.files):
            raise VolumeError(f"series decoded to unexpected shape {tuple(img.shape)}", folder)
        return _clean_meta(img, {**info.meta, "layout": "volume"})

    def _load_nifti(self, path: str | PathLike) -> MetaTensor:
        nib, _ = optional_import("nibabel")
        try:
            nii = nib.load(str(path))
            shape = tuple(int(s) for s in nii.shape)
            affine = np.asarray(nii.affine, dtype=np.float64)
        except Exception as e:
            raise ImageReadError(f"not a readable NIfTI file ({type(e).__name__}: {_short(e)})", path) from e
        if not np.isfinite(affine).all():
            raise VolumeError("NIfTI affine (sform/qform/pixdim) holds NaN/inf values", path)
        sv = np.linalg.svd(affine[:3, :3], compute_uv=False)
        if not sv[0] > 0 or sv[-1] <= 1e-8 * sv[0]:
            raise VolumeError("NIfTI affine (sform/qform/pixdim) is singular (zero voxel size or collapsed axes)", path)
        if len(shape) > 4 or (len(shape) == 4 and shape[3] != 1):
            raise VolumeError(f"unexpected {len(shape)}D data of shape {shape}; expected one 3D volume", path)
        if len(shape) < 2 or min(shape) <= 0:
            raise ImageReadError(f"zero-size or degenerate NIfTI shape {shape}", path)
        if int(np.prod(shape)) > self.max_voxels:
            raise ImageReadError(f"absurd NIfTI size {shape} (limit {self.max_voxels})", path)
        img = _run_loader(_loader("nifti"), path)
        if img.ndim == 5:
            img = img[..., 0]
        if img.ndim == 3:  # a 2D NIfTI: one axial slice
            img = img.unsqueeze(-1)
        img = img.float()
        _check_values(img, path)
        modality = _guess_nifti_modality(img)
        meta = {"modality": modality, "photometric": "MONOCHROME2", "window_center": None, "window_width": None}
        return _clean_meta(img, {**meta, "source": _name(path), "layout": "volume"})

    def _load_photo(self, path: str | PathLike) -> MetaTensor:
        img = _run_loader(_loader("photo"), path)
        bit_depth = 8 if img.meta.get("mode") in _PIL_8BIT_MODES else None  # mode after the reader's conversion
        if img.ndim != 3 or min(img.shape[1:]) <= 0:
            raise ImageReadError(f"unexpected image shape {tuple(img.shape)}", path)
        if img.numel() > self.max_voxels:
            raise ImageReadError(f"absurd image size {tuple(img.shape)} (limit {self.max_voxels})", path)
        channels = img.shape[0]
        meta = {"modality": "OT", "photometric": "RGB" if channels == 3 else "MONOCHROME2"}
        return _clean_meta(img, {**meta, "window_center": None, "window_width": None, "source": _name(path),
                                 "layout": "image", "bit_depth": bit_depth})


class LoadMedicalImaged(MapTransform):
    """Dictionary wrapper of :class:`LoadMedicalImage`: replaces each path under ``keys`` by the loaded image.

    Args:
        keys: keys holding paths.
        max_voxels: see :class:`LoadMedicalImage`.
        modality: see :class:`LoadMedicalImage`.
        allow_missing_keys: do not raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        modality: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(max_voxels, modality)

    def __call__(self, data: dict) -> dict:  # type: ignore[override]
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


LoadMedicalImageD = LoadMedicalImageDict = LoadMedicalImaged

