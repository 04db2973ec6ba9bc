"""De-identification (pure: no database): PS3.15 Annex E basic profile with modified dates."""

from __future__ import annotations

import copy
import datetime as dt
import functools
import io

import pydicom
import pytest
from imagemaker import dicom_series, small_patient
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence

from pmpd_web.imaging.deid import (
    TABLE,
    TABLE_FILE,
    date_shift_days,
    deidentify,
    derived_uid,
    effective_action,
    remap_uid,
)
from pmpd_web.imaging.dicom_series import encode

IDENTITY_TAGS = {0x00100010, 0x00100020}

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
    assert "OtherPatientIDsSequence" not in ds and ds.InstitutionName == ""  # X/Z/D: emptied
    assert not any(e.tag.is_private for e in ds.iterall())
    assert str(ds.PatientName) == "CT-SMALL"
    assert str(ds.StudyInstanceUID) != original_study
    assert "ABCD1234" not in " ".join(_value_texts(ds))
    # The de-identified dataset is valid DICOM again.
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


# ----------------------------------------------------------------------------------------------
# The whole of Table E.1-1, at top level, nested and encoded as UN, on a real CT file

ORIGINAL_UID = "1.2.826.0.1.3680043.99.424242"
ORIGINAL = {
    "AE": "ORIGINALAE",
    "AS": "042Y",
    "CS": "ORIGINAL",
    "DA": "20200315",
    "DS": "12.5",
    "DT": "20200315101010",
    "IS": "42",
    "LO": "ORIGINAL VALUE",
    "LT": "ORIGINAL VALUE",
    "PN": "ORIGINAL^NAME",
    "SH": "ORIGINAL",
    "ST": "ORIGINAL VALUE",
    "TM": "101010",
    "UC": "ORIGINAL VALUE",
    "UI": ORIGINAL_UID,
    "UR": "http://original.example/x",
    "UT": "ORIGINAL VALUE",
    "US": 7,
    "OB": b"ORIGINAL",
    "UN": b"ORIGINAL",
}
TABLE_ROWS = [
    row
    for row in TABLE
    if row.keyword and row.tag >> 16 not in (0x0000, 0x0002) and row.tag not in IDENTITY_TAGS
]


def _original_element(row) -> pydicom.DataElement:
    vr = dictionary_VR(row.tag).split(" or ")[0]
    if vr == "SQ":
        item = Dataset()
        item.ReferencedSOPClassUID = pydicom.uid.CTImageStorage
        item.ReferencedSOPInstanceUID = ORIGINAL_UID
        return pydicom.DataElement(row.tag, "SQ", Sequence([item]))
    return pydicom.DataElement(row.tag, vr, ORIGINAL[vr])


def _as_un(element: pydicom.DataElement) -> RawDataElement:
    """The element as read from a file whose exporter lost its VR: UN, the value in implicit
    VR little endian (a sequence's items with their delimiters)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_data_element(buffer, element)
    data = buffer.getvalue()[8:]
    if element.VR == "SQ":
        data = data[:-8]  # the sequence delimiter: the UN element has a defined length
    return RawDataElement(element.tag, "UN", len(data), data, 0, False, True, True, False)


@functools.cache
def _real_file_bytes() -> bytes:
    """pydicom's CT_small without its pixels and private attributes (tested elsewhere)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    ds.remove_private_tags()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _real_file_with(element: pydicom.DataElement, *, variant: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(io.BytesIO(_real_file_bytes()))
    added = _as_un(element) if variant == "un" else element
    if variant == "nested":
        holder = Dataset()
        holder.add(added)
        # A sequence the table does not name, so it is kept and its items cleaned.
        ds.AnatomicRegionSequence = Sequence([holder])
    else:
        ds[element.tag] = added
    return ds


def _survives(value, original) -> bool:
    if isinstance(original, Sequence):
        return any(
            str(item.get("ReferencedSOPInstanceUID", "")) == ORIGINAL_UID for item in value or []
        )
    if isinstance(value, bytes | bytearray):
        return bytes(value).rstrip(b"\x00 ") == bytes(original)
    return str(value) == str(original)


