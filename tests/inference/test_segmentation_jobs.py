"""Segmentation on the platform: a real nnU-Net v2 trained on phantom patients' approved masks
(tiny CPU budget), masks predicted for a patient without one and stored as automatic SEG mask
versions needing review, the review queue, the audit trail; model import with its label
mapping and bad ZIPs refused with nothing stored; who may do what."""

from __future__ import annotations

import io

import numpy as np
import pytest
from engine_fixtures import add_phantom_patient, nnunet_random_weights_zip, nnunet_results_zip
from factories import make_patient
from imagemaker import dicom_series, folder_files, ingest, small_patient
from permission_table import USERS, C, K, R, assert_answer_for
from rest_framework.test import APIClient

from inference.segmentation import nnunet_core as nc
from inference.segmentation_jobs import (
    execute_segmentation,
    execute_segmentation_training,
    merge_segmentation,
    predict_part,
    review_queue,
    start_segmentation,
    start_segmentation_training,
)
from inference.segmentation_models import SegmentationModelVersion
from pmpd_web.accounts.models import AuditEvent
from pmpd_web.imaging.mask_versions import PANCREAS_ONLY_FLAG
from pmpd_web.imaging.models import CanonicalVolume, MaskVersion
from pmpd_web.jobs.models import Job

pytestmark = pytest.mark.django_db


def post_import(client, cohort, data: bytes, tumour: str | None = "lesion", pancreas="pancreas"):
    upload = io.BytesIO(data)
    upload.name = "site-model.zip"
    mapping = {"pancreas_label": pancreas}
    if tumour is not None:
        mapping["tumour_label"] = tumour
    return client.post(
        f"/api/cohorts/{cohort.pk}/segmentation-models/import/",
        {"name": "site model", "file": upload, **mapping},
        format="multipart",
    )


PANCREAS_ONLY = {"background": 0, "pancreas": 1}


def test_an_imported_model_keeps_its_label_mapping(cohort, members):
    client = APIClient()
    client.force_login(members[C])
    response = post_import(client, cohort, nnunet_results_zip())
    assert response.status_code == 201, response.content
    model = SegmentationModelVersion.objects.get()
    assert model.origin == "imported" and model.status == "ready"
    assert model.label_of_class == {"pancreas": 1, "tumour": 2} and model.folds == [0]
    assert model.card["labels"] == {"background": 0, "pancreas": 1, "lesion": 2}
    assert AuditEvent.objects.filter(action="import_segmentation_model").count() == 1


@pytest.mark.parametrize("tumour", [None, ""], ids=["left-out", "empty"])
def test_a_pancreas_only_model_imports_with_no_tumour_label(cohort, members, tumour):
    client = APIClient()
    client.force_login(members[C])
    response = post_import(client, cohort, nnunet_results_zip(labels=PANCREAS_ONLY), tumour=tumour)
    assert response.status_code == 201, response.content
    model = SegmentationModelVersion.objects.get()
    assert model.label_of_class == {"pancreas": 1} and not model.segments_tumour
    assert response.json()["label_of_class"] == {"pancreas": 1}
    assert model.card["labels"] == PANCREAS_ONLY and model.card["segments_tumour"] is False
    event = AuditEvent.objects.get(action="import_segmentation_model")
    assert event.detail["label_mapping"] == {"pancreas": 1}


def test_the_core_reads_a_results_zips_labels_and_needs_the_pancreas_mapped(tmp_path):
    path = tmp_path / "site-model.zip"
    path.write_bytes(nnunet_results_zip(labels=PANCREAS_ONLY))
    assert nc.read_results_labels(path) == PANCREAS_ONLY
    imported = nc.inspect_results_zip(path, pancreas_label="1", tumour_label=None)
    assert imported.label_of_class == {"pancreas": 1}
    with pytest.raises(nc.NnUNetError, match="site-model.zip: no label mapped to the pancreas"):
        nc.inspect_results_zip(path, pancreas_label="", tumour_label=None)


