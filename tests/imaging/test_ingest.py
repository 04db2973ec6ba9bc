"""The ingest job on real files: pydicom's CT series, phantom series, NIfTI, NRRD, MetaImage,
DICOM SEG, ZIPs and manifests; what it stores; the pick; idempotence; and bad input, each with
its message and nothing changed."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from django.conf import settings
from factories import make_patient
from imagemaker import (
    dicom_series,
    folder_files,
    ingest,
    ohif_seg,
    rewrite_transfer_syntax,
    small_patient,
    upload_files,
    write_volume,
    zip_of,
)
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.fileset import FileSet

from pmpd_web.accounts.models import Membership, Role
from pmpd_web.cohorts.models import Patient
from pmpd_web.imaging.deid import remap_uid
from pmpd_web.imaging.dicom_series import build_segmentation, encode, read_dicom
from pmpd_web.imaging.models import (
    CanonicalVolume,
    DicomInstance,
    ImageSeries,
    ImageUpload,
    ImagingStudy,
)
from pmpd_web.imaging.uploads import finish_upload

pytestmark = pytest.mark.django_db


def media_files(prefix: str) -> set[str]:
    root = Path(settings.MEDIA_ROOT) / prefix
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def snapshot() -> tuple:
    return (
        ImagingStudy.objects.count(),
        list(ImageSeries.objects.values_list("series_instance_uid", "content_hash", "is_selected")),
        DicomInstance.objects.count(),
        list(CanonicalVolume.objects.values_list("kind", "content_hash")),
        media_files("imaging"),
    )


def read_canonical(volume: CanonicalVolume) -> sitk.Image:
    return sitk.ReadImage(volume.file.path)


@pytest.fixture
def coordinator(members):
    return members["coordinator"]


@pytest.fixture
def phantom(cohort, tmp_path):
    """A small phantom patient in the cohort, with its CT as DICOM and mask as NIfTI on disk."""
    patient = small_patient()
    make_patient(cohort, patient.study_id, ct_manufacturer="")
    folder = tmp_path / "in" / patient.study_id
    dicom_series(patient, folder / "ct")
    write_volume(patient.mask, patient, folder / "mask.nii.gz")
    return patient, folder


# ----------------------------------------------------------------------------------------------
# What a good ingest stores


def test_dicom_series_with_nifti_mask(cohort, coordinator, phantom):
    patient, folder = phantom
    upload, job = ingest(cohort, coordinator, folder_files(folder.parent, "dropped/"))
    assert job.status == "succeeded", job.error
    assert upload.status == "done" and set(upload.files.values_list("status", flat=True)) == {
        "done"
    }
    assert job.result["ct_added"] == 1 and job.result["mask_added"] == 1

    ct = ImageSeries.objects.get(modality="CT")
    assert ct.is_selected and ct.study.patient.study_id == patient.study_id
    assert ct.n_instances == patient.ct.shape[0] == ct.instances.count()
    assert ct.manufacturer == patient.clinical["ct_manufacturer"]
    assert ct.slice_thickness_mm == patient.spacing[2]
    assert ct.pixel_spacing_mm == [patient.spacing[1], patient.spacing[0]]
    assert ct.geometry == {
        "size": [64, 64, patient.ct.shape[0]],
        "spacing": list(patient.spacing),
        "origin": list(patient.origin),
        "direction": list(patient.direction),
    }
    assert ct.contrast_phase == "portal_venous" and "portal venous" in ct.pick_reason
    # The patient's empty CT manufacturer is filled from the series.
    assert Patient.objects.get(study_id=patient.study_id).ct_manufacturer == ct.manufacturer

    # Stored instances: de-identified, explicit VR little endian, metadata without pixels.
    original = pydicom.dcmread(sorted((folder / "ct").iterdir())[0])
    assert ct.study.study_instance_uid == remap_uid(
        original.StudyInstanceUID,
        study_id=f"cohort-{cohort.pk}/{patient.study_id}",  # keyed by cohort and study ID
        secret=settings.PMPD_DEID_SECRET,
    )
    for instance in ct.instances.all()[:3]:
        with instance.file.open("rb") as handle:
            ds = pydicom.dcmread(handle)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert instance.transfer_syntax_uid == pydicom.uid.ExplicitVRLittleEndian
        assert ds.PatientName == patient.study_id and ds.PatientIdentityRemoved == "YES"
        assert not ds.get("InstitutionName") and not any(e.tag.is_private for e in ds)
        assert patient.identifiers["patient_id"] not in str(instance.metadata)
        assert "7FE00010" not in instance.metadata and instance.number_of_frames == 1
        assert instance.metadata["00080018"]["Value"] == [ds.SOPInstanceUID]
        assert instance.metadata["00100010"]["Value"] == [{"Alphabetic": patient.study_id}]
        assert instance.file.name.startswith("imaging/") and "PHX" not in instance.file.name

    # The SEG: one multi-frame instance referencing the CT instances, segments 1 and 2.
    seg = ImageSeries.objects.get(modality="SEG")
    assert seg.referenced_series == ct and seg.study == ct.study
    seg_instance = seg.instances.get()
    with seg_instance.file.open("rb") as handle:
        seg_ds = pydicom.dcmread(handle)
    assert seg_ds.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg_instance.number_of_frames == int(seg_ds.NumberOfFrames) > 1
    assert [s.SegmentLabel for s in seg_ds.SegmentSequence] == ["Pancreas", "Tumour"]
    referenced = seg_ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ct.series_instance_uid
    ct_uids = set(ct.instances.values_list("sop_instance_uid", flat=True))
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} <= ct_uids
    assert seg_ds.PatientID == patient.study_id and "7FE00010" not in seg_instance.metadata

    # Canonical volumes: the CT in HU and the mask 0/1/2, on the same grid, exactly.
    ct_volume = CanonicalVolume.objects.get(series=ct, kind="ct")
    mask_volume = CanonicalVolume.objects.get(series=ct, kind="mask")
    ct_image, mask_image = read_canonical(ct_volume), read_canonical(mask_volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct_image), patient.ct)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask_image), patient.mask)
    for image in (ct_image, mask_image):
        assert image.GetSpacing() == patient.spacing and image.GetOrigin() == patient.origin
        assert image.GetDirection() == patient.direction
    assert ct_volume.geometry == ct.geometry == mask_volume.geometry
    assert len(ct_volume.content_hash) == 64 and ct_volume.content_hash == ct.content_hash
    # The raw upload (identifiable) is gone.
    assert media_files("image-uploads") == set()


@pytest.mark.slow
@pytest.mark.parametrize(
    "transfer_syntax",
    [pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian],
    ids=lambda uid: uid.name,
)
def test_implicit_vr_and_big_endian_exports_are_ingested(
    cohort, coordinator, phantom, transfer_syntax
):
    patient, folder = phantom
    rewrite_transfer_syntax(sorted((folder / "ct").iterdir()), transfer_syntax)
    upload, job = ingest(cohort, coordinator, folder_files(folder.parent))
    assert job.status == "succeeded", job.error
    ct = ImageSeries.objects.get(modality="CT")
    volume = CanonicalVolume.objects.get(series=ct, kind="ct")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_canonical(volume)), patient.ct)
    with ct.instances.first().file.open("rb") as handle:
        stored = pydicom.dcmread(handle)
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert stored.PatientName == patient.study_id


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_truncated_duplicate_is_left_out_with_a_note_whatever_its_place(
    cohort, coordinator, phantom, where
):
    patient, folder = phantom
    files = folder_files(folder.parent)
    name = sorted(k for k in files if k.endswith(".dcm"))[4]
    copy = {f"{patient.study_id}/copy/CT-copy.dcm": files[name].read_bytes()[:-3000]}
    files = {**copy, **files} if where == "before" else {**files, **copy}
    upload, job = ingest(cohort, coordinator, files)
    assert job.status == "succeeded", job.error
    left_out = upload.files.get(client_name__endswith="CT-copy.dcm")
    assert left_out.status == "skipped"
    assert "an incomplete second copy of the SOP instance" in left_out.error
    ct = ImageSeries.objects.get(modality="CT")
    assert ct.n_instances == patient.ct.shape[0]
    assert any("CT-copy.dcm" in note for note in job.result["skipped"])


@pytest.mark.slow
def test_a_cd_export_with_a_dicomdir_and_stray_files(cohort, coordinator, phantom, tmp_path):
    """A CD/DVD export (DICOMDIR written by pydicom's FileSet, files without extensions) with
    the clutter that comes with it: the DICOMDIR and the non-image files are skipped with a
    note, never failing the upload (the DICOMDIR was refused: "no SOP Class UID")."""
    patient, folder = phantom
    file_set = FileSet()
    for path in sorted((folder / "ct").iterdir()):
        file_set.add(path)
    file_set.write(tmp_path / "cd" / patient.study_id)
    files = folder_files(tmp_path / "cd")
    assert f"{patient.study_id}/DICOMDIR" in files
    stray = {
        "README.TXT": b"This disc holds the images of one study.\n",
        "AUTORUN.INF": b"[autorun]\nopen=viewer.exe\n",
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "Thumbs.db": b"\xd0\xcf\x11\xe0",
        "MARKER": b"",
    }
    files |= {f"{patient.study_id}/{name}": data for name, data in stray.items()}
    files["LIESMICH.txt"] = b"at the root of a bulk upload, in no patient's folder"
    upload, job = ingest(cohort, coordinator, files)
    assert job.status == "succeeded", job.error
    ct = ImageSeries.objects.get(modality="CT")
    assert ct.n_instances == patient.ct.shape[0]
    notes = {f.client_name.split("/")[-1]: f for f in upload.files.filter(status="skipped")}
    assert "16 files listed" in notes["DICOMDIR"].error
    assert notes["README.TXT"].error.startswith("not an image")
    assert notes["MARKER"].error.startswith("an empty file")
    assert {"AUTORUN.INF", "LIESMICH.txt", ".DS_Store", "Thumbs.db"} <= set(notes)


@pytest.mark.slow
def test_a_bad_image_among_stray_files_fails_the_upload_with_its_reason_once(
    cohort, coordinator, stored
):
    patient, folder = stored
    files = folder_files(folder.parent)
    files[f"{patient.study_id}/README.txt"] = b"notes"
    files[f"{patient.study_id}/ct/CT9999.dcm"] = b"not an image at all" * 10
    upload = assert_refused(cohort, coordinator, files, "CT9999.dcm: not a format PMPD reads")
    assert upload.error.count("CT9999.dcm") == 1
    assert upload.files.get(client_name__endswith="README.txt").status == "skipped"


@pytest.mark.slow
def test_the_same_scan_for_two_patients_is_refused_unless_confirmed(
    cohort, coordinator, stored, tmp_path
):
    """A DICOM folder of one patient uploaded to another was ingested without a word."""
    patient, folder = stored
    make_patient(cohort, "UX-0003")
    files = {
        name.replace(patient.study_id, "UX-0003", 1): path
        for name, path in folder_files(folder.parent).items()
        if name.endswith(".dcm")
    }
    assert_refused(
        cohort,
        coordinator,
        files,
        f"the same scan .* is already stored for study ID {patient.study_id} of this cohort",
    )
    _, job = ingest(cohort, coordinator, files, confirm_shared_source=True)
    assert job.status == "succeeded", job.error
    assert ImageSeries.objects.filter(study__patient__study_id="UX-0003").count() == 1
    # Two patients of one bulk upload with the same new scan: the same rule.
    make_patient(cohort, "UX-0004")
    make_patient(cohort, "UX-0005")
    scan = dicom_series(small_patient(5), tmp_path / "another")
    both = {
        f"{study_id}/ct/{path.name}": path for path in scan for study_id in ("UX-0004", "UX-0005")
    }
    assert_refused(cohort, coordinator, both, "already stored for study ID UX-0004")


@pytest.mark.slow
def test_the_same_scan_under_the_same_study_id_in_two_cohorts(
    cohort, other_cohort, coordinator, phantom
):
    """The de-identified UIDs were keyed by study ID only: cohort B was refused ("already
    belongs to another patient") and learnt that the scan exists elsewhere."""
    patient, folder = phantom
    make_patient(other_cohort, patient.study_id)
    Membership.objects.create(user=coordinator, cohort=other_cohort, role=Role.COORDINATOR)
    for each in (cohort, other_cohort):
        _, job = ingest(each, coordinator, folder_files(folder.parent))
        assert job.status == "succeeded", job.error
    studies = ImagingStudy.objects.order_by("patient__cohort_id")
    assert studies.count() == 2
    assert studies[0].study_instance_uid != studies[1].study_instance_uid


@pytest.mark.slow
def test_a_repeated_upload_changes_nothing(cohort, coordinator, phantom):
    _, folder = phantom
    ingest(cohort, coordinator, folder_files(folder.parent))
    before = snapshot()
    _, job = ingest(cohort, coordinator, folder_files(folder.parent, "again/"))
    assert job.status == "succeeded", job.error
    assert job.result["ct_unchanged"] == 1 and job.result["mask_unchanged"] == 1
    assert job.result["ct_added"] == job.result["mask_added"] == 0
    assert snapshot() == before


@pytest.mark.slow
def test_pydicom_ct_series_and_a_mask_uploaded_later(cohort, coordinator, settings, tmp_path):
    """pydicom's 5-slice CT (16x16) needs a lower minimum; its mask arrives in a second upload."""
    settings.PMPD_INGEST_MIN_SLICES = 3
    make_patient(cohort, "REAL-CT5", ct_manufacturer="")
    files = {
        f"REAL-CT5/ct/{Path(p).name}": Path(p)
        for p in get_testdata_files("dicomdirtests/98892001/CT5N/*")
    }
    _, job = ingest(cohort, coordinator, files)
    assert job.status == "succeeded", job.error
    ct = ImageSeries.objects.get(modality="CT")
    assert ct.n_instances == 5 and ct.manufacturer == "GE MEDICAL SYSTEMS"
    assert not CanonicalVolume.objects.filter(kind="mask").exists()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(files[k]) for k in sorted(files)])
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(next(iter(files.values())).parent)))
    reference = reader.Execute()
    stored = read_canonical(CanonicalVolume.objects.get(kind="ct"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored), sitk.GetArrayFromImage(reference))
    # A mask drawn on that CT (NIfTI, labels 4 pancreas / 9 tumour), uploaded for the patient.
    mask = np.zeros(sitk.GetArrayFromImage(reference).shape, dtype=np.uint8)
    mask[1:4, 4:12, 4:12] = 4
    mask[2, 6:9, 6:9] = 9
    image = sitk.GetImageFromArray(mask)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(tmp_path / "m.nrrd"))
    patient = Patient.objects.get(study_id="REAL-CT5")
    _, job = ingest(
        cohort,
        coordinator,
        {"labels.nrrd": tmp_path / "m.nrrd"},
        patient=patient,
        label_pancreas=4,
        label_tumour=9,
    )
    assert job.status == "succeeded", job.error
    assert job.result["ct_unchanged"] == 0 and job.result["mask_added"] == 1
    canonical = sitk.GetArrayFromImage(read_canonical(CanonicalVolume.objects.get(kind="mask")))
    assert set(np.unique(canonical)) == {0, 1, 2} and (canonical == 2).sum() == 9
    assert ImageSeries.objects.get(modality="SEG").referenced_series == ct


