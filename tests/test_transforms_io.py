# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Loading: real files shipped with pydicom / pydicom-data / nibabel, generated series, malformed inputs."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from _transforms_fixtures import make_ct_dataset, save_dicom, shipped_file, write_ct_series, write_slide

from monai_llava_med.errors import DicomDecodeError, ImageReadError, LlavaMedInputError, SlideError, VolumeError
from monai_llava_med.transforms import LoadMedicalImage, MedicalImageToPixels, detect_input_kind, scan_dicom_series

CT5N = os.path.join(os.path.dirname(shipped_file("CT_small.dcm")), "dicomdirtests", "98892001", "CT5N")
ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


@pytest.fixture(scope="module")
def load():
    return LoadMedicalImage()


def test_ct_small_hounsfield_units(load):
    ds = pydicom.dcmread(shipped_file("CT_small.dcm"))
    img = load(shipped_file("CT_small.dcm"))
    assert tuple(img.shape) == (1, 128, 128) and img.meta["layout"] == "image"
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for r, c in [(0, 0), (64, 64), (10, 100), (127, 3)]:
        assert float(img[0, r, c]) == pytest.approx(float(expected[r, c]))
    assert float(img[0, 64, 64]) == pytest.approx(1928 - 1024)  # stored 1928, intercept -1024
    assert img.meta["modality"] == "CT" and img.meta["source"] == "CT_small.dcm"


@pytest.mark.parametrize(
    "name,shape,modality",
    [
        ("MR_small.dcm", (1, 64, 64), "MR"),
        ("MR_small_RLE.dcm", (1, 64, 64), "MR"),
        ("image_dfl.dcm", (1, 512, 512), "OT"),
        ("JPEG2000.dcm", (1, 1024, 256), "NM"),
        ("MR_small_jp2klossless.dcm", (1, 64, 64), "MR"),
        ("SC_rgb_jpeg_dcmtk.dcm", (3, 100, 100), "OT"),
        ("examples_rgb_color.dcm", (3, 240, 320), "US"),
    ],
)
def test_single_and_compressed_dicom(load, name, shape, modality):
    img = load(shipped_file(name))
    assert tuple(img.shape) == shape and img.meta["modality"] == modality
    ref = pydicom.dcmread(shipped_file(name)).pixel_array
    ref = np.moveaxis(ref, -1, 0) if ref.ndim == 3 else ref[None]
    slope = float(pydicom.dcmread(shipped_file(name)).get("RescaleSlope", 1) or 1)
    inter = float(pydicom.dcmread(shipped_file(name)).get("RescaleIntercept", 0) or 0)
    np.testing.assert_allclose(img.numpy(), ref * slope + inter, atol=1e-3)


def test_compressed_matches_uncompressed(load):
    plain = load(shipped_file("MR_small.dcm"))
    np.testing.assert_array_equal(load(shipped_file("MR_small_RLE.dcm")).numpy(), plain.numpy())
    np.testing.assert_array_equal(load(shipped_file("MR_small_jp2klossless.dcm")).numpy(), plain.numpy())


def test_multiframe_frames_layout(load):
    img = load(shipped_file("emri_small_RLE.dcm"))
    ref = pydicom.dcmread(shipped_file("emri_small_RLE.dcm")).pixel_array  # (F, R, C)
    assert img.meta["layout"] == "frames" and tuple(img.shape) == (1, 64, 64, 10)
    for f in (0, 4, 9):
        np.testing.assert_array_equal(img[0, :, :, f].numpy().T, ref[f])


def test_ct5n_series_sorted_by_position(load):
    info = scan_dicom_series(CT5N)
    assert len(info.files) == 5 and info.positions == sorted(info.positions)
    assert info.positions[0] == pytest.approx(-1.2375) and info.spacing[2] == pytest.approx(2.5)
    # InstanceNumber 6..10 runs superior -> inferior: position order is its reverse
    assert [int(pydicom.dcmread(f).InstanceNumber) for f in info.files] == [10, 9, 8, 7, 6]
    img = load(CT5N)
    assert tuple(img.shape) == (1, 16, 16, 5) and img.meta["layout"] == "volume"
    assert img.meta["source"] == "CT5N"
    assert float(torch.linalg.norm(img.affine[:3, 2])) == pytest.approx(2.5)


