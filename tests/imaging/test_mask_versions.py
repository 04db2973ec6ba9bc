"""Mask versions: uploaded masks are approved versions; automatic and edited versions need
review and never reach PMPD until approved; approval moves what preprocessing reads, supersedes
the previous version and measures the correction (Dice per label); who may approve; the audit
trail; and the data migration of masks stored before versions existed."""

from __future__ import annotations

import importlib
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from django.apps import apps as django_apps
from engine_fixtures import add_phantom_patient, phantom
from imagemaker import ingest_phantom
from permission_table import USERS, C, K, R, assert_answer_for
from rest_framework.test import APIClient

from inference.cache import input_hash_for, patient_images
from inference.pmpd.preprocess import PreprocessConfig, PreprocessError
from pmpd_web.accounts.models import AuditEvent
from pmpd_web.cohorts.models import Patient
from pmpd_web.imaging.mask_versions import NO_TUMOUR_FLAG, approve, read_mask, store_mask_version
from pmpd_web.imaging.models import CanonicalVolume, ImageSeries, MaskVersion
from pmpd_web.imaging.patient_viewer import correction_url
from pmpd_web.jobs.runner import UserFacingError

pytestmark = pytest.mark.django_db
CONFIG = PreprocessConfig()


@pytest.fixture
def reader(members):
    """The cohort's reader (``members`` has one user per role)."""
    return members[R]


@pytest.fixture
def uploaded(cohort, members, tmp_path):
    """A phantom patient ingested from DICOM with its NIfTI mask: version 1, uploaded."""
    case = ingest_phantom(cohort, members[C], tmp_path / "in")
    return case, Patient.objects.get(study_id=case.study_id)


def corrected(mask: np.ndarray) -> np.ndarray:
    """The mask with the tumour grown by a block of pancreas voxels (a reader's correction)."""
    edited = mask.copy()
    z, y, x = np.nonzero(mask == 2)
    edited[z.min() : z.max() + 1, y.min() : y.max() + 1, x.max() + 1 : x.max() + 3] = 2
    return edited


@pytest.mark.slow
def test_an_uploaded_mask_is_an_approved_version_with_its_seg(uploaded):
    case, patient = uploaded
    version = MaskVersion.objects.get(patient=patient)
    assert (version.number, version.source, version.status) == (1, "uploaded", "approved")
    assert version.provenance == "uploaded" and version.reviewed_by.username == C
    assert version.seg_series.modality == "SEG" and version.seg_series.instances.count() == 1
    assert version.tumour_voxels == int((case.mask == 2).sum()) > 0
    canonical = CanonicalVolume.objects.get(patient=patient, kind="mask")
    assert canonical.file.name == version.file.name
    assert canonical.content_hash == version.content_hash
    np.testing.assert_array_equal(read_mask(version), case.mask)


@pytest.mark.slow
def test_automatic_versions_need_review_and_preprocessing_reads_approved_only(
    uploaded, members, reader
):
    case, patient = uploaded
    ct = ImageSeries.objects.get(modality="CT")
    before = input_hash_for(patient, CONFIG)
    automatic = store_mask_version(
        ct_series=ct,
        mask=corrected(case.mask),
        source=MaskVersion.Source.AUTOMATIC,
        source_label="nnU-Net model 'phantoms' v1",
        uncertainty=0.12,
    )
    assert (automatic.number, automatic.status) == (2, "needs_review")
    assert automatic.provenance == "automatic: nnU-Net model 'phantoms' v1"
    assert automatic.seg_series.referenced_series == ct and automatic.flags == []
    # Not approved: preprocessing still reads the uploaded mask.
    assert input_hash_for(patient, CONFIG) == before
    assert (
        patient_images(patient).mask.content_hash == MaskVersion.objects.get(number=1).content_hash
    )

    approved = approve(automatic, reader, note="checked")
    assert approved.status == "approved" and approved.reviewed_by == reader
    assert MaskVersion.objects.get(number=1).status == "superseded"
    assert patient_images(patient).mask.content_hash == automatic.content_hash
    assert input_hash_for(patient, CONFIG) != before
    assert approved.dice_vs_automatic == {
        "2": {"model": "nnU-Net model 'phantoms' v1", "pancreas": 1.0, "tumour": 1.0}
    }
    # The reader's edit of the automatic version: Dice of the automatic one against it.
    edited_mask = corrected(corrected(case.mask))
    edited = store_mask_version(
        ct_series=ct,
        mask=edited_mask,
        source=MaskVersion.Source.EDITED,
        source_label="reader",
        user=reader,
        edited_from=automatic,
    )
    assert edited.provenance == "edited by reader" and edited.produced_by == reader
    approve(edited, members[C])
    edited.refresh_from_db()
    auto_mask = corrected(case.mask)
    a, b = edited_mask == 2, auto_mask == 2
    expected = round(2 * int((a & b).sum()) / (int(a.sum()) + int(b.sum())), 4)
    assert edited.dice_vs_automatic["2"]["tumour"] == expected < 1.0
    assert list(MaskVersion.objects.filter(status="approved")) == [edited]
    actions = list(
        AuditEvent.objects.filter(patient=patient).values_list("action", flat=True).order_by("id")
    )
    assert [a for a in actions if "mask" in a] == [
        "store_mask_version",
        "approve_mask_version",
        "store_mask_version",
        "approve_mask_version",
    ]