@pytest.mark.sample(every=16)
@pytest.mark.parametrize("row", TABLE_ROWS, ids=lambda row: f"{row.keyword}-{row.basic_profile}")
def test_no_attribute_of_table_e1_1_survives_with_its_original_value(row):
    vr = dictionary_VR(row.tag).split(" or ")[0]
    action = effective_action(row, vr)
    for variant in ("top", "nested", "un"):
        original = _original_element(row)
        before = copy.deepcopy(original.value)  # de-identification changes it in place
        ds = deidentify(
            _real_file_with(original, variant=variant), study_id="P-0001", secret=SECRET
        )
        # Still valid DICOM (read back where the VR was resolved).
        again = pydicom.dcmread(io.BytesIO(encode(ds))) if variant == "un" else ds
        holder = again if variant != "nested" else again.AnatomicRegionSequence[0]
        where = f"{row.keyword} ({row.basic_profile} -> {action}), {variant}"
        if action == "X":
            assert row.tag not in holder, where
            continue
        assert row.tag in holder, f"{where}: removed, but the table keeps it"
        value = holder[row.tag].value
        assert vr == holder[row.tag].VR, where  # UN resolved to the dictionary VR
        if action == "Z":
            assert value in ("", None, b"") or (vr == "SQ" and len(value) == 0), where
        elif action == "C" and vr == "TM":
            assert str(value) == ORIGINAL["TM"], where  # whole-day shifts keep the time
        else:
            assert not _survives(value, before), where
        if action == "U" and vr == "UI":
            assert str(value) == remap_uid(ORIGINAL_UID, study_id="P-0001", secret=SECRET)


def test_the_table_is_the_whole_of_e1_1_and_names_its_edition():
    header = TABLE_FILE.read_text().splitlines()[0]
    assert "PS3.15 2026c" in header and "Table E.1-1" in header
    assert len(TABLE) > 640
    codes = {row.basic_profile for row in TABLE}
    assert codes == {"X", "Z", "D", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
    by_keyword = {row.keyword: row for row in TABLE}
    # Attributes the hand-picked list of before let through.
    for keyword in ("ScheduledProcedureStepID", "EthnicGroupCodeSequence"):
        assert by_keyword[keyword].basic_profile == "X"
    assert by_keyword["ReferringPhysicianName"].basic_profile == "Z"


def test_type_2_attributes_with_z_are_emptied_not_removed():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ReferringPhysicianName = "REFERRER^DOCTOR"
    ds.AccessionNumber = "ACC-1"
    deidentify(ds, study_id="P-0001", secret=SECRET)
    assert ds.ReferringPhysicianName == "" and ds.AccessionNumber == "" and ds.StudyID == ""
    assert ds.PatientSex == "" and ds.PatientBirthDate == ""


def test_the_tcia_pancreas_ct_slice_whose_attributes_are_encoded_un():
    """pydicom-data's TCIA Pancreas-CT slice stores most public attributes with VR UN: its
    UIDs and study date went through unchanged before UN was resolved."""
    path = get_testdata_file("explicit_VR-UN.dcm")
    original = pydicom.dcmread(path, stop_before_pixels=True)
    assert original.get_item("StudyInstanceUID").VR == "UN"
    uids = {k: str(original[k].value) for k in ("SOPInstanceUID", "StudyInstanceUID")}
    uids["FrameOfReferenceUID"] = str(original.FrameOfReferenceUID)
    study_date = str(original.StudyDate)
    ds = deidentify(
        pydicom.dcmread(path, stop_before_pixels=True), study_id="P-0001", secret=SECRET
    )
    for keyword, uid in uids.items():
        assert str(ds[keyword].value) == remap_uid(uid, study_id="P-0001", secret=SECRET)
        assert ds[keyword].VR == "UI"
    shift = date_shift_days("P-0001", secret=SECRET)
    expected = dt.datetime.strptime(study_date, "%Y%m%d").date() - dt.timedelta(days=shift)
    assert ds.StudyDate == expected.strftime("%Y%m%d")
    texts = " ".join(_value_texts(ds))
    assert "PANCREAS_0001" not in texts and "Pancreas-CT" not in texts
    assert ds.ReferringPhysicianName == "" and ds.AccessionNumber == ""
    assert ds.Modality == "CT" and ds.ImageType  # what the engine needs stays
