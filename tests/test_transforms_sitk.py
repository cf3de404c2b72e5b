# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""NRRD and MetaImage volumes: same views as the DICOM series of the same voxels, typed errors for bad files.

The NRRD/MetaImage files are written by SimpleITK's own writer from the phantom's arrays, with the geometry read
back from the DICOM series by pydicom, so the reader under test never produces its own fixtures.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import LoadImage

from monai_llava_med.data.phantom import case_rng, generate_phantom, write_dicom, write_nifti
from monai_llava_med.errors import ImageReadError, LlavaMedInputError, VolumeError
from monai_llava_med.transforms import MedicalImageToPixels
from monai_llava_med.transforms.io import LoadMedicalImage, detect_input_kind
from monai_llava_med.transforms.sitk_reader import SimpleITKImageReader

SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def _case(modality: str, seed: int = 5):
    case = generate_phantom(case_rng(seed, "test", 0), size=32, ndim=3, depth=12, modality=modality,
                            num_lesions=2, case_id=f"sitk-{modality}")
    return dataclasses.replace(case, image=np.round(case.image).astype(np.float32))  # whole values: exact in DICOM


def _dicom_geometry(series_dir):
    """(spacing x, y, z), LPS origin of the first slice, read from the DICOM files."""
    first, second = (pydicom.dcmread(p) for p in sorted(series_dir.iterdir())[:2])
    row, col = (float(v) for v in first.PixelSpacing)
    dz = float(second.ImagePositionPatient[2]) - float(first.ImagePositionPatient[2])
    return (col, row, dz), tuple(float(v) for v in first.ImagePositionPatient)


def _write_sitk(case, series_dir, path, flip: bool = False, compress: bool = False):
    """Write ``case.image`` ((z, y, x) array) with the series' geometry; ``flip``: x and z stored reversed."""
    spacing, origin = _dicom_geometry(series_dir)
    vol = case.image.astype(np.int16)
    direction = np.eye(3)
    if flip:  # the same voxels at the same places, stored from the other end along x and z
        nz, _, nx = vol.shape
        vol = np.ascontiguousarray(vol[::-1, :, ::-1])
        origin = (origin[0] + (nx - 1) * spacing[0], origin[1], origin[2] + (nz - 1) * spacing[2])
        direction = np.diag([-1.0, 1.0, -1.0])
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction.flatten().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("sitk")
    out = {}
    for modality in ("CT", "MR"):
        case = _case(modality)
        series = root / f"{modality}_series"
        write_dicom(case, series)
        files = {s: _write_sitk(case, series, root / f"{modality}{s[1:]}" / f"vol{s}") for s in SUFFIXES}
        files["flip"] = _write_sitk(case, series, root / f"{modality}flip" / "vol.mha", flip=True)
        files["gz"] = _write_sitk(case, series, root / f"{modality}gz" / "vol.nrrd", compress=True)
        out[modality] = (case, series, files)
    return root, out


def _pipeline(modality):
    # the CT series carries its own window (40/400); NRRD/MetaImage have none: both get the same explicit one
    window = (40.0, 400.0) if modality == "CT" else "auto"
    return MedicalImageToPixels(image_size=32, max_views=3, window=window)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_views_equal_those_of_the_dicom_series(phantoms, modality):
    _, by_modality = phantoms
    _, series, files = by_modality[modality]
    pre = _pipeline(modality)
    ref = pre(series)
    assert ref["pixel_values"].shape == (3, 3, 32, 32)
    for name, path in files.items():
        out = pre(path)
        assert out["views"] == ref["views"], name
        assert out["modality"] == modality and out["source"] == path.name
        assert torch.allclose(out["pixel_values"], ref["pixel_values"], atol=1e-5), name
    # the lesions make the views differ from slice to slice: equal views are not equal by accident
    assert not torch.allclose(ref["pixel_values"][0], ref["pixel_values"][1])


def test_monai_loader_interface_matches_nibabel_geometry(phantoms, tmp_path):
    _, by_modality = phantoms
    case, _, files = by_modality["CT"]
    nii = write_nifti(case, tmp_path / "vol.nii.gz")
    ref = LoadImage(reader="NibabelReader", image_only=True)(str(nii))
    reader = SimpleITKImageReader()
    assert reader.verify_suffix(files[".nhdr"]) and not reader.verify_suffix(nii)
    for name in (".nrrd", ".mhd"):
        img = LoadImage(reader=reader, image_only=True)(str(files[name]))
        assert img.shape == ref.shape and img.meta["space"] == "RAS"
        assert np.allclose(img.affine.numpy(), ref.affine.numpy(), atol=1e-4)
        assert np.allclose(img.meta["original_affine"], ref.meta["original_affine"], atol=1e-4)
        assert list(img.meta["spatial_shape"]) == list(ref.meta["spatial_shape"])
        assert np.isnan(img.meta["original_channel_dim"])
        assert np.array_equal(np.asarray(img), np.asarray(ref))
    assert [detect_input_kind(files[s]) for s in SUFFIXES] == ["nrrd", "nrrd", "metaimage", "metaimage"]


def _small(tmp_path, name, **kw):
    img = sitk.GetImageFromArray(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8))
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), **kw)
    return path