@pytest.mark.slow
def test_nifti_ct_becomes_a_viewable_dicom_series(cohort, coordinator, tmp_path):
    patient = small_patient()
    make_patient(cohort, patient.study_id)
    write_volume(patient.ct, patient, tmp_path / "in/scan.nii.gz")
    write_volume(patient.mask, patient, tmp_path / "in/labels.nii.gz")
    files = {f"{patient.study_id}/{k}": v for k, v in folder_files(tmp_path / "in").items()}
    _, job = ingest(cohort, coordinator, files)
    assert job.status == "succeeded", job.error
    ct = ImageSeries.objects.get(modality="CT")
    assert "(from NIFTI)" in ct.description and ct.is_selected
    datasets = []
    for instance in ct.instances.order_by("instance_number"):
        with instance.file.open("rb") as handle:
            datasets.append(pydicom.dcmread(handle))
    assert len(datasets) == patient.ct.shape[0]
    assert datasets[0].SOPClassUID == pydicom.uid.CTImageStorage
    volume = np.stack([ds.pixel_array for ds in datasets])
    np.testing.assert_array_equal(volume, patient.ct)
    assert [float(v) for v in datasets[0].ImagePositionPatient] == list(patient.origin)
    ct_image = read_canonical(CanonicalVolume.objects.get(kind="ct"))
    assert ct_image.GetSpacing() == patient.spacing and ct_image.GetOrigin() == patient.origin
    assert ImageSeries.objects.get(modality="SEG").referenced_series == ct
    # Same files again: the generated UIDs are derived from the content, so nothing changes.
    before = snapshot()
    _, job = ingest(cohort, coordinator, files)
    assert job.result["ct_unchanged"] == 1 and snapshot() == before