@pytest.mark.slow
def test_a_mask_without_tumour_is_stored_flagged_and_cannot_be_approved(uploaded, reader):
    case, patient = uploaded
    ct = ImageSeries.objects.get(modality="CT")
    without = np.where(case.mask == 2, 1, case.mask).astype(np.uint8)
    version = store_mask_version(
        ct_series=ct, mask=without, source=MaskVersion.Source.AUTOMATIC, source_label="m"
    )
    assert version.status == "needs_review" and version.flags == [NO_TUMOUR_FLAG]
    hash_before = CanonicalVolume.objects.get(kind="mask").content_hash
    with pytest.raises(UserFacingError, match="has no tumour; PMPD needs one"):
        approve(version, reader)
    version.refresh_from_db()
    assert version.status == "needs_review"
    assert CanonicalVolume.objects.get(kind="mask").content_hash == hash_before
    assert MaskVersion.objects.get(number=1).status == "approved"


@pytest.mark.slow
def test_a_mask_on_another_grid_is_refused_and_nothing_stored(uploaded):
    case, _ = uploaded
    ct = ImageSeries.objects.get(modality="CT")
    with pytest.raises(UserFacingError, match="voxels"):
        store_mask_version(ct_series=ct, mask=case.mask[:-1], source=MaskVersion.Source.AUTOMATIC)
    assert MaskVersion.objects.count() == 1


def test_without_an_approved_mask_preprocessing_says_it_needs_review(cohort):
    patient = add_phantom_patient(cohort, phantom(0), with_mask=False)
    ct = ImageSeries.objects.get(modality="CT")
    MaskVersion.objects.create(
        patient=patient, ct_series=ct, number=1, source="automatic", file="x", content_hash="h"
    )
    with pytest.raises(PreprocessError, match=r"no approved .* \(1 mask version\(s\) need review"):
        patient_images(patient)


def test_masks_stored_before_versions_become_approved_versions(cohort):
    migration = importlib.import_module("pmpd_web.imaging.migrations.0004_mask_versions")
    patient = add_phantom_patient(cohort, phantom(0))
    assert not MaskVersion.objects.exists()
    migration.uploaded_masks_become_approved_versions(django_apps, None)
    version = MaskVersion.objects.get(patient=patient)
    canonical = CanonicalVolume.objects.get(patient=patient, kind="mask")
    assert (version.number, version.source, version.status) == (1, "uploaded", "approved")
    assert version.file.name == canonical.file.name
    assert version.content_hash == canonical.content_hash


# ----------------------------------------------------------------------------------------------
# Who may approve: pages and API, every kind of user (readers and coordinators annotate)

ENDPOINTS = [
    ("mask history", "get", "/cohorts/{cohort}/patients/{study_id}/masks/", {C, K, R}),
    ("mask approve", "post", "/cohorts/{cohort}/masks/{version}/approve/", {C, R}),
    ("mask reject", "post", "/cohorts/{cohort}/masks/{version}/reject/", {C, R}),
    ("api mask versions", "get", "/api/cohorts/{cohort}/mask-versions/", {C, K, R}),
    ("api mask version", "get", "/api/cohorts/{cohort}/mask-versions/{version}/", {C, K, R}),
    (
        "api mask approve",
        "post",
        "/api/cohorts/{cohort}/mask-versions/{version}/approve/",
        {C, R},
    ),
    ("api mask reject", "post", "/api/cohorts/{cohort}/mask-versions/{version}/reject/", {C, R}),
]


