"""STOW-RS of a reader's corrected SEG: accepted from users who may annotate, with the
platform's Origin, for SEGs on the patient's stored CT; the SEG becomes a mask version "edited
by NAME" whose voxels differ where painted, and approval makes it what preprocessing reads.
Everything else is refused with the reason and nothing stored."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from imagemaker import ingest_phantom, ohif_seg, rle_bitmap
from permission_table import C, K, R
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sr.codedict import codes
from rest_framework.test import APIClient

from inference.cache import patient_images
from pmpd_web.accounts.models import Membership, Role
from pmpd_web.cohorts.models import Patient
from pmpd_web.imaging.dicom_series import build_segmentation
from pmpd_web.imaging.ingest.outputs import stored_sources
from pmpd_web.imaging.mask_versions import approve, read_mask
from pmpd_web.imaging.models import DicomInstance, ImageSeries, MaskVersion

pytestmark = pytest.mark.django_db
ORIGIN = "http://testserver"


@pytest.fixture
def patient_ct(cohort, members, tmp_path):
    case = ingest_phantom(cohort, members[C], tmp_path / "in")
    ct = ImageSeries.objects.get(modality="CT", study__patient__study_id=case.study_id)
    return case, ct


def painted(mask: np.ndarray) -> tuple[np.ndarray, tuple]:
    """The mask with a brush stroke of tumour beside the existing tumour."""
    edited = mask.copy()
    z = int(np.nonzero(mask == 2)[0].mean())
    _, y, x = (int(v.mean()) for v in np.nonzero(mask == 2))
    stroke = (z, slice(y - 2, y + 3), slice(x + 4, x + 9))
    edited[stroke] = 2
    return edited, stroke


def ohif_like_seg(ct: ImageSeries, mask: np.ndarray) -> pydicom.Dataset:
    seg = build_segmentation(
        stored_sources(ct),
        mask,
        series_uid=pydicom.uid.generate_uid(),
        sop_uid=pydicom.uid.generate_uid(),
        content_date="",
    )
    seg.SeriesDescription = "Research Derived series"
    return seg


def part10(seg: pydicom.Dataset) -> bytes:
    """The Part 10 file in the dataset's own transfer syntax (OHIF's RLE bitmaps stay RLE)."""
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(seg: pydicom.Dataset) -> tuple[bytes, str]:
    boundary = "3f1a0c2e-boundary"
    body = (
        f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10(seg)
        + f"\r\n--{boundary}--".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary="{boundary}"'


def stow(user, seg: pydicom.Dataset, *, origin: str | None = ORIGIN):
    client = APIClient()
    client.force_login(user)
    body, content_type = multipart(seg)
    headers = {"HTTP_ORIGIN": origin} if origin else {}
    return client.generic("POST", "/dicomweb/studies", body, content_type=content_type, **headers)


def nothing_stored(before: int) -> None:
    assert MaskVersion.objects.count() == before
    assert (
        DicomInstance.objects.filter(sop_class_uid__startswith="1.2.840.10008.5.1.4.1.1.66").count()
        == before
    )


def test_a_readers_painted_seg_becomes_an_edited_version_and_approval_feeds_preprocessing(
    patient_ct, members
):
    case, ct = patient_ct
    reader = members[R]
    reader.first_name, reader.last_name = "Rosa", "Reader"
    reader.save()
    edited, stroke = painted(case.mask)
    seg = ohif_like_seg(ct, edited)
    response = stow(reader, seg)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom+json"
    referenced = response.json()["00081199"]["Value"][0]
    assert referenced["00081155"]["Value"] == [str(seg.SOPInstanceUID)]

    version = MaskVersion.objects.get(source="edited")
    assert version.provenance == "edited by Rosa Reader" and version.status == "needs_review"
    assert version.edited_from.number == 1 and version.produced_by == reader
    stored = read_mask(version)
    before = read_mask(MaskVersion.objects.get(number=1))
    changed = stored != before
    assert changed.any() and (stored[stroke] == 2).all()
    outside = np.ones_like(changed)
    outside[stroke] = False
    assert not changed[outside].any()  # differs only where painted
    assert version.seg_series.instances.get().sop_instance_uid == str(seg.SOPInstanceUID)

    patient = Patient.objects.get(study_id=case.study_id)
    approve(version, reader)
    assert patient_images(patient).mask.content_hash == version.content_hash


@pytest.mark.parametrize("label_map", [False, True], ids=["bitmap", "label map"])
def test_ohifs_rle_segs_are_decoded_stored_uncompressed_and_served(patient_ct, members, label_map):
    """OHIF writes RLE Lossless: its bitmap mode with 1 bit allocated, which pydicom's decoder
    refuses, its label maps with 8. The platform decodes both, stores them uncompressed (as
    it serves every object) and serves their frames."""
    case, ct = patient_ct
    edited, _ = painted(case.mask)
    response = stow(members[R], ohif_seg(stored_sources(ct), edited, label_map=label_map))
    assert response.status_code == 200, response.content
    version = MaskVersion.objects.get(source="edited")
    np.testing.assert_array_equal(read_mask(version), edited)
    instance = version.seg_series.instances.get()
    with instance.file.open("rb") as handle:
        stored = pydicom.dcmread(handle)
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert stored.pixel_array.shape == (int(stored.NumberOfFrames), *case.mask.shape[1:])
    client = APIClient()
    client.force_login(members[R])
    frame = client.get(
        f"/dicomweb/studies/{ct.study.study_instance_uid}/series/"
        f"{version.seg_series.series_instance_uid}/instances/{instance.sop_instance_uid}/frames/1",
        HTTP_ACCEPT='multipart/related; type="application/octet-stream"; transfer-syntax=*',
    )
    assert frame.status_code == 200


def test_a_bitmap_seg_with_an_undecodable_frame_is_refused(patient_ct, members):
    case, ct = patient_ct
    seg = rle_bitmap(ohif_like_seg(ct, painted(case.mask)[0]))
    frames = list(generate_frames(seg.PixelData, number_of_frames=int(seg.NumberOfFrames)))
    frames[1] = (2).to_bytes(4, "little") + frames[1][4:]  # says two RLE segments
    seg.PixelData = encapsulate(frames)
    response = stow(members[R], seg)
    assert response.status_code == 400
    assert "frame 2 has 2 RLE segments" in response.json()["error"]
    nothing_stored(1)


@pytest.mark.slow
@pytest.mark.parametrize("origin", [None, "https://elsewhere.example"])
def test_a_session_post_without_the_platforms_origin_is_refused(patient_ct, members, origin):
    case, ct = patient_ct
    response = stow(members[R], ohif_like_seg(ct, painted(case.mask)[0]), origin=origin)
    assert response.status_code == 403 and "own pages" in response.json()["error"]
    nothing_stored(1)


@pytest.mark.slow
def test_a_role_that_may_not_annotate_is_refused(patient_ct, members):
    case, ct = patient_ct
    response = stow(members[K], ohif_like_seg(ct, painted(case.mask)[0]))
    assert response.status_code == 403 and "annotate" in response.json()["error"]
    nothing_stored(1)


@pytest.mark.slow
def test_a_non_seg_object_is_refused(patient_ct, members):
    _, ct = patient_ct
    with ct.instances.first().file.open("rb") as handle:
        ct_slice = pydicom.dcmread(handle)
    response = stow(members[R], ct_slice)
    assert response.status_code == 409 and "Only DICOM SEG objects" in response.json()["error"]
    nothing_stored(1)


@pytest.mark.slow
def test_a_seg_of_another_cohorts_patient_is_refused(patient_ct, members, other_cohort, tmp_path):
    case, ct = patient_ct
    outsider = members["outsider"]
    Membership.objects.filter(user=outsider).update(role=Role.READER)
    ingest_phantom(other_cohort, outsider, tmp_path / "other", index=5, study_id="OTHER-1")
    response = stow(outsider, ohif_like_seg(ct, painted(case.mask)[0]))
    assert response.status_code == 409
    assert "no CT series stored for a patient you can see" in response.json()["error"]
    nothing_stored(2)


@pytest.mark.slow
def test_a_seg_naming_another_patients_study_is_refused(patient_ct, members):
    case, ct = patient_ct
    seg = ohif_like_seg(ct, painted(case.mask)[0])
    seg.StudyInstanceUID = pydicom.uid.generate_uid()
    response = stow(members[R], seg)
    assert response.status_code == 409 and "another patient" in response.json()["error"]
    nothing_stored(1)


@pytest.mark.slow
def test_a_seg_on_another_grid_is_refused(patient_ct, members):
    case, ct = patient_ct
    seg = ohif_like_seg(ct, painted(case.mask)[0])
    seg.FrameOfReferenceUID = pydicom.uid.generate_uid()
    response = stow(members[R], seg)
    assert response.status_code == 409 and "not on its grid" in response.json()["error"]
    nothing_stored(1)


@pytest.mark.slow
def test_an_empty_seg_is_refused(patient_ct, members):
    case, ct = patient_ct
    seg = ohif_like_seg(ct, painted(case.mask)[0])
    seg.PixelData = bytes(len(seg.PixelData))
    response = stow(members[R], seg)
    assert response.status_code == 409 and "empty" in response.json()["error"]
    nothing_stored(1)


@pytest.mark.slow
def test_overlapping_segments_are_refused(patient_ct, members):
    case, ct = patient_ct
    sources = stored_sources(ct)
    pancreas = (case.mask > 0).astype(np.uint8)  # the tumour inside the pancreas segment too
    tumour = (case.mask == 2).astype(np.uint8)
    labelled = np.flatnonzero(pancreas.reshape(len(sources), -1).any(axis=1))
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label in ((1, "Pancreas"), (2, "Tumour"))
    ]
    seg = hd.seg.Segmentation(
        source_images=[sources[i] for i in labelled],
        pixel_array=np.stack([pancreas, tumour], axis=-1)[labelled],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=3101,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
        manufacturer="OHIF",
        manufacturer_model_name="OHIF Brush",
        software_versions="3.13",
        device_serial_number="none",
    )
    response = stow(members[R], seg)
    assert response.status_code == 409 and "overlap" in response.json()["error"]
    nothing_stored(1)