@pytest.mark.slow
def test_nrrd_ct_and_metaimage_mask_with_separate_data_file(cohort, coordinator, tmp_path):
    patient = small_patient()
    make_patient(cohort, patient.study_id)
    write_volume(patient.ct, patient, tmp_path / "v/ct.nrrd")
    image = sitk.GetImageFromArray(patient.mask)
    image.SetSpacing(patient.spacing)
    image.SetOrigin(patient.origin)
    sitk.WriteImage(image, str(tmp_path / "v/labels.mhd"))  # writes labels.mhd + labels.raw
    assert (tmp_path / "v/labels.raw").exists()
    files = {f"{patient.study_id}/{k}": v for k, v in folder_files(tmp_path / "v").items()}
    _, job = ingest(cohort, coordinator, files)
    assert job.status == "succeeded", job.error
    mask = sitk.GetArrayFromImage(read_canonical(CanonicalVolume.objects.get(kind="mask")))
    np.testing.assert_array_equal(mask, patient.mask)
    ct = read_canonical(CanonicalVolume.objects.get(kind="ct"))
    assert ct.GetSpacing() == patient.spacing and ct.GetOrigin() == patient.origin


def test_dicom_seg_as_the_mask(cohort, coordinator, phantom, tmp_path):
    patient, folder = phantom
    sources = [read_dicom(p, label=p.name).dataset for p in sorted((folder / "ct").iterdir())]
    labelled = patient.mask.copy()
    labelled[:3] = 0  # the platform's SEG then references only the slices it labels
    seg = build_segmentation(
        sources, labelled, series_uid="1.2.826.0.1.1", sop_uid="1.2.826.0.1.2", content_date=""
    )
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) < len(sources)
    (folder / "mask.nii.gz").unlink()
    (folder / "seg.dcm").write_bytes(encode(seg))
    _, job = ingest(cohort, coordinator, folder_files(folder.parent))
    assert job.status == "succeeded", job.error
    mask = sitk.GetArrayFromImage(read_canonical(CanonicalVolume.objects.get(kind="mask")))
    np.testing.assert_array_equal(mask, labelled)