@pytest.mark.parametrize(
    ("data", "pancreas", "tumour", "message"),
    [
        (b"PK not really", "pancreas", "lesion", "site-model.zip: not a ZIP file"),
        (nnunet_results_zip(), "pancreas", "tumour", "no label 'tumour' for tumour"),
        (nnunet_results_zip(channels={"0": "T2"}), "pancreas", "lesion", "single CT channel"),
        (nnunet_results_zip(), "lesion", "lesion", "cannot be the same label"),
        (nnunet_results_zip(), "0", None, "pancreas cannot be label 0 (background)"),
        (nnunet_results_zip(), "", None, "'pancreas_label': ['This field may not be blank.']"),
        (nnunet_results_zip(labels=PANCREAS_ONLY), "duct", None, "no label 'duct' for pancreas"),
    ],
    ids=[
        "not-a-zip",
        "labels-unmapped",
        "not-ct",
        "same-label",
        "pancreas-background",
        "no-pancreas",
        "pancreas-unmapped",
    ],
)
def test_a_bad_model_zip_is_refused_and_nothing_stored(
    cohort, members, data, pancreas, tumour, message
):
    client = APIClient()
    client.force_login(members[C])
    response = post_import(client, cohort, data, tumour=tumour, pancreas=pancreas)
    assert response.status_code == 400 and message in str(response.json()), response.json()
    assert not SegmentationModelVersion.objects.exists()
    assert not AuditEvent.objects.filter(action="import_segmentation_model").exists()


def test_training_needs_five_approved_masks(cohort, members):
    with pytest.raises(Exception, match="needs at least 5"):
        start_segmentation_training(cohort, user=members[C], name="m")
    assert not Job.objects.exists()


@pytest.mark.slow
def test_train_predict_store_and_review(cohort, members, tmp_path):
    coordinator = members[C]
    for index in range(5):
        add_phantom_patient(cohort, small_patient(index, study_id=f"TRAIN-{index}"), label="no")
    held_out = small_patient(5, study_id="NEW-1")
    make_patient(cohort, held_out.study_id)
    dicom_series(held_out, tmp_path / "in" / held_out.study_id / "ct", private_tags=False)
    _, job = ingest(cohort, coordinator, folder_files(tmp_path / "in"))
    assert job.status == "succeeded", job.error

    budget = nc.TrainingBudget(
        epochs=2, iterations_per_epoch=10, validation_iterations=2, batch_size=4, max_features=16
    )
    model = start_segmentation_training(cohort, user=coordinator, name="phantoms", budget=budget)
    execute_segmentation_training(model.job_id)
    model.refresh_from_db()
    training_job = Job.objects.get(pk=model.job_id)
    assert training_job.status == "succeeded", training_job.error
    assert model.status == "ready" and model.results_zip.name
    assert model.card["training_patients"] == [f"TRAIN-{i}" for i in range(5)]
    assert set(model.card["dice_per_fold"]["0"]) == {"pancreas", "tumour"}
    assert model.card["package_versions"]["torch"].endswith("+cpu")

    segmentation = start_segmentation(cohort, model, user=coordinator)
    execute_segmentation(segmentation.pk)
    segmentation.refresh_from_db()
    assert segmentation.status == "succeeded", segmentation.error
    assert [s["study_id"] for s in segmentation.result["stored"]] == ["NEW-1"]
    version = MaskVersion.objects.get(patient__study_id="NEW-1")
    assert version.source == "automatic" and version.status == "needs_review"
    assert version.provenance == f"automatic: {model.provenance_label}"
    if version.tumour_voxels == 0:
        assert "NEW-1" in segmentation.result["without_tumour"] and version.flags
    else:
        assert version.seg_series.modality == "SEG" and version.uncertainty is not None
    assert list(review_queue(cohort)) == [version]
    # Never approved automatically: the patient still has no mask PMPD reads.
    assert not MaskVersion.objects.filter(status="approved", patient__study_id="NEW-1").exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {
        "start_segmentation_training",
        "segmentation_model_ready",
        "start_segmentation",
        "store_mask_version",
    } <= actions
    assert np.isin(version.pancreas_voxels + version.tumour_voxels, range(0, 64 * 64 * 16 + 1))


