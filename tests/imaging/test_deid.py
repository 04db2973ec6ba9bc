"""De-identification (pure: no database): PS3.15 Annex E basic profile with modified dates."""

from __future__ import annotations

import datetime as dt

import pydicom
import pytest
from imagemaker import dicom_series, small_patient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pmpd_web.imaging.deid import (
    date_shift_days,
    deidentify,
    derived_uid,
    remap_uid,
)

SECRET = "test-secret"

# Attributes that identify the patient, the people or the place: none may survive.
IDENTIFYING = [
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAddress",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "PatientSex",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
    "ImageComments",
    "StudyDescription",
    "SeriesDescription",
    "AdditionalPatientHistory",
    "StudyID",
    "TimezoneOffsetFromUTC",
    "ProtocolName",
    "RequestAttributesSequence",
]


def _value_texts(ds: Dataset) -> list[str]:
    texts = []
    for element in ds.iterall():
        if element.VR != "SQ" and element.tag != 0x7FE00010:
            texts.append(str(element.value))
    return texts


@pytest.fixture
def phantom_slices(tmp_path):
    patient = small_patient()
    paths = dicom_series(patient, tmp_path / "ct")
    return patient, [pydicom.dcmread(p) for p in paths[:4]]


def test_identifying_attributes_and_private_tags_are_gone(phantom_slices):
    patient, slices = phantom_slices
    ds = slices[0]
    ds.PatientWeight = "72"
    ds.AdditionalPatientHistory = "smoker, lives with daughter"
    ds.TimezoneOffsetFromUTC = "+0100"
    request = Dataset()
    request.RequestedProcedureID = "RP-99"
    request.ScheduledProcedureStepID = "SPS-1"
    ds.RequestAttributesSequence = Sequence([request])
    assert any(element.tag.is_private for element in ds)
    deidentify(ds, study_id="P-0001", secret=SECRET)

    for keyword in IDENTIFYING:
        assert not ds.get(keyword), keyword
    assert not any(element.tag.is_private for element in ds.iterall())
    assert ds.PatientName == "P-0001" and ds.PatientID == "P-0001"
    assert ds.PatientIdentityRemoved == "YES"
    assert "Basic Application Confidentiality Profile" in " ".join(ds.DeidentificationMethod)
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    # Nothing of the fake identity the phantom wrote is left anywhere, at any depth.
    texts = " ".join(_value_texts(ds))
    for fake in patient.identifiers.values():
        for part in fake.replace("^", " ").split():
            if len(part) > 3 and not part.isdigit():
                assert part not in texts, part
    assert patient.identifiers["patient_id"] not in texts
    # What the viewer and the engine need stays.
    assert ds.Modality == "CT" and ds.Manufacturer == patient.clinical["ct_manufacturer"]
    assert ds.Rows == 64 and len(ds.PixelData) == 64 * 64 * 2
    assert [float(v) for v in ds.PixelSpacing] == [patient.spacing[1], patient.spacing[0]]