def test_generated_series_values_and_spacing(tmp_path, load):
    vol = np.zeros((8, 6, 5), np.float32)
    for k in range(5):
        vol[:, :, k] = 100 * k - 500
    write_ct_series(tmp_path / "s", vol, z0=10, dz=3.0, spacing=(0.7, 0.9))
    img = load(tmp_path / "s")
    assert tuple(img.shape) == (1, 6, 8, 5)  # (X=cols, Y=rows, Z)
    sp = torch.linalg.norm(img.affine[:3, :3], dim=0).tolist()
    assert sp == pytest.approx([0.9, 0.7, 3.0])
    for k in range(5):
        assert float(img[0, 2, 3, k]) == pytest.approx(100 * k - 500)


def test_mr_rgb_and_radiograph_optional(load):
    try:
        path = shipped_file("RG1_UNCI.dcm")
    except AssertionError:
        pytest.skip("pydicom-data not installed")
    img = load(path)
    assert img.meta["photometric"] == "MONOCHROME1" and img.meta["modality"] == "CR"
    assert tuple(img.shape) == (1, 1955, 1841)


def test_nifti_anatomical(load):
    img = load(ANATOMICAL)
    assert tuple(img.shape) == (1, 33, 41, 25) and img.meta["modality"] == "MR"
    ref = nib.load(ANATOMICAL).get_fdata()
    assert float(img[0, 10, 20, 12]) == pytest.approx(ref[10, 20, 12])


def test_png_and_small_tiff_are_images(tmp_path, load):
    from PIL import Image

    arr = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "b.tif")
    for name in ("a.png", "b.tif"):
        assert detect_input_kind(tmp_path / name) == "image"
        img = load(tmp_path / name)
        assert tuple(img.shape) == (3, 30, 40)
        np.testing.assert_array_equal(img.numpy(), np.moveaxis(arr, -1, 0))
    write_slide(tmp_path / "slide.tif", size=512, levels=3)
    assert detect_input_kind(tmp_path / "slide.tif") == "slide"


def test_photo_bit_depth_recorded(tmp_path, load):
    from PIL import Image

    arr = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(arr.astype(np.uint8)).convert("P").save(tmp_path / "p.png")
    Image.fromarray(arr * 300).save(tmp_path / "g16.png")
    assert load(tmp_path / "g.png").meta["bit_depth"] == 8 and load(tmp_path / "p.png").meta["bit_depth"] == 8
    assert load(tmp_path / "g16.png").meta["bit_depth"] is None


def _functional_rescale(ds, frame):
    seq = ds.PerFrameFunctionalGroupsSequence[frame].get("PixelValueTransformationSequence")
    item = seq[0] if seq else ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    return float(item.RescaleSlope), float(item.RescaleIntercept)


#: eCT_Supplemental.dcm frames in volume order (ascending along its slice normal)
ECT_VOLUME_ORDER = [1, 0]


def test_enhanced_ct_shared_functional_group_rescale(load):
    path = shipped_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    assert "RescaleIntercept" not in ds  # slope/intercept live in the shared functional groups only
    img = load(path)
    # frames with plane positions are a volume sorted along the slice normal (see test_transforms_geometry.py);
    # IOP (-1,0,0,0,1,0) has normal (0,0,-1): frame 2 (z -149) comes before frame 1 (z -159) along it
    assert img.meta["layout"] == "volume" and tuple(img.shape) == (1, 512, 512, 2)
    assert [float(g.PlanePositionSequence[0].ImagePositionPatient[2]) for g in ds.PerFrameFunctionalGroupsSequence
            ] == [-159.0, -149.0]
    stored = ds.pixel_array.astype(np.float64)
    for k, f in enumerate(ECT_VOLUME_ORDER):
        np.testing.assert_allclose(img[0, :, :, k].numpy().T, stored[f] - 1024.0)
    assert float(img.min()) == -1024.0


def test_enhanced_ct_per_frame_rescale(tmp_path, load):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(shipped_file("eCT_Supplemental.dcm"))
    item = Dataset()
    item.RescaleSlope, item.RescaleIntercept, item.RescaleType = 2.0, -500.0, "US"
    ds.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence = Sequence([item])  # frame 2 only
    path = save_dicom(ds, tmp_path / "ect.dcm")
    img = load(path)
    stored = ds.pixel_array.astype(np.float64)
    assert _functional_rescale(ds, 0) == (1.0, -1024.0) and _functional_rescale(ds, 1) == (2.0, -500.0)
    k0, k1 = ECT_VOLUME_ORDER.index(0), ECT_VOLUME_ORDER.index(1)
    np.testing.assert_allclose(img[0, :, :, k0].numpy().T, stored[0] - 1024.0)
    np.testing.assert_allclose(img[0, :, :, k1].numpy().T, stored[1] * 2.0 - 500.0)