@pytest.mark.slow
def test_a_pancreas_only_model_predicts_flagged_masks_that_are_never_approved(
    cohort, members, tmp_path
):
    """A real nnU-Net (random weights) with pancreas and background only: each prediction is
    a mask version with pancreas only, flagged why, in the review queue; approving it is
    refused until a reader draws the tumour."""
    coordinator = members[C]
    case = small_patient(0, study_id="NEW-1")
    patient = make_patient(cohort, case.study_id)
    dicom_series(case, tmp_path / "in" / case.study_id / "ct", private_tags=False)
    _, ingested = ingest(cohort, coordinator, folder_files(tmp_path / "in"))
    assert ingested.status == "succeeded", ingested.error
    client = APIClient()
    client.force_login(coordinator)
    imported = post_import(client, cohort, nnunet_random_weights_zip(PANCREAS_ONLY), tumour=None)
    assert imported.status_code == 201, imported.content
    model = SegmentationModelVersion.objects.get()

    job = start_segmentation(cohort, model, user=coordinator)
    execute_segmentation(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.result["without_tumour"] == ["NEW-1"]
    assert "segments the pancreas only: readers draw the tumour" in job.result["note"]
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "1 automatic mask stored, needing a reader's review (1 without tumour: NEW-1)" in page
    assert f'href="/cohorts/{cohort.pk}/review/"' in page
    version = MaskVersion.objects.get(patient=patient)
    assert version.source == "automatic" and version.status == "needs_review"
    assert version.flags == [PANCREAS_ONLY_FLAG]
    assert version.tumour_voxels == 0 and version.uncertainty is None
    # The model says pancreas everywhere (see the helper): all of it kept, as label 1.
    assert version.pancreas_voxels == 32 * 64 * 64 and version.seg_series.modality == "SEG"
    assert version.produced_by_job == job
    assert list(review_queue(cohort)) == [version]

    # The job's one part, run again (a worker died after storing the mask, before the part was
    # marked done): the mask is found, not predicted and stored a second time.
    part = job.parts.get()
    again = predict_part(job, part.payload, tmp_path / "again")
    assert again["already_stored"] == ["NEW-1"] and again["stored"] == job.result["stored"]
    assert MaskVersion.objects.filter(patient=patient).count() == 1

    reader = APIClient()
    reader.force_login(members[R])
    refused = reader.post(
        f"/api/cohorts/{cohort.pk}/mask-versions/{version.pk}/approve/", {}, format="json"
    )
    assert refused.status_code == 400
    assert refused.json()["detail"] == (
        "Mask version 1 has no tumour; PMPD needs one. Its model segments the pancreas only: "
        "draw the tumour in the viewer and approve the edited version."
    )
    version.refresh_from_db()
    assert version.status == "needs_review"
    assert not CanonicalVolume.objects.filter(patient=patient, kind="mask").exists()


# ----------------------------------------------------------------------------------------------
# Who may do what

API = "/api/cohorts/{cohort}"
ENDPOINTS = [
    ("review page", "get", "/cohorts/{cohort}/review/", {C, K, R}),
    ("api review queue", "get", API + "/review-queue/", {C, K, R}),
    ("api segmentation models", "get", API + "/segmentation-models/", {C, K, R}),
    ("api segmentation model", "get", API + "/segmentation-models/{model}/", {C, K, R}),
    ("api segmentation train", "post", API + "/segmentation-models/", {C}),
    ("api segmentation import", "post", API + "/segmentation-models/import/", {C}),
    ("api segmentation activate", "post", API + "/segmentation-models/{model}/activate/", {C}),
    ("api segmentation segment", "post", API + "/segmentation-models/{model}/segment/", {C}),
    ("api mask review", "post", API + "/mask-versions/{version}/review/", {C, R}),
]


@pytest.fixture
def world(cohort, members):
    patient = add_phantom_patient(cohort, small_patient(0, study_id="SECRET-42"), label="no")
    model = SegmentationModelVersion.objects.create(
        cohort=cohort, name="m", origin="imported", status="ready", folds=[0]
    )
    version = MaskVersion.objects.create(
        patient=patient,
        ct_series=patient.volumes.first().series,
        number=2,
        source="automatic",
        file="x",
        content_hash="h",
    )
    return {"cohort": cohort.pk, "model": model.pk, "version": version.pk}


@pytest.mark.sample(keep={"username": ["outsider"]})
@pytest.mark.parametrize("username", [*USERS, R])
@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_segmentation_permission_table(world, members, username, name, method, path, allowed):
    client = APIClient()
    client.force_login(members[username])
    url = path.format(**world)
    response = (
        getattr(client, method)(url, {}, format="json") if method == "post" else client.get(url)
    )
    may = username == "admin" or username in allowed
    if may and method == "post":
        # Allowed through the check; the empty request itself may be refused (400), never 403.
        assert response.status_code in (200, 201, 202, 400), (url, response.status_code)
    else:
        assert_answer_for(username, allowed, response, url)


@pytest.mark.slow
def test_the_demo_trains_once_and_predicts_the_withheld_masks(
    cohort, members, tmp_path, monkeypatch
):
    from inference import segmentation_demo

    monkeypatch.setattr(
        segmentation_demo,
        "DEMO_BUDGET",
        nc.TrainingBudget(
            epochs=1, iterations_per_epoch=5, validation_iterations=1, batch_size=4, max_features=8
        ),
    )
    for index in range(6):
        add_phantom_patient(cohort, small_patient(index, study_id=f"DEMO-{index}"), label="no")
    withheld = small_patient(6, study_id="DEMO-WITHHELD")
    make_patient(cohort, withheld.study_id)
    dicom_series(withheld, tmp_path / "in" / withheld.study_id / "ct", private_tags=False)
    _, job = ingest(cohort, members[C], folder_files(tmp_path / "in"))
    assert job.status == "succeeded", job.error
    out = io.StringIO()
    model = segmentation_demo.run_demo_segmentation(cohort, stdout=out, training_patients=5)
    assert model.is_active and model.card["training_patients"] == [f"DEMO-{i}" for i in range(5)]
    assert "1 automatic masks need review (DEMO-WITHHELD)" in out.getvalue()
    assert MaskVersion.objects.get(patient__study_id="DEMO-WITHHELD").status == "needs_review"
    # Again: nothing left to predict, nothing trained again.
    again = io.StringIO()
    assert segmentation_demo.run_demo_segmentation(cohort, stdout=again) is None
    assert "no mask to predict" in again.getvalue()
    assert SegmentationModelVersion.objects.count() == 1
    assert MaskVersion.objects.filter(patient__study_id="DEMO-WITHHELD").count() == 1


def test_a_patient_whose_ct_was_deselected_after_the_job_started_is_skipped_by_name(
    cohort, members
):
    """Nothing to predict (no model is loaded): the part says why, and the job page too."""
    model = SegmentationModelVersion.objects.create(
        cohort=cohort, name="m", origin="imported", status="ready", folds=[0]
    )
    patient = make_patient(cohort, "GONE-1")
    job = Job.objects.create(
        kind=Job.Kind.SEGMENTATION,
        cohort=cohort,
        created_by=members[C],
        status="running",
        parameters={"segmentation_model": model.pk, "study_ids": []},
    )
    part = predict_part(job, {"segmentation_model": model.pk, "patients": [patient.pk]}, None)
    assert part["stored"] == [] and part["skipped"] == [
        {
            "study_id": "GONE-1",
            "reason": "no CT selected for PMPD any more (deselected after the job started)",
        }
    ]
    result = merge_segmentation(job, [part])
    assert result["parts"] == 1 and result["skipped"] == part["skipped"]
    job.update_status("succeeded", result=result)
    client = APIClient()
    client.force_login(members[C])
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "0 automatic masks stored" in page
    assert "Not segmented: GONE-1 (no CT selected for PMPD any more" in page
