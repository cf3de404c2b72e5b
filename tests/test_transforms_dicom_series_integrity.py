# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Every slice of an accepted DICOM series is checked once, also those a lazy path never decodes.

A phantom CT series (10 slices of 64x64, :func:`~monai_llava_med.data.phantom.write_dicom`) with one slice cut
short (its PixelData halved with pydicom, or the file's bytes cut) or of other size/layout/orientation must give a
typed error naming that slice's file through every path that reads a series: the whole-volume reader, the
views pipeline (``axial``: only the chosen slices are decoded; ``content``; ``triplanar``: the whole volume),
the 3-D volume pipeline and the predictor. The intact series still loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from monai_llava_med.data.phantom import case_rng, generate_phantom, write_dicom
from monai_llava_med.errors import DicomDecodeError, LlavaMedInputError, VolumeError
from monai_llava_med.transforms import LoadMedicalImage, MedicalImageToPixels, scan_dicom_series
from monai_llava_med.transforms.views import VolumeToViews
from monai_llava_med.transforms.volume_pixels import MedicalVolumeToPixels

SLICES = 10
MODELS = Path(__file__).resolve().parents[1] / "bundles" / "llava_med" / "models"
READERS = {
    "volume": lambda p: LoadMedicalImage()(p),
    "axial": lambda p: MedicalImageToPixels(image_size=64, view_mode="axial")(p),
    "content": lambda p: MedicalImageToPixels(image_size=64, view_mode="content")(p),
    "triplanar": lambda p: MedicalImageToPixels(image_size=64, view_mode="triplanar")(p),
    "volume3d": lambda p: MedicalVolumeToPixels(volume_size=(8, 32, 32))(p),
}


def _series(tmp_path: Path, name: str = "series") -> list[Path]:
    """The phantom CT series, files in slice order (inferior -> superior)."""
    case = generate_phantom(case_rng(3, "test", 0), size=64, ndim=3, depth=SLICES, modality="CT", case_id="integ")
    return write_dicom(case, tmp_path / name)


def _halve_pixels(path: Path) -> None:
    """A slice whose PixelData holds half its pixels, written consistently by pydicom (the file is not cut)."""
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(path, enforce_file_format=True)


def _cut_bytes(path: Path) -> None:
    """A slice file whose last 3000 bytes (inside the PixelData) are gone."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])


def _raises_naming(read, folder: Path, bad: Path, error: type = LlavaMedInputError, words: str = "") -> Exception:
    with pytest.raises(error) as info:
        read(folder)
    assert bad.name in str(info.value), str(info.value)
    assert words in str(info.value)
    return info.value


def test_the_middle_slice_is_one_the_axial_views_never_decode():
    """The cases below corrupt slice 5 and the edges; the default axial selection does not take slice 5."""
    chosen = VolumeToViews(4, "axial").select(SLICES, None)
    assert 5 not in chosen and len(chosen) == 4


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("index", [5, 0, SLICES - 1])
def test_a_series_with_one_halved_slice_is_refused_naming_it(tmp_path, reader, index):
    files = _series(tmp_path)
    _halve_pixels(files[index])
    err = _raises_naming(READERS[reader], files[0].parent, files[index], DicomDecodeError, "truncated")
    assert "4096" not in str(err) and "8192" not in str(err)  # the reason, not the byte counts


@pytest.mark.parametrize("reader", ["volume", "axial", "volume3d"])
@pytest.mark.parametrize("index", [5, SLICES - 1])
def test_a_series_with_one_cut_file_is_refused_naming_it(tmp_path, reader, index):
    files = _series(tmp_path)
    _cut_bytes(files[index])
    _raises_naming(READERS[reader], files[0].parent, files[index], DicomDecodeError, "truncated")


def test_the_scan_alone_refuses_a_truncated_slice(tmp_path):
    """The header scan decodes nothing and still refuses: the cheap check every lazy path runs first."""
    files = _series(tmp_path)
    _halve_pixels(files[4])
    _raises_naming(scan_dicom_series, files[0].parent, files[4], DicomDecodeError, "PixelData")


@pytest.mark.parametrize("reader", ["volume", "axial", "content"])
def test_a_slice_of_other_rows_is_refused_naming_it(tmp_path, reader):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[6])
    ds.Rows = 32
    ds.PixelData = ds.PixelData[: 32 * 64 * 2]  # a consistent 32 x 64 slice
    ds.save_as(files[6], enforce_file_format=True)
    _raises_naming(READERS[reader], files[0].parent, files[6], VolumeError, "different sizes")


def test_a_slice_of_other_bits_allocated_is_refused_naming_it(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[2])
    pixels = np.clip(ds.pixel_array, 0, 255).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = pixels.tobytes()
    ds.save_as(files[2], enforce_file_format=True)
    _raises_naming(READERS["axial"], files[0].parent, files[2], VolumeError, "BitsAllocated")


def test_a_slice_of_other_photometric_interpretation_is_refused_naming_it(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[0])
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(files[0], enforce_file_format=True)
    _raises_naming(READERS["axial"], files[0].parent, files[0], VolumeError, "PhotometricInterpretation")


def test_a_slice_of_other_orientation_and_a_duplicate_position_name_the_files(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[7])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(files[7], enforce_file_format=True)
    _raises_naming(scan_dicom_series, files[0].parent, files[7], VolumeError, "orientations")
    files = _series(tmp_path, "dup")
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = pydicom.dcmread(files[4]).ImagePositionPatient
    ds.save_as(files[3], enforce_file_format=True)
    err = _raises_naming(scan_dicom_series, files[0].parent, files[3], VolumeError, "same position")
    assert files[4].name in str(err)


def test_the_intact_series_still_loads_through_every_path(tmp_path):
    files = _series(tmp_path)
    folder = files[0].parent
    assert tuple(READERS["volume"](folder).shape) == (1, 64, 64, SLICES)
    for name in ("axial", "content", "triplanar"):
        assert READERS[name](folder)["pixel_values"].shape[1:] == (3, 64, 64)
    assert READERS["volume3d"](folder)["pixel_values"].shape == (1, 1, 8, 32, 32)


def test_a_non_square_intact_series_loads_with_columns_by_rows_planes(tmp_path):
    files = _series(tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PixelData = ds.pixel_array[:, :48].copy().tobytes()
        ds.Columns = 48
        ds.save_as(f, enforce_file_format=True)
    assert tuple(READERS["volume"](files[0].parent).shape) == (1, 48, 64, SLICES)


def _rle_series(tmp_path: Path) -> list[Path]:
    files = _series(tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f, enforce_file_format=True)
    return files


def test_a_compressed_series_is_checked_by_its_fragments(tmp_path):
    """RLE slices: the intact series loads; a slice without fragments or cut inside one is refused by name."""
    files = _rle_series(tmp_path)
    folder = files[0].parent
    reference = READERS["axial"](folder)["pixel_values"]
    assert reference.shape == (4, 3, 64, 64)
    ds = pydicom.dcmread(files[5])
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # an empty Basic Offset Table item, no fragment
    ds["PixelData"].is_undefined_length = True
    ds.save_as(files[5], enforce_file_format=True)
    _raises_naming(READERS["axial"], folder, files[5], DicomDecodeError, "fragments")
    files = _rle_series(tmp_path / "cut")
    data = files[5].read_bytes()
    files[5].write_bytes(data[: len(data) - 200])
    _raises_naming(READERS["axial"], files[0].parent, files[5], DicomDecodeError, "truncated")


@pytest.fixture(scope="module")
def predictor():
    from monai_llava_med.engines import LlavaMedPredictor

    return LlavaMedPredictor.from_pretrained(MODELS, device="cpu")


@pytest.mark.parametrize("damage,index", [("halved", 2), ("cut", 2), ("halved", 5)])
def test_the_predictor_refuses_a_series_with_a_truncated_slice(tmp_path, predictor, damage, index):
    """The demo model looks at 4 content-aware views (slices 3-6 of this series): slice 2 is never decoded, and is
    refused all the same."""
    files = _series(tmp_path)
    answer = predictor.ask(files[0].parent, "Is there a lesion?", max_new_tokens=3)
    assert isinstance(answer["answer"], str) and [v["index"] for v in answer["views"]] == [3, 4, 5, 6]
    (_halve_pixels if damage == "halved" else _cut_bytes)(files[index])
    _raises_naming(lambda p: predictor.ask(p, "Is there a lesion?", max_new_tokens=3), files[0].parent,
                   files[index], DicomDecodeError, "truncated")