@pytest.fixture
def world(uploaded, cohort):
    case, patient = uploaded
    version = store_mask_version(
        ct_series=ImageSeries.objects.get(modality="CT"),
        mask=corrected(case.mask),
        source=MaskVersion.Source.AUTOMATIC,
        source_label="m",
    )
    return {"cohort": cohort.pk, "study_id": patient.study_id, "version": version.pk}


# Each case ingests a patient first: the fast loop asks the outsider only, at every endpoint.
@pytest.mark.sample(keep={"username": ["outsider"]}, cover=False)
@pytest.mark.parametrize("username", [*USERS, R])
@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_mask_permission_table(world, members, reader, username, name, method, path, allowed):
    client = APIClient()
    client.force_login(reader if username == R else members[username])
    url = path.format(**world)
    response = getattr(client, method)(url)
    may = assert_answer_for(username, allowed, response, url)
    status = MaskVersion.objects.get(pk=world["version"]).status
    if method == "post" and not may:
        assert status == "needs_review"
    if may and name.endswith("approve"):
        assert status == "approved"


@pytest.mark.slow
def test_the_history_page_shows_provenance_and_the_approval(world, reader):
    client = APIClient()
    client.force_login(reader)
    client.post(f"/cohorts/{world['cohort']}/masks/{world['version']}/approve/")
    page = client.get(f"/cohorts/{world['cohort']}/patients/{world['study_id']}/masks/")
    text = page.content.decode()
    assert "automatic: m" in text and "Superseded" in text and "uploaded" in text
    assert "PMPD&#x27;s preprocessed inputs of this patient are stale" in text or (
        "preprocessed inputs of this patient are stale" in text
    )
    patient_page = client.get(f"/cohorts/{world['cohort']}/patients/{world['study_id']}/")
    assert "preprocessed inputs of this patient are stale" in patient_page.content.decode()


@pytest.mark.slow
def test_a_clinician_cannot_approve_through_the_api(world, members):
    client = APIClient()
    client.force_login(members[K])
    response = client.post(
        f"/api/cohorts/{world['cohort']}/mask-versions/{world['version']}/approve/"
    )
    assert response.status_code == 403 and "annotate" in response.json()["detail"]
    assert MaskVersion.objects.get(pk=world["version"]).status == "needs_review"


def test_readers_open_each_version_in_the_segmentation_editor(world, members, reader):
    """ "Correct in the viewer": OHIF's segmentation mode on the version's CT with that
    version's SEG alone (the CT's other SEG series filtered out), for users who may annotate."""
    version = MaskVersion.objects.select_related("ct_series__study", "seg_series").get(
        pk=world["version"]
    )
    client = APIClient()
    client.force_login(reader)
    page = client.get(f"/cohorts/{world['cohort']}/patients/{world['study_id']}/masks/")
    links = {v.number: v.correction_url for v in page.context["versions"]}
    assert set(links) == {1, 2} and all(links.values())
    url = urlsplit(links[version.number])
    assert url.path == "/ohif/segmentation"
    assert parse_qs(url.query) == {
        "StudyInstanceUIDs": [version.ct_series.study.study_instance_uid],
        "SeriesInstanceUIDs": [
            f"{version.ct_series.series_instance_uid},{version.seg_series.series_instance_uid}"
        ],
        "hangingProtocolId": ["@ohif/seg"],
    }
    assert page.content.decode().count("Correct in the viewer</a>") == 2
    client.force_login(members[K])
    page = client.get(f"/cohorts/{world['cohort']}/patients/{world['study_id']}/masks/")
    assert "Correct in the viewer</a>" not in page.content.decode()


def test_a_version_without_a_seg_has_no_editor_link(uploaded):
    version = store_mask_version(
        ct_series=ImageSeries.objects.get(modality="CT"),
        mask=np.zeros_like(uploaded[0].mask),
        source=MaskVersion.Source.AUTOMATIC,
        source_label="m",
    )
    assert version.seg_series is None and correction_url(version) is None
