# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The fuzz seed corpus: small real-looking files written by pydicom, nibabel, PIL and tifffile, here, every run.

Each seed is a :class:`Seed` holding the bytes of one file, or of the slices of one DICOM series folder. The
contents are drawn from a fixed NumPy generator, so the corpus is the same on every run.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from _transforms_fixtures import PATIENT_ID, PATIENT_NAME, make_ct_dataset, save_dicom, write_ct_series

__all__ = ["Seed", "IDENTIFIERS", "build_seeds"]

#: Identifying strings the seeds hold in their headers: no message may ever show them.
IDENTIFIERS = (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID, "ACC123456", "19700101")


@dataclass(frozen=True)
class Seed:
    """One input of the corpus.

    Attributes:
        name: the file name, or the folder name of a series.
        kind: ``"dicom"``, ``"series"``, ``"nifti"``, ``"nifti_gz"``, ``"png"``, ``"jpeg"`` or ``"tiff"``.
        files: file name -> bytes (one entry, or the slices of a series).
    """

    name: str
    kind: str
    files: tuple[tuple[str, bytes], ...]

    def write(self, folder: Path, files: dict[str, bytes] | None = None) -> Path:
        """Write the seed (or mutated ``files``) under ``folder``; returns the path to load."""
        content = dict(self.files) if files is None else files
        if self.kind == "series":
            target = folder / self.name
            target.mkdir(parents=True, exist_ok=True)
            for name, data in content.items():
                (target / name).write_bytes(data)
            return target
        (name, data), = content.items()
        (folder / name).write_bytes(data)
        return folder / name


def _ct_pixels(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    body = ((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (min(shape) / 2.5) ** 2) * 1040
    return (body + rng.normal(0, 20, shape)).astype(np.int16)


def _dicom_bytes(ds, tmp: Path, name: str) -> bytes:
    return Path(save_dicom(ds, tmp / name)).read_bytes()


def _dicom_seeds(rng: np.random.Generator, tmp: Path) -> list[Seed]:
    seeds = [Seed("ct.dcm", "dicom", (("ct.dcm", _dicom_bytes(make_ct_dataset(_ct_pixels(rng, (32, 24))), tmp,
                                                              "ct.dcm")),))]
    frames = np.stack([_ct_pixels(rng, (20, 20)) for _ in range(3)])
    ds = make_ct_dataset(frames[0], Modality="MR")
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    del ds.ImagePositionPatient
    seeds.append(Seed("frames.dcm", "dicom", (("frames.dcm", _dicom_bytes(ds, tmp, "frames.dcm")),)))
    rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    ds = make_ct_dataset(np.zeros((24, 32), np.int16), Modality="US")
    for key in ("RescaleIntercept", "RescaleSlope", "ImagePositionPatient", "ImageOrientationPatient"):
        delattr(ds, key)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    seeds.append(Seed("rgb.dcm", "dicom", (("rgb.dcm", _dicom_bytes(ds, tmp, "rgb.dcm")),)))
    ds = make_ct_dataset(_ct_pixels(rng, (24, 24)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    seeds.append(Seed("deflated.dcm", "dicom", (("deflated.dcm", _dicom_bytes(ds, tmp, "deflated.dcm")),)))
    ds = make_ct_dataset(_ct_pixels(rng, (24, 24)))
    ds.compress(RLELossless)
    seeds.append(Seed("rle.dcm", "dicom", (("rle.dcm", _dicom_bytes(ds, tmp, "rle.dcm")),)))
    vol = np.stack([_ct_pixels(rng, (16, 16)) - 1024 for _ in range(4)], axis=-1).astype(np.float32)
    files = write_ct_series(tmp / "series", vol)
    seeds.append(Seed("series", "series", tuple((Path(f).name, Path(f).read_bytes()) for f in sorted(files))))
    return seeds


def _nifti_seeds(rng: np.random.Generator, tmp: Path) -> list[Seed]:
    vol = np.stack([_ct_pixels(rng, (16, 12)) - 1024 for _ in range(6)], axis=-1)
    img = nib.Nifti1Image(vol.astype(np.float32), np.diag([0.8, 0.8, 2.0, 1.0]))
    nib.save(img, str(tmp / "ct.nii.gz"))
    scaled = nib.Nifti1Image((vol + 1024).astype(np.int16), np.diag([1.0, 1.0, 1.5, 1.0]))
    scaled.header.set_slope_inter(1.0, -1024.0)
    nib.save(scaled, str(tmp / "mr.nii"))
    return [Seed("ct.nii.gz", "nifti_gz", (("ct.nii.gz", (tmp / "ct.nii.gz").read_bytes()),)),
            Seed("mr.nii", "nifti", (("mr.nii", (tmp / "mr.nii").read_bytes()),))]


def _pil_bytes(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo_seeds(rng: np.random.Generator) -> list[Seed]:
    grey = rng.integers(0, 255, (30, 40), dtype=np.uint8)
    rgb = rng.integers(0, 255, (36, 28, 3), dtype=np.uint8)
    deep = rng.integers(0, 65535, (20, 24), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, rng.integers(0, 255, (24, 20), dtype=np.uint8))
    return [
        Seed("grey.png", "png", (("grey.png", _pil_bytes(grey, "PNG")),)),
        Seed("rgb.png", "png", (("rgb.png", _pil_bytes(rgb, "PNG")),)),
        Seed("deep.png", "png", (("deep.png", _pil_bytes(deep, "PNG")),)),
        Seed("photo.jpg", "jpeg", (("photo.jpg", _pil_bytes(rgb, "JPEG", quality=90)),)),
        Seed("scan.tif", "tiff", (("scan.tif", buf.getvalue()),)),
    ]


def build_seeds(seed: int = 0) -> list[Seed]:
    """The whole corpus, the same for the same ``seed``.

    Args:
        seed: seeds the generator of the pixel contents.
    """
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as tmp:
        return [*_dicom_seeds(rng, Path(tmp)), *_nifti_seeds(rng, Path(tmp)), *_photo_seeds(rng)]