@pytest.mark.slow
def test_a_label_map_seg_as_ohif_writes_it_on_part_of_the_slices(cohort, coordinator, phantom):
    patient, folder = phantom
    sources = [read_dicom(p, label=p.name).dataset for p in sorted((folder / "ct").iterdir())]
    mask = patient.mask.copy()
    mask[:4] = 0
    (folder / "mask.nii.gz").unlink()
    ohif_seg(sources, mask, label_map=True).save_as(folder / "seg.dcm", enforce_file_format=True)
    _, job = ingest(cohort, coordinator, folder_files(folder.parent))
    assert job.status == "succeeded", job.error
    stored = sitk.GetArrayFromImage(read_canonical(CanonicalVolume.objects.get(kind="mask")))
    np.testing.assert_array_equal(stored, mask)


@pytest.mark.slow
def test_bulk_zip_with_folders_and_a_manifest(cohort, coordinator, tmp_path):
    first, second = small_patient(2, study_id="BULK-1"), small_patient(5, study_id="BULK-2")
    for patient in (first, second):
        make_patient(cohort, patient.study_id)
    dicom_series(first, tmp_path / "a" / "BULK-1" / "ct")
    write_volume(first.mask, first, tmp_path / "a" / "BULK-1" / "seg.nii.gz")
    # The second patient's files sit in folders that do not name it: the manifest does.
    write_volume(second.ct, second, tmp_path / "a" / "scans" / "x" / "volume.nii.gz")
    write_volume(second.mask, second, tmp_path / "a" / "scans" / "x" / "labels.nii.gz")
    files = {f"export/{k}": v for k, v in folder_files(tmp_path / "a").items()}
    files["export/manifest.csv"] = b"file;study_id\nscans/x;BULK-2\n"
    upload, job = ingest(cohort, coordinator, {"cohort.zip": zip_of(files)})
    assert job.status == "succeeded", job.error
    assert (
        job.result["patients"] == 2
        and job.result["ct_added"] == 2
        and job.result["mask_added"] == 2
    )
    assert upload.files.get().detected_kind.startswith("ZIP of")
    assert {
        s.study.patient.study_id
        for s in ImageSeries.objects.filter(modality="CT", is_selected=True)
    } == {"BULK-1", "BULK-2"}