def test_palette_color_expanded_to_rgb(load):
    try:
        from pydicom.pixels import apply_color_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_color_lut
    path = shipped_file("OBXXXX1A.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR" and ds.RedPaletteColorLookupTableDescriptor[2] == 16
    img = load(path)
    assert tuple(img.shape) == (3, 600, 800) and img.meta["photometric"] == "RGB"
    expected = np.moveaxis(apply_color_lut(ds.pixel_array, ds).astype(np.float64), -1, 0) * 255.0 / 65535.0
    np.testing.assert_allclose(img.numpy(), expected, atol=1e-3)
    assert float(img.max()) <= 255.0 and float((img[0] - img[2]).abs().max()) > 50  # real colour, not grey
    out = MedicalImageToPixels(image_size=32)(path)
    assert out["window"] is None and out["pixel_values"].shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------------------------- malformed inputs


def _ct_file(tmp_path, name="x.dcm", **kw):
    pixels = kw.pop("pixels", np.full((8, 8), 1000, np.int16))
    return save_dicom(make_ct_dataset(pixels, **kw), tmp_path / name)


def _series(tmp_path, name, n=4, shape=(8, 8)):
    vol = np.zeros((*shape, n), np.float32)
    return write_ct_series(tmp_path / name, vol)


def _bad_empty_file(tmp_path):
    (tmp_path / "e.dcm").write_bytes(b"")
    return tmp_path / "e.dcm", ImageReadError, "empty"


def _bad_not_dicom(tmp_path):
    (tmp_path / "t.dcm").write_text("hello, not a DICOM file" * 20)
    return tmp_path / "t.dcm", DicomDecodeError, "not a DICOM"


def _bad_truncated_pixels(tmp_path):
    p = _ct_file(tmp_path, pixels=np.ones((64, 64), np.int16))
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) - 3000])
    return p, DicomDecodeError, "pixel"


def _bad_truncated_header(tmp_path):
    p = _ct_file(tmp_path)
    data = open(p, "rb").read()
    open(p, "wb").write(data[:200])
    return p, DicomDecodeError, "DICOM"


def _bad_no_pixeldata(tmp_path):
    ds = make_ct_dataset(np.ones((4, 4), np.int16))
    del ds.PixelData
    return save_dicom(ds, tmp_path / "np.dcm"), DicomDecodeError, "no PixelData"


def _bad_transfer_syntax(tmp_path):
    # MPEG2 video: a transfer syntax no installed pixel decoder handles (JPEG Lossless and JPEG-LS now decode)
    from pydicom.encaps import encapsulate

    ds = make_ct_dataset(np.ones((8, 8), np.int16))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    return save_dicom(ds, tmp_path / "mpeg2.dcm"), DicomDecodeError, "cannot decode pixel data (transfer syntax MPEG2"


def _bad_fake_jpegls(tmp_path):
    from pydicom.encaps import encapsulate

    ds = make_ct_dataset(np.ones((8, 8), np.int16))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"
    ds.PixelData = encapsulate([b"\xff\xd8garbage\xff\xd9"])
    ds["PixelData"].VR = "OB"
    try:
        ds.save_as(str(tmp_path / "ls.dcm"), enforce_file_format=True)
    except TypeError:
        ds.save_as(str(tmp_path / "ls.dcm"), write_like_original=False)
    return tmp_path / "ls.dcm", DicomDecodeError, "JPEG-LS"


def _bad_zero_rows(tmp_path):
    ds = make_ct_dataset(np.ones((4, 4), np.int16))
    ds.Rows = 0
    return save_dicom(ds, tmp_path / "z.dcm"), ImageReadError, "zero-size"


def _bad_absurd_size(tmp_path):
    ds = make_ct_dataset(np.ones((4, 4), np.int16))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 500
    return save_dicom(ds, tmp_path / "big.dcm"), ImageReadError, "absurd"


def _bad_nan_nifti(tmp_path):
    v = np.zeros((6, 6, 4), np.float32)
    v[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(v, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    return tmp_path / "nan.nii.gz", VolumeError, "NaN"


def _bad_inf_nifti(tmp_path):
    v = np.zeros((6, 6, 4), np.float32)
    v[1, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(v, np.eye(4)), str(tmp_path / "inf.nii"))
    return tmp_path / "inf.nii", VolumeError, "NaN/inf"


def _bad_4d_nifti(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), str(tmp_path / "f.nii"))
    return tmp_path / "f.nii", VolumeError, "4D"


def _bad_truncated_nifti(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), str(tmp_path / "tr.nii"))
    data = (tmp_path / "tr.nii").read_bytes()
    (tmp_path / "tr.nii").write_bytes(data[:1000])
    return tmp_path / "tr.nii", ImageReadError, "cannot read"


