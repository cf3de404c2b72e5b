# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Write phantoms as real DICOM (pydicom), NIfTI (nibabel) and PNG files.

DICOM: CT Image Storage or MR Image Storage, Explicit VR Little Endian, unsigned 16-bit pixels with
RescaleSlope 1 and RescaleIntercept -1024 (CT, Hounsfield units) or 0 (MR); identity orientation, one
file per slice with ImagePositionPatient stepping along z (:func:`lps_affine`: index ``(x, y, z)`` = (column,
row, slice) -> LPS mm; slice ``k`` lies at ``z = (k - (D - 1) / 2) * spacing_z``, so higher slices are
more superior); deterministic UIDs derived from the case id and seed. Patient fields hold only the
synthetic case id; no dates, no real data. ``instance_order="descending"`` numbers (and names) the slices
from the most superior one down, the geometry unchanged, as many scanners do. The files are conformant CT / MR
Image IODs (``dciodvfy`` reports no error): the Type 2 attributes with nothing true to say (PatientBirthDate,
StudyDate, StudyTime, ReferringPhysicianName, AccessionNumber, PositionReferenceIndicator; for MR ScanOptions,
MRAcquisitionType, RepetitionTime, EchoTime, EchoTrainLength) are present and empty, as the standard allows;
PatientPosition is ``HFS``, the position the identity orientation describes; AcquisitionNumber is 1.
NIfTI: int16 intensities and a uint8 ``*_seg.nii.gz`` label map, with the RAS affine that matches the
DICOM LPS geometry (x and y flipped); ``flip_z=True`` stores the slices in reverse order with the affine
compensating (the same patient geometry).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from .generator import PhantomCase

__all__ = [
    "INSTANCE_ORDERS", "lps_affine", "window_to_uint8", "nifti_affine", "write_dicom", "write_nifti", "write_png",
]

_CT_INTERCEPT = -1024.0
INSTANCE_ORDERS = ("ascending", "descending")