@pytest.mark.slow
def test_several_series_the_pick_and_the_coordinators_choice(
    cohort, coordinator, phantom, client_for
):
    patient, folder = phantom
    # A second, arterial reconstruction of the same study (other series UID and description).
    arterial = folder / "arterial"
    arterial.mkdir()
    for path in sorted((folder / "ct").iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["arterial"])
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["arterial", path.name])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "Arterial phase 1 mm"
        ds.SeriesNumber = 2
        ds.save_as(arterial / path.name)
    (folder / "mask.nii.gz").unlink()
    _, job = ingest(cohort, coordinator, folder_files(folder.parent))
    assert job.status == "succeeded", job.error
    cts = ImageSeries.objects.filter(modality="CT")
    assert cts.count() == 2
    selected = cts.get(is_selected=True)
    assert selected.contrast_phase == "portal_venous"
    other = cts.exclude(pk=selected.pk).get()
    assert other.contrast_phase == "arterial"
    response = client_for(coordinator).post(
        f"/cohorts/{cohort.pk}/patients/{patient.study_id}/images/select/", {"series": other.pk}
    )
    assert response.status_code == 302
    other.refresh_from_db()
    assert other.is_selected and other.picked_by == coordinator
    assert cts.filter(is_selected=True).count() == 1
    # A coordinator's pick survives a new upload of the same patient.
    write_volume(patient.mask, patient, folder / "mask.nii.gz")
    _, job = ingest(cohort, coordinator, folder_files(folder.parent))
    assert job.status == "succeeded", job.error
    assert cts.get(is_selected=True) == other


# ----------------------------------------------------------------------------------------------
# Bad input: a clear message, nothing changed


def assert_refused(cohort, coordinator, files: dict, message: str, **kwargs) -> ImageUpload:
    before = snapshot()
    upload, job = ingest(cohort, coordinator, files, **kwargs)
    assert job.status == "failed", job.result
    assert message in job.error or __import__("re").search(message, job.error), job.error
    assert "nothing was changed" in job.error
    assert upload.status == "failed" and upload.error == job.error
    assert upload.files.filter(status="failed").exists()
    assert snapshot() == before
    assert media_files("image-uploads") == set()
    return upload


@pytest.fixture
def stored(cohort, coordinator, phantom):
    """The phantom patient already ingested: a failure must leave it as it is."""
    _, folder = phantom
    ingest(cohort, coordinator, folder_files(folder.parent))
    return phantom


@pytest.mark.slow
def test_truncated_dicom_file(cohort, coordinator, stored, tmp_path):
    patient, folder = stored
    files = folder_files(folder.parent)
    name = sorted(k for k in files if k.endswith(".dcm"))[4]
    data = files[name].read_bytes()
    files[name] = data[: len(data) - 3000]
    upload = assert_refused(
        cohort, coordinator, files, "the file is truncated: its pixel data hold"
    )
    failed = upload.files.get(status="failed")
    assert failed.client_name == name and "truncated" in failed.error