def _bad_mixed_sizes(tmp_path):
    files = _series(tmp_path, "m")
    ds = pydicom.dcmread(files[1])
    new = make_ct_dataset(np.zeros((10, 10), np.int16), ds.ImagePositionPatient, 2, ds.SeriesInstanceUID)
    save_dicom(new, files[1])
    return tmp_path / "m", VolumeError, "different sizes"


def _bad_mixed_orientation(tmp_path):
    files = _series(tmp_path, "o")
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    save_dicom(ds, files[2])
    return tmp_path / "o", VolumeError, "orientations"


def _bad_duplicate_position(tmp_path):
    files = _series(tmp_path, "d")
    ds0 = pydicom.dcmread(files[0])
    ds = pydicom.dcmread(files[1])
    ds.ImagePositionPatient = ds0.ImagePositionPatient
    save_dicom(ds, files[1])
    return tmp_path / "d", VolumeError, "same position"


def _bad_missing_slice(tmp_path):
    files = _series(tmp_path, "g", n=6)
    os.remove(files[3])
    return tmp_path / "g", VolumeError, "uneven"


def _bad_two_series(tmp_path):
    files = _series(tmp_path, "two")
    ds = pydicom.dcmread(files[0])
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    save_dicom(ds, files[0])
    return tmp_path / "two", VolumeError, "mixes 2"


def _bad_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    return tmp_path / "empty", ImageReadError, "no DICOM"


def _bad_orientation_three_values(tmp_path):
    files = _series(tmp_path, "iop")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [1, 0, 0]
        save_dicom(ds, f)
    return tmp_path / "iop", VolumeError, "malformed ImageOrientationPatient"


def _bad_position_not_numeric(tmp_path):
    files = _series(tmp_path, "ipp")
    ds = pydicom.dcmread(files[1])
    ds.ImagePositionPatient = [-10.0, -20.0, 123.25]
    save_dicom(ds, files[1])
    data = open(files[1], "rb").read()
    assert data.count(b"123.25") == 1
    open(files[1], "wb").write(data.replace(b"123.25", b"abc.de"))
    return tmp_path / "ipp", VolumeError, "malformed ImagePositionPatient"


def _bad_pixel_spacing_one_value(tmp_path):
    return _ct_file(tmp_path, "ps.dcm", spacing=(0.5,)), VolumeError, "malformed PixelSpacing"


def _bad_pixel_spacing_one_value_series(tmp_path):
    files = _series(tmp_path, "ps")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [0.5]
        save_dicom(ds, f)
    return tmp_path / "ps", VolumeError, "malformed PixelSpacing"


def _nifti_with_sform(tmp_path, name, srows):
    import struct

    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 100, (8, 8, 6)).astype(np.float32), np.eye(4)),
             str(path))
    data = bytearray(path.read_bytes())
    struct.pack_into("<hh", data, 252, 0, 1)  # qform_code 0, sform_code 1
    struct.pack_into("<12f", data, 280, *np.asarray(srows, np.float32).ravel())  # srow_x, srow_y, srow_z
    path.write_bytes(bytes(data))
    return path


def _bad_singular_nifti_affine(tmp_path):
    return _nifti_with_sform(tmp_path, "sing.nii", np.diag([1.0, 1.0, 0.0, 1.0])[:3]), VolumeError, "singular"


def _bad_nan_nifti_affine(tmp_path):
    return _nifti_with_sform(tmp_path, "nanaff.nii", np.diag([1.0, np.nan, 1.0, 1.0])[:3]), VolumeError, "NaN/inf"


