# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The phantom DICOM writer produces conformant CT / MR Image IODs: ``dciodvfy`` reports no error."""

from __future__ import annotations

import pydicom
import pytest
from dciodvfy_check import dciodvfy_errors

from monai_llava_med.data.phantom import case_rng, generate_phantom, write_dicom

TYPE2_EMPTY = ("PatientBirthDate", "StudyDate", "StudyTime", "ReferringPhysicianName", "AccessionNumber",
               "PositionReferenceIndicator")


@pytest.mark.parametrize(
    ("ndim", "modality"), [(2, "CT"), (2, "MR"), (3, "CT"), (3, "MR")], ids=["ct2d", "mr2d", "ct_series", "mr_series"]
)
def test_phantom_dicom_validates_without_errors(tmp_path, ndim, modality):
    case = generate_phantom(case_rng(3, "test", ndim), size=32, ndim=ndim, modality=modality, num_lesions=1,
                            depth=4, case_id=f"conf-{modality}{ndim}")
    files = write_dicom(case, tmp_path / ("image.dcm" if ndim == 2 else "series"), seed=1)
    assert len(files) == (1 if ndim == 2 else 4)
    for path in files:
        assert dciodvfy_errors(path) == [], path.name


def test_type2_attributes_are_present_and_empty(tmp_path):
    case = generate_phantom(case_rng(3, "test", 7), size=32, ndim=2, modality="MR", num_lesions=0, case_id="t2")
    ds = pydicom.dcmread(write_dicom(case, tmp_path / "mr.dcm")[0])
    for keyword in (*TYPE2_EMPTY, "ScanOptions", "EchoTime", "RepetitionTime"):
        assert keyword in ds and ds[keyword].value in ("", None), keyword  # written, with nothing invented
    assert ds.PatientPosition == "HFS" and ds.AcquisitionNumber == 1


def test_shipped_sample_validates_without_errors():
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "bundles" / "llava_med" / "sample"
    files = sorted(sample.rglob("*.dcm"))
    assert len(files) == 50
    for path in files[::7] + files[-1:]:  # a spread of them (dciodvfy takes ~50 ms a file)
        assert dciodvfy_errors(path) == [], path.name


def test_missing_validator_skips_or_fails_when_required(monkeypatch):
    import dciodvfy_check

    monkeypatch.setattr(dciodvfy_check.shutil, "which", lambda name: None)
    monkeypatch.delenv("LLAVA_MED_REQUIRE_DCIODVFY", raising=False)
    with pytest.raises(pytest.skip.Exception, match="dicom3tools"):
        dciodvfy_check.require_dciodvfy()
    monkeypatch.setenv("LLAVA_MED_REQUIRE_DCIODVFY", "1")
    with pytest.raises(pytest.fail.Exception, match="LLAVA_MED_REQUIRE_DCIODVFY=1"):
        dciodvfy_check.require_dciodvfy()
