# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Generated test inputs for the transforms tests: small DICOM slices/series and pyramidal TIFF slides."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["PATIENT_NAME", "PATIENT_ID", "make_ct_dataset", "save_dicom", "write_ct_series", "write_slide", "shipped_file"]

PATIENT_NAME = "Doe^Jane^Secret"
PATIENT_ID = "PID-998877"


def shipped_file(name: str) -> str:
    """Path of a file shipped with pydicom's test data."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path is not None, name
    return str(path)


def make_ct_dataset(
    pixels: np.ndarray,
    position: Sequence[float] = (0.0, 0.0, 0.0),
    instance: int = 1,
    series_uid: str | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    spacing: Sequence[float] = (0.5, 0.5),
    intercept: float = -1024.0,
    slope: float = 1.0,
    **extra: Any,
) -> Dataset:
    """A CT slice dataset holding ``pixels`` (int16 stored values) and a fake patient identity."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC123456"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 1.0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def save_dicom(ds: Dataset, path: str | os.PathLike) -> str:
    """Write a dataset as a DICOM file with preamble (pydicom 3 and 2.4)."""
    try:
        ds.save_as(str(path), enforce_file_format=True)
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
    return str(path)


def write_ct_series(
    folder: str | os.PathLike,
    volume_hu: np.ndarray,
    z0: float = 0.0,
    dz: float = 2.0,
    instance_order: str = "ascending",
    spacing: Sequence[float] = (0.5, 0.5),
) -> list[str]:
    """Write ``volume_hu`` (rows, cols, slices; slice k at z0 + k*dz) as a CT series; returns the files.

    Args:
        folder: output folder (created).
        volume_hu: Hounsfield units.
        z0: position of slice 0.
        dz: slice gap.
        instance_order: ``"ascending"`` (InstanceNumber follows z) or ``"descending"``.
        spacing: PixelSpacing.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    n = volume_hu.shape[2]
    files = []
    for k in range(n):
        inst = k + 1 if instance_order == "ascending" else n - k
        ds = make_ct_dataset((volume_hu[:, :, k] + 1024).astype(np.int16), (-10.0, -20.0, z0 + k * dz), inst, uid,
                             spacing=spacing)
        files.append(save_dicom(ds, folder / f"slice_{(k * 7919) % 1000:03d}_{k}.dcm"))  # names not in z order
    return files


def write_slide(path: str | os.PathLike, size: int = 1024, levels: int = 3, tissue: bool = True,
                mpp0: float = 0.25) -> np.ndarray:
    """Write a pyramidal RGB TIFF (reduced levels as top-level pages with ``subfiletype=1``).

    The slide is white background with a pink/purple "tissue" rectangle covering rows [size/4, 3size/4) and
    columns [size/2, size) of level 0 when ``tissue`` is True. Returns level 0.
    """
    rng = np.random.default_rng(0)
    base = np.full((size, size, 3), 242, np.uint8)
    if tissue:
        t = rng.integers(0, 40, (size // 2, size // 2, 1))
        base[size // 4 : 3 * size // 4, size // 2 :] = np.concatenate(
            [170 + t, 80 + t, 150 + t], axis=-1).astype(np.uint8)
    res = 1e4 / mpp0  # pixels per cm
    with tifffile.TiffWriter(str(path)) as tif:
        for lvl in range(levels):
            img = base[:: 2 ** lvl, :: 2 ** lvl]
            tif.write(img, photometric="rgb", tile=(128, 128) if img.shape[0] >= 128 else None,
                      subfiletype=1 if lvl else 0, resolution=(res / 2 ** lvl, res / 2 ** lvl),
                      resolutionunit="CENTIMETER")
    return base


def read_pydicom(path: str) -> Dataset:
    """Plain pydicom read (for reference values)."""
    return pydicom.dcmread(path)