@pytest.mark.slow
def test_non_dicom_file_named_dcm(cohort, coordinator, stored):
    _, folder = stored
    files = folder_files(folder.parent)
    files[f"{stored[0].study_id}/ct/CT9999.dcm"] = b"Patient notes, not an image.\n" * 20
    assert_refused(cohort, coordinator, files, "CT9999.dcm: not a format PMPD reads")


@pytest.mark.slow
def test_mr_series(cohort, coordinator, stored):
    study_id = stored[0].study_id
    files = {
        f"{study_id}/mr/{Path(p).name}": Path(p)
        for p in get_testdata_files("dicomdirtests/98892003/MR700/*")
    }
    assert_refused(cohort, coordinator, files, "modality MR")


@pytest.mark.slow
def test_single_slice(cohort, coordinator, stored):
    files = {f"{stored[0].study_id}/CT_small.dcm": Path(get_testdata_file("CT_small.dcm"))}
    assert_refused(cohort, coordinator, files, "CT_small.dcm: 1 slice: a CT needs at least 8")


@pytest.mark.slow
def test_mask_on_another_grid(cohort, coordinator, stored, tmp_path):
    patient, _ = stored
    path = write_volume(patient.mask[:-2], patient, tmp_path / "short.nii.gz")
    files = {f"{patient.study_id}/short.nii.gz": path}
    assert_refused(
        cohort, coordinator, files, "short.nii.gz: the mask is not on the CT's grid: size"
    )


@pytest.mark.slow
def test_mask_without_tumour(cohort, coordinator, stored, tmp_path):
    patient, folder = stored
    no_tumour = np.where(patient.mask == 2, 1, patient.mask).astype(np.uint8)
    write_volume(no_tumour, patient, folder / "mask.nii.gz")
    assert_refused(cohort, coordinator, folder_files(folder.parent), "no tumour voxels (label 2)")


@pytest.mark.slow
def test_empty_zip(cohort, coordinator, stored):
    assert_refused(
        cohort,
        coordinator,
        {"empty.zip": b"PK\x05\x06" + b"\x00" * 18},
        "empty.zip: the ZIP archive is empty",
    )


@pytest.mark.slow
def test_zip_slip(cohort, coordinator, stored):
    data = zip_of({"../../../../tmp/evil.dcm": b"x", "PHX-0003/a.dcm": b"y"})
    assert_refused(
        cohort, coordinator, {"evil.zip": data}, "points outside the archive's folder (zip slip)"
    )
    assert not Path("/tmp/evil.dcm").exists()


@pytest.mark.slow
def test_zip_bomb(cohort, coordinator, stored, settings):
    settings.PMPD_ARCHIVE_MAX_RATIO = 50
    data = zip_of({f"{stored[0].study_id}/zeros.nii": b"\0" * (30 * 1024 * 1024)})
    assert len(data) < 100_000
    assert_refused(cohort, coordinator, {"bomb.zip": data}, "refused as a zip bomb")


@pytest.mark.slow
def test_nested_archive(cohort, coordinator, stored):
    inner = zip_of({"a.dcm": b"x"})
    assert_refused(
        cohort,
        coordinator,
        {"outer.zip": zip_of({"P/inner.zip": inner})},
        "an archive inside the archive",
    )


@pytest.mark.slow
def test_unknown_study_id_and_no_study_id(
    cohort, coordinator, stored, tmp_path, django_capture_on_commit_callbacks
):
    patient, folder = stored
    files = {f"NOT-A-PATIENT/ct/{k}": v for k, v in folder_files(folder / "ct").items()}
    assert_refused(cohort, coordinator, files, "no study ID: put it in a folder named after")
    upload = upload_files(cohort, coordinator, {"x.dcm": b"y"})
    upload.files.update(study_id="GHOST")
    with django_capture_on_commit_callbacks(execute=True):
        job = finish_upload(upload, coordinator)
    job.refresh_from_db()
    assert "study ID 'GHOST' is not a patient of this cohort" in job.error


@pytest.mark.slow
def test_files_of_two_patients_mixed(cohort, coordinator, stored, tmp_path):
    patient, folder = stored
    other = small_patient(5)
    dicom_series(other, tmp_path / "other")
    files = folder_files(folder.parent)
    files.update(
        {f"{patient.study_id}/other/{k}": v for k, v in folder_files(tmp_path / "other").items()}
    )
    assert_refused(
        cohort, coordinator, files, "different patient IDs: files of several patients are mixed"
    )