def test_uids_are_consistent_within_a_patient_and_differ_from_the_originals(phantom_slices):
    _, slices = phantom_slices
    originals = [
        (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        for ds in slices
    ]
    frame = str(slices[0].FrameOfReferenceUID)
    for ds in slices:
        deidentify(ds, study_id="P-0001", secret=SECRET)
    studies = {str(ds.StudyInstanceUID) for ds in slices}
    series = {str(ds.SeriesInstanceUID) for ds in slices}
    instances = [str(ds.SOPInstanceUID) for ds in slices]
    assert len(studies) == 1 and len(series) == 1 and len(set(instances)) == len(slices)
    assert {str(ds.FrameOfReferenceUID) for ds in slices} == {
        remap_uid(frame, study_id="P-0001", secret=SECRET)
    }
    assert not studies & {o[0] for o in originals} and not series & {o[1] for o in originals}
    assert not set(instances) & {o[2] for o in originals}
    for ds, original in zip(slices, originals, strict=True):
        assert str(ds.SOPInstanceUID) == remap_uid(original[2], study_id="P-0001", secret=SECRET)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage  # registered UIDs stay
    for uid in [*studies, *series, *instances]:
        assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid
    # Another patient, or another site's secret, maps the same UID elsewhere.
    study = originals[0][0]
    mapped = remap_uid(study, study_id="P-0001", secret=SECRET)
    assert remap_uid(study, study_id="P-0002", secret=SECRET) != mapped
    assert remap_uid(study, study_id="P-0001", secret="another site") != mapped
    assert derived_uid("x", study_id="P-0001", secret=SECRET) == derived_uid(
        "x", study_id="P-0001", secret=SECRET
    )


def test_dates_shift_by_one_keyed_offset_per_patient(phantom_slices):
    patient, slices = phantom_slices
    ds = slices[0]
    ds.AcquisitionDateTime = patient.identifiers["study_date"] + "101500.000000+0100"
    deidentify(ds, study_id="P-0001", secret=SECRET, date_shift_max_days=3650)
    shift = date_shift_days("P-0001", secret=SECRET, max_days=3650)
    assert 1 <= shift <= 3650
    original = dt.datetime.strptime(patient.identifiers["study_date"], "%Y%m%d").date()
    expected = (original - dt.timedelta(days=shift)).strftime("%Y%m%d")
    assert ds.StudyDate == ds.SeriesDate == ds.ContentDate == expected
    assert ds.AcquisitionDateTime == expected + "101500.000000"
    assert ds.StudyTime == "101500"  # times of day are kept
    assert (
        date_shift_days("P-0002", secret=SECRET) != shift
        or date_shift_days("P-0003", secret=SECRET) != shift
    )


def test_year_only_dates(phantom_slices):
    patient, slices = phantom_slices
    ds = slices[0]
    deidentify(ds, study_id="P-0001", secret=SECRET, date_mode="year")
    assert ds.StudyDate == patient.identifiers["study_date"][:4] + "0101"
    assert ds.PatientBirthDate == ""


def test_pydicom_ct_small_with_its_private_tags_and_sequences():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert ds.OtherPatientIDsSequence and any(e.tag.is_private for e in ds)
    original_study = str(ds.StudyInstanceUID)
    deidentify(ds, study_id="CT-SMALL", secret=SECRET)
    assert "OtherPatientIDsSequence" not in ds and "InstitutionName" not in ds
    assert not any(e.tag.is_private for e in ds.iterall())
    assert str(ds.PatientName) == "CT-SMALL"
    assert str(ds.StudyInstanceUID) != original_study
    assert "ABCD1234" not in " ".join(_value_texts(ds))
    # The de-identified dataset is valid DICOM again.
    from pmpd_web.imaging.dicom_series import encode

    again = pydicom.dcmread(__import__("io").BytesIO(encode(ds)))
    assert again.PatientID == "CT-SMALL" and again.pixel_array.shape == (128, 128)


def test_nested_sequences_and_implicit_vr_files(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
    item = Dataset()
    item.ReferencedSOPClassUID = pydicom.uid.CTImageStorage
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    item.PatientName = "NESTED^NAME"
    ds.ReferencedImageSequence = Sequence([item])
    deidentify(ds, study_id="P-9", secret=SECRET)
    nested = ds.ReferencedImageSequence[0]
    assert nested.ReferencedSOPInstanceUID == remap_uid("1.2.3.4.5", study_id="P-9", secret=SECRET)
    assert nested.ReferencedSOPClassUID == pydicom.uid.CTImageStorage
    assert nested.PatientName == "P-9"  # a patient's name at any depth becomes the study ID
    assert ds.PatientName == "P-9"


def test_a_secret_is_required():
    with pytest.raises(ValueError, match="secret"):
        remap_uid("1.2.3", study_id="P", secret="")
    with pytest.raises(ValueError, match="date_mode"):
        deidentify(Dataset(), study_id="P", secret=SECRET, date_mode="keep")