def _bad_truncated_png(tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    return tmp_path / "a.png", ImageReadError, "cannot read"


def _bad_missing_file(tmp_path):
    return tmp_path / "nope.nii.gz", ImageReadError, "no such file"


def _bad_unknown_suffix(tmp_path):
    (tmp_path / "a.xyz").write_text("data")
    return tmp_path / "a.xyz", ImageReadError, "unsupported file type"


def _bad_corrupt_tiff(tmp_path):
    (tmp_path / "c.tif").write_bytes(b"II*\x00" + b"\x13" * 400)
    return tmp_path / "c.tif", SlideError, "TIFF"


def _bad_pyramid_order(tmp_path):
    import tifffile

    with tifffile.TiffWriter(str(tmp_path / "p.tif")) as tif:
        tif.write(np.zeros((64, 64, 3), np.uint8), photometric="rgb")
        tif.write(np.zeros((128, 128, 3), np.uint8), photometric="rgb", subfiletype=1)
    return tmp_path / "p.tif", SlideError, "not successively smaller"


def _bad_blank_slide(tmp_path):
    write_slide(tmp_path / "blank.tif", size=512, levels=3, tissue=False)
    return tmp_path / "blank.tif", SlideError, "no tissue"


MALFORMED = [f for n, f in sorted(globals().items()) if n.startswith("_bad_")]


def test_at_least_15_malformed_kinds():
    assert len(MALFORMED) >= 15


@pytest.mark.parametrize("make", MALFORMED, ids=[f.__name__[5:] for f in MALFORMED])
def test_malformed_input_raises_typed_error(tmp_path, make):
    path, error, words = make(tmp_path)
    pre = MedicalImageToPixels(image_size=32, tile_size=64, target_mpp=None, slide_level=1)
    with pytest.raises(error) as info:
        pre(path)
    assert isinstance(info.value, LlavaMedInputError) and isinstance(info.value, ValueError)
    assert words.lower() in str(info.value).lower(), str(info.value)
    assert info.value.path is not None and os.path.basename(str(path)) in info.value.path


def test_instance_order_scrambled_is_refused_for_full_volume(tmp_path):
    files = write_ct_series(tmp_path / "s", np.zeros((8, 8, 4), np.float32))
    ds = pydicom.dcmread(files[0])
    ds.InstanceNumber = 3
    save_dicom(ds, files[0])
    ds = pydicom.dcmread(files[2])
    ds.InstanceNumber = 1
    save_dicom(ds, files[2])
    assert not scan_dicom_series(tmp_path / "s").instance_order_matches
    with pytest.raises(VolumeError, match="InstanceNumber"):
        LoadMedicalImage()(tmp_path / "s")
    shutil.rmtree(tmp_path / "s")


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "image_dfl.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm",
     "SC_rgb_jpeg_dcmtk.dcm", "examples_rgb_color.dcm", "emri_small.dcm"],
)
def test_series_slice_decode_equals_the_file_reader(name):
    """The series' direct slice decode gives load_dicom_file's values bit for bit (dtype included)."""
    from monai_llava_med.transforms.dicom_file import load_dicom_file, decode_series_slice

    ref = load_dicom_file(shipped_file(name)).as_subclass(torch.Tensor)
    got = decode_series_slice(shipped_file(name))
    assert type(got) is torch.Tensor and got.dtype == ref.dtype == torch.float32
    assert torch.equal(got, ref)


def test_series_slice_decode_refuses_nan_rescale_and_bad_pixels(tmp_path):
    """The direct decode keeps the file reader's checks: NaN rescale, NaN pixels and a truncated PixelData."""
    from monai_llava_med.transforms.dicom_file import decode_series_slice

    hu = np.arange(64 * 64, dtype=np.int16).reshape(64, 64) - 1000
    ds = make_ct_dataset(hu)
    good = save_dicom(ds, tmp_path / "good.dcm")
    expected = hu.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(decode_series_slice(good)[0].numpy(), expected)
    ds = make_ct_dataset(hu)
    ds.RescaleIntercept = "NaN"
    with pytest.raises(DicomDecodeError):
        decode_series_slice(save_dicom(ds, tmp_path / "nan.dcm"))
    ds = make_ct_dataset(hu)
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(LlavaMedInputError):
        decode_series_slice(save_dicom(ds, tmp_path / "short.dcm"))


@pytest.mark.parametrize("slope,intercept", [(1.0, -1024.0), (2.0, 5.0), (1.0, 0.0), (0.5, 0.3), (1.3, -1024.7),
                                             (256.0, -8000000.0), (-1.0, 3.0)])
def test_series_slice_rescale_equals_the_file_reader(tmp_path, slope, intercept):
    """Integer and fractional rescales over the whole int16 range: the slice decode's values are the reader's."""
    from monai_llava_med.transforms.dicom_file import load_dicom_file, decode_series_slice

    rng = np.random.default_rng(7)
    stored = rng.integers(-32768, 32768, (64, 64)).astype(np.int16)
    stored[0, :4] = (-32768, 32767, 0, -1)
    path = save_dicom(make_ct_dataset(stored, intercept=intercept, slope=slope), tmp_path / "s.dcm")
    ref = load_dicom_file(path).as_subclass(torch.Tensor)
    got = decode_series_slice(path)
    assert got.dtype == ref.dtype == torch.float32
    assert np.array_equal(got.numpy().view(np.uint32), ref.numpy().view(np.uint32))  # bit for bit, signed zeros too