def test_over_the_size_limits(cohort, coordinator, settings, client_for):
    from pmpd_web.imaging.uploads import DeclaredFile, TooLarge, create_upload, declare_files

    settings.PMPD_UPLOAD_MAX_FILE_BYTES = 1000
    settings.PMPD_UPLOAD_MAX_BYTES = 1500
    upload = create_upload(cohort=cohort, user=coordinator)
    with pytest.raises(TooLarge, match="1001 bytes is over the limit of 1000 bytes per file"):
        declare_files(upload, [DeclaredFile(name="big.nii", size=1001)])
    with pytest.raises(TooLarge, match="over the limit of 1500 bytes per upload"):
        declare_files(upload, [DeclaredFile(name="a", size=900), DeclaredFile(name="b", size=900)])
    assert upload.files.count() == 0
    client = client_for(coordinator)
    response = client.post(
        f"/api/cohorts/{cohort.pk}/image-uploads/{upload.pk}/files/",
        {"files": [{"name": "big.nii", "size": 5000}]},
        content_type="application/json",
    )
    assert response.status_code == 413 and "per file" in response.json()["detail"]


@pytest.mark.slow
def test_the_temporary_files_stay_inside_the_scratch_folder(
    cohort, coordinator, stored, tmp_path, settings
):
    """Uploaded names are never used as paths: entry names with slashes, dots or a drive land
    under generated names in the scratch folder, which is gone afterwards."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    settings.PMPD_INGEST_WORK_DIR = str(scratch)
    patient, folder = stored
    files = {
        f"{patient.study_id}/..hidden/./{k}": v for k, v in folder_files(folder / "ct").items()
    }
    _, job = ingest(cohort, coordinator, files)
    assert job.status == "succeeded", job.error
    assert list(scratch.iterdir()) == []
    shutil.rmtree(scratch)


def test_the_job_runs_on_the_cpu_queue():
    from pmpd_web.celery import app
    from pmpd_web.imaging.tasks import ingest_upload_task

    assert app.amqp.router.route({}, ingest_upload_task.name)["queue"].name == "cpu"
    assert ingest_upload_task.max_retries == settings.CELERY_TASK_MAX_RETRIES


@pytest.mark.slow
def test_metadata_of_stored_series_is_dicom_json(cohort, coordinator, stored):
    instance = DicomInstance.objects.filter(series__modality="CT").first()
    with instance.file.open("rb") as handle:
        ds = pydicom.dcmread(handle)
    del ds.PixelData
    expected = ds.to_json_dict()
    assert instance.metadata == expected
    assert io  # the module is used by other tests


@pytest.mark.slow
def test_a_mask_added_to_a_ct_that_came_as_a_volume(cohort, coordinator, tmp_path):
    patient = small_patient()
    make_patient(cohort, patient.study_id)
    ct = write_volume(patient.ct, patient, tmp_path / "ct.nii.gz")
    mask = write_volume(patient.mask, patient, tmp_path / "mask.nii.gz")
    _, job = ingest(cohort, coordinator, {f"{patient.study_id}/ct.nii.gz": ct})
    assert job.status == "succeeded", job.error
    _, job = ingest(
        cohort,
        coordinator,
        {f"{patient.study_id}/ct.nii.gz": ct, f"{patient.study_id}/mask.nii.gz": mask},
    )
    assert job.status == "succeeded", job.error
    assert job.result["ct_unchanged"] == 1 and job.result["mask_added"] == 1
    seg = ImageSeries.objects.get(modality="SEG")
    with seg.instances.get().file.open("rb") as handle:
        referenced = pydicom.dcmread(handle).ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == ImageSeries.objects.get(modality="CT").series_instance_uid


@pytest.mark.slow
def test_the_ingest_images_command(cohort, coordinator, phantom, capsys):
    from django.core.management import call_command

    _, folder = phantom
    call_command("ingest_images", str(folder.parent), cohort=cohort.name, user="coordinator")
    assert "1 patients; CT series added 1" in capsys.readouterr().out
    upload = ImageUpload.objects.get()
    assert upload.status == "done" and upload.uploaded_by == coordinator
    archive = folder.parent.parent / "all.zip"
    archive.write_bytes(zip_of(folder_files(folder.parent)))
    call_command("ingest_images", str(archive), cohort=str(cohort.pk))
    assert "unchanged 1" in capsys.readouterr().out
    with pytest.raises(Exception, match="No cohort named"):
        call_command("ingest_images", str(archive), cohort="nope")
    call_command("ingest_images", str(archive), cohort=str(cohort.pk), confirm_shared_source=True)
    assert ImageUpload.objects.latest("pk").confirm_shared_source


def ingest_with_statements(cohort, coordinator, folder: Path, starting: str):
    """The ingest job of the patient folder ``folder``, and the SQL statements it ran that
    begin with ``starting``."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        _, job = ingest(cohort, coordinator, folder_files(folder.parent, "dropped/"))
    return job, [q["sql"] for q in queries.captured_queries if q["sql"].startswith(starting)]