def window_to_uint8(case: PhantomCase) -> np.ndarray:
    """Display window of a phantom as uint8 (CT: level 40 / width 400; MR: 0-1200)."""
    lo, hi = (-160.0, 240.0) if case.modality == "CT" else (0.0, 1200.0)
    return (np.clip((case.image - lo) / (hi - lo), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _spacing_and_origin(case: PhantomCase) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(sz, sy, sx)`` voxel spacing and the LPS position of the first voxel (the volume is centred on 0)."""
    sz, sy, sx = case.spacing if case.ndim == 3 else (1.0, *case.spacing)
    nz, ny, nx = (1, *case.image.shape) if case.ndim == 2 else case.image.shape
    return (sz, sy, sx), (-(nx - 1) * sx / 2.0, -(ny - 1) * sy / 2.0, -(nz - 1) * sz / 2.0)


def lps_affine(case: PhantomCase) -> np.ndarray:
    """LPS affine of the DICOM geometry :func:`write_dicom` writes: index ``(x, y, z, 1)`` -> mm.

    ``x`` is the column (last array axis), ``y`` the row, ``z`` the slice (first axis of a volume; 0 for an
    image). Identity orientation: +x is the patient's left, +y posterior, +z superior.

    Args:
        case: the phantom.
    """
    (sz, sy, sx), origin = _spacing_and_origin(case)
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = origin
    return affine


def nifti_affine(case: PhantomCase) -> np.ndarray:
    """RAS affine for NIfTI arrays stored as (x, y, z), matching the DICOM geometry of :func:`write_dicom`."""
    (sz, sy, sx), (ox, oy, oz) = _spacing_and_origin(case)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = (-ox, -oy, oz)  # LPS -> RAS flips x and y
    return affine


def _base_dataset(case: PhantomCase, uid_seed: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage if case.modality == "CT" else MRImageStorage
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = case.case_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[uid_seed, "frame"])
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Modality = case.modality
    ds.PatientPosition = "HFS"  # Type 2C (no Patient Orientation Code Sequence): head first supine, +z superior
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    ds.Manufacturer = "monai-llava-med synthetic phantom"
    ds.StudyDescription = "Synthetic phantom"
    ds.SeriesDescription = f"Synthetic {case.modality} phantom"
    ds.BodyPartExamined = "ABDOMEN"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1.0
    ds.RescaleIntercept = _CT_INTERCEPT if case.modality == "CT" else 0.0
    if case.modality == "CT":
        ds.RescaleType = "HU"
        ds.KVP = 120.0
        ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    else:
        ds.MagneticFieldStrength = 1.5
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        # Type 2 (RepetitionTime 2C) acquisition parameters a phantom has none of: present and empty
        for keyword in ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength"):
            setattr(ds, keyword, "")
        ds.WindowCenter, ds.WindowWidth = 600.0, 1200.0
    return ds


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def write_dicom(
    case: PhantomCase, out: str | os.PathLike, *, seed: int = 0, instance_order: str = "ascending"
) -> list[Path]:
    """Write a phantom as DICOM: one file for an image, a folder of slice files for a volume.

    Args:
        case: the phantom.
        out: file path (``.dcm``) for a 2-D case, folder for a 3-D case.
        seed: mixed into the UIDs (same case + seed -> same UIDs, byte-identical files).
        instance_order: ``"ascending"`` (InstanceNumber 1 and ``slice_0000.dcm`` = the most inferior slice) or
            ``"descending"`` (numbered and named from the most superior slice); positions are the same.

    Returns:
        The written files, in slice order (inferior -> superior).
    """
    if instance_order not in INSTANCE_ORDERS:
        raise ValueError(f"instance_order must be one of {INSTANCE_ORDERS}, got {instance_order!r}")
    out = Path(out)
    vol = case.image[None] if case.ndim == 2 else case.image
    (sz, sy, sx), origin = _spacing_and_origin(case)
    uid_seed = f"{case.case_id}-{seed}"
    intercept = _CT_INTERCEPT if case.modality == "CT" else 0.0
    stored = vol - intercept
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(f"{case.case_id}: intensities do not fit unsigned 16-bit storage")
    stored = stored.astype("<u2")
    if case.ndim == 3:
        out.mkdir(parents=True, exist_ok=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(vol.shape[0]):
        ds = _base_dataset(case, uid_seed)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "instance", str(k)])
        number = k if instance_order == "ascending" else vol.shape[0] - 1 - k
        ds.InstanceNumber = number + 1
        # DS values are at most 16 characters: let pydicom format them (a raw float repr can be longer)
        ds.ImagePositionPatient = [_ds(origin[0]), _ds(origin[1]), _ds(origin[2] + k * sz)]
        ds.SliceLocation = _ds(origin[2] + k * sz)
        ds.SliceThickness = _ds(sz)
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = out / f"slice_{number:04d}.dcm" if case.ndim == 3 else out
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_nifti(
    case: PhantomCase,
    out: str | os.PathLike,
    label_out: str | os.PathLike | None = None,
    *,
    flip_z: bool = False,
) -> Path:
    """Write a phantom (and optionally its label map) as NIfTI.

    Args:
        case: the phantom.
        out: ``.nii`` or ``.nii.gz`` path of the intensities (int16).
        label_out: path of the label map (uint8), skipped when None.
        flip_z: store the slices superior -> inferior, the affine's z column negated and its origin moved to
            the last slice, so every voxel keeps its patient position.
    """
    vol = case.image[None] if case.ndim == 2 else case.image
    lab = case.label[None] if case.ndim == 2 else case.label
    affine = nifti_affine(case)
    if flip_z:
        vol, lab = vol[::-1], lab[::-1]
        reverse = np.eye(4)
        reverse[2, 2], reverse[2, 3] = -1.0, vol.shape[0] - 1  # new slice k holds old slice D - 1 - k
        affine = affine @ reverse
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)).astype(np.int16), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, out)
    if label_out is not None:
        seg = nib.Nifti1Image(np.ascontiguousarray(lab.transpose(2, 1, 0)).astype(np.uint8), affine)
        seg.header.set_xyzt_units("mm")
        nib.save(seg, Path(label_out))
    return out


def write_png(case: PhantomCase, out: str | os.PathLike) -> Path:
    """Write a 2-D phantom as an 8-bit greyscale PNG in its display window.

    Args:
        case: a 2-D phantom.
        out: the PNG path.
    """
    if case.ndim != 2:
        raise ValueError(f"{case.case_id}: PNG export is for 2-D phantoms")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(window_to_uint8(case), mode="L").save(out)
    return out