def _truncated(tmp_path):
    path = _small(tmp_path, "cut.nrrd")
    path.write_bytes(path.read_bytes()[:-50])
    return path, ImageReadError, "hold less than the header claims"


def _truncated_gzip(tmp_path):
    path = _small(tmp_path, "cutgz.nrrd", useCompression=True)
    path.write_bytes(path.read_bytes()[:-30])
    return path, ImageReadError, "cannot read the NRRD"


def _truncated_detached(tmp_path):
    path = _small(tmp_path, "cut.mhd")
    raw = tmp_path / "cut.raw"
    raw.write_bytes(raw.read_bytes()[:-10])
    return path, ImageReadError, "hold less than the header claims"


def _truncated_zlib(tmp_path):
    path = _small(tmp_path, "cutz.mha", useCompression=True)
    path.write_bytes(path.read_bytes()[:-30])
    return path, ImageReadError, "cannot read the MetaImage"


def _missing_data(tmp_path):
    path = _small(tmp_path, "gone.nhdr")
    (tmp_path / "gone.raw").unlink()
    return path, ImageReadError, "missing"


def _outside_folder(tmp_path):
    path = _small(tmp_path, "data.nhdr")
    (tmp_path / "sub").mkdir()
    head = tmp_path / "sub" / "escape.nhdr"
    head.write_text(path.read_text().replace("data file: data.raw", "data file: ../data.raw"))
    return head, ImageReadError, "outside the header's folder"


def _outside_folder_mhd(tmp_path):
    path = _small(tmp_path, "data.mhd")
    (tmp_path / "sub").mkdir()
    head = tmp_path / "sub" / "escape.mhd"
    head.write_text(path.read_text().replace("ElementDataFile = data.raw", f"ElementDataFile = {tmp_path}/data.raw"))
    return head, ImageReadError, "outside the header's folder"


def _four_d(tmp_path):
    vol = sitk.GetImageFromArray(np.ones((3, 4, 5), np.int16))
    sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(tmp_path / "t.nrrd"))
    return tmp_path / "t.nrrd", VolumeError, "4D"


def _vector(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5, 3), np.float32), isVector=True), str(tmp_path / "v.mha"))
    return tmp_path / "v.mha", VolumeError, "vector"


def _complex(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.complex64)), str(tmp_path / "c.nrrd"))
    return tmp_path / "c.nrrd", VolumeError, "complex"


def _garbage(tmp_path):
    (tmp_path / "noise.nrrd").write_bytes(np.random.default_rng(0).bytes(500))
    return tmp_path / "noise.nrrd", ImageReadError, "not a readable NRRD"


def _png_named_nrrd(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "p.png")
    shutil.copy(tmp_path / "p.png", tmp_path / "photo.nrrd")
    return tmp_path / "photo.nrrd", ImageReadError, "not a readable NRRD"


def _nan_spacing(tmp_path):
    path = _small(tmp_path, "nan.mhd")
    text = path.read_text()
    assert "ElementSpacing = 1 1 1" in text
    path.write_text(text.replace("ElementSpacing = 1 1 1", "ElementSpacing = 1 nan 1"))
    return path, VolumeError, "spacing"


def _too_large(tmp_path):
    return _small(tmp_path, "big.mha"), ImageReadError, "limit of 100 voxels"


BAD = [_truncated, _truncated_gzip, _truncated_detached, _truncated_zlib, _missing_data, _outside_folder, _outside_folder_mhd,
       _four_d, _vector, _complex, _garbage, _png_named_nrrd, _nan_spacing, _too_large]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__[1:] for f in BAD])
def test_bad_files_give_typed_errors_naming_the_file(tmp_path, capfd, make):
    path, error, words = make(tmp_path)
    capfd.readouterr()
    with pytest.raises(error, match=words) as info:
        LoadMedicalImage(max_voxels=100 if make is _too_large else 1 << 27)(path)
    assert isinstance(info.value, LlavaMedInputError)
    assert info.value.path.endswith(path.name) and path.name in str(info.value)
    assert "data.raw" not in info.value.reason and "ITK ERROR" not in info.value.reason  # no header text, no ITK text
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""  # ITK's own messages (MetaIO writes to std::cerr) stay quiet


def test_the_same_files_load_when_whole(tmp_path):
    """The bad cases above fail for their defect: the untouched files they start from load."""
    for name, kw in (("ok.nrrd", {}), ("okgz.nrrd", {"useCompression": True}), ("ok.mhd", {}), ("ok.nhdr", {})):
        img = LoadMedicalImage()(_small(tmp_path, name, **kw))
        assert img.shape == (1, 8, 7, 6) and float(img[0, 7, 6, 5]) == 6 * 7 * 8 - 1
    flat = sitk.GetImageFromArray(np.arange(20 * 30, dtype=np.int16).reshape(20, 30))
    sitk.WriteImage(flat, str(tmp_path / "flat.nrrd"))
    img = LoadMedicalImage()(tmp_path / "flat.nrrd")  # a 2D file: one axial slice
    assert img.shape == (1, 30, 20, 1) and float(img[0, 29, 19, 0]) == 20 * 30 - 1