@pytest.mark.slow
def test_the_written_files_are_recorded_per_series_not_per_instance(cohort, coordinator, phantom):
    """Issue 10 (ingest speed): each stored file was recorded on the job in its own transaction
    (a locked read and a rewrite of the growing list per slice); a series' instances are now
    recorded in one update before they are written, and still all deleted when it fails."""
    patient, folder = phantom
    job, records = ingest_with_statements(
        cohort, coordinator, folder, 'UPDATE "jobs_job" SET "written_files"'
    )
    assert job.status == "succeeded", job.error
    assert patient.ct.shape[0] > 10
    # the instances (one update), the CT and mask volumes, the SEG, and the commit's reset
    assert 2 <= len(records) <= 5, len(records)
    assert job.written_files == []


@pytest.mark.slow
def test_the_canonical_ct_is_a_plain_nifti_and_the_mask_gzipped(cohort, coordinator, phantom):
    """Issue 10 (ingest speed): gzip of the canonical CT was the longest step after the DICOM
    work; by default (PMPD_CANONICAL_GZIP_LEVEL=0) it is stored as a plain .nii with the same
    voxels and grid, while the mostly-zero mask is still gzipped."""
    patient, folder = phantom
    _, job = ingest(cohort, coordinator, folder_files(folder.parent, "dropped/"))
    assert job.status == "succeeded", job.error
    ct = CanonicalVolume.objects.get(kind=CanonicalVolume.Kind.CT)
    mask = CanonicalVolume.objects.get(kind=CanonicalVolume.Kind.MASK)
    assert ct.file.name.endswith("/ct.nii") and mask.file.name.endswith("/mask.nii.gz")
    with ct.file.open("rb") as handle:
        assert handle.read(2) != b"\x1f\x8b"  # not gzip
    with mask.file.open("rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"
    image = read_canonical(ct)
    assert np.array_equal(sitk.GetArrayFromImage(image), patient.ct)
    assert image.GetSpacing() == pytest.approx(patient.spacing)
    assert np.array_equal(sitk.GetArrayFromImage(read_canonical(mask)), patient.mask)


@pytest.mark.slow
def test_dicom_files_are_read_where_they_were_received(cohort, coordinator, phantom, monkeypatch):
    """Issue 10 (ingest speed): every received DICOM file got a symbolic link in the scratch
    folder (created, then deleted with it: ~3 ms a file on a busy disk); only volume files,
    whose readers go by the suffix, still get one."""
    made: list[str] = []
    original = Path.symlink_to
    monkeypatch.setattr(
        Path, "symlink_to", lambda self, *a, **k: (made.append(self.name), original(self, *a, **k))
    )
    patient, folder = phantom
    _, job = ingest(cohort, coordinator, folder_files(folder.parent, "dropped/"))
    assert job.status == "succeeded", job.error
    assert ImageSeries.objects.get(modality="CT").n_instances == patient.ct.shape[0]
    assert made == ["link-000001.nii.gz"]  # the mask only


def test_the_instances_are_inserted_with_a_json_parameter_each(cohort, coordinator, phantom):
    """Issue 10 (ingest speed): Django's bulk insert on PostgreSQL sent the instances' DICOM
    JSON as one jsonb[] array literal (UNNEST), whose quoting of every double quote cost more
    than the insert; each row's JSON is now a parameter of its own."""
    patient, folder = phantom
    job, inserts = ingest_with_statements(
        cohort, coordinator, folder, 'INSERT INTO "imaging_dicominstance"'
    )
    assert job.status == "succeeded", job.error
    assert inserts and not any("UNNEST" in sql for sql in inserts)
    ct = ImageSeries.objects.get(modality="CT")
    assert ct.instances.count() == patient.ct.shape[0]
    first = ct.instances.order_by("instance_number").first()
    assert first.metadata["00200013"]["Value"] == [1]


def test_the_worker_heap_is_left_out_of_collections_during_the_ingest(
    cohort, coordinator, phantom, monkeypatch
):
    """Issue 10 (ingest speed): collections of the oldest generation, set off by the objects
    an ingest creates, walked the worker's whole heap several times per series; the heap is
    frozen while an ingest runs, and unfrozen after it, whether it succeeds or fails."""
    import gc

    from pmpd_web.imaging.ingest import job as ingest_job

    seen: list[int] = []
    original = ingest_job.prepare_patient

    def prepare(*args, **kwargs):
        seen.append(gc.get_freeze_count())
        return original(*args, **kwargs)

    monkeypatch.setattr(ingest_job, "prepare_patient", prepare)
    before = gc.get_freeze_count()
    patient, folder = phantom
    _, job = ingest(cohort, coordinator, folder_files(folder.parent, "dropped/"))
    assert job.status == "succeeded", job.error
    assert seen and seen[0] > before and gc.get_freeze_count() == before
    _, job = ingest(cohort, coordinator, {f"{patient.study_id}/x.dcm": b"not a DICOM file"})
    assert job.status == "failed" and gc.get_freeze_count() == before
