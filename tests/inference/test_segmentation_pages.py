"""The coordinator's segmentation pages in the browser: the models and their cards, the train
form, the two-step import, activating a model, predicting masks, and the review queue's "I'm
reviewing this"; every bad input refused with its message and nothing changed; who may do what.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from engine_fixtures import nnunet_results_zip
from factories import make_patient
from permission_table import USERS, C, K, R, S, assert_answer_for
from rest_framework.test import APIClient

from inference.segmentation import nnunet_core as nc
from inference.segmentation_jobs import review_queue, train_segmentation_model
from inference.segmentation_models import SegmentationModelVersion
from pmpd_web.accounts.models import AuditEvent
from pmpd_web.imaging.mask_versions import NO_TUMOUR_FLAG, PANCREAS_ONLY_FLAG
from pmpd_web.imaging.models import CanonicalVolume, ImageSeries, ImagingStudy, MaskVersion
from pmpd_web.jobs.models import Job
from pmpd_web.jobs.runner import UserFacingError

pytestmark = pytest.mark.django_db

PAGES = "/cohorts/{cohort}/segmentation"


def imaged_patient(cohort, study_id: str, *, approved_mask: bool = False):
    """A patient with a selected CT (rows only: these pages never read the voxels)."""
    patient = make_patient(cohort, study_id)
    study = ImagingStudy.objects.create(
        patient=patient, study_instance_uid=f"2.25.{uuid.uuid4().int}"
    )
    series = ImageSeries.objects.create(
        study=study,
        series_instance_uid=f"2.25.{uuid.uuid4().int}",
        modality="CT",
        is_selected=True,
    )
    if approved_mask:
        CanonicalVolume.objects.create(
            patient=patient, series=series, kind=CanonicalVolume.Kind.MASK, file="mask.nii.gz"
        )
    return patient


def automatic_version(
    patient, *, number: int = 1, status: str = "needs_review", **extra
) -> MaskVersion:
    return MaskVersion.objects.create(
        patient=patient,
        ct_series=ImageSeries.objects.get(study__patient=patient),
        number=number,
        source="automatic",
        source_label="nnU-Net model 'm' (#1)",
        status=status,
        file="x",
        content_hash=f"h{number}",
        **extra,
    )


def ready_model(cohort, name: str = "site model", **extra) -> SegmentationModelVersion:
    return SegmentationModelVersion.objects.create(
        cohort=cohort,
        name=name,
        origin="trained",
        status="ready",
        folds=[0],
        label_of_class={"pancreas": 1, "tumour": 2},
        **extra,
    )


def logged_in(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def zip_upload(data: bytes, name: str = "site-model.zip") -> io.BytesIO:
    upload = io.BytesIO(data)
    upload.name = name
    return upload


def pending_uploads() -> list[str]:
    folder = "segmentation-models/pending"
    return default_storage.listdir(folder)[1] if default_storage.exists(folder) else []


def nothing_stored() -> None:
    assert not SegmentationModelVersion.objects.exists()
    assert not AuditEvent.objects.filter(action="import_segmentation_model").exists()
    assert pending_uploads() == []


# ----------------------------------------------------------------------------------------------
# The models page and the model card


def test_the_models_page_and_card_show_the_model_card(cohort, members):
    model = ready_model(
        cohort,
        configuration="2d",
        is_active=True,
        card={
            "labels": nc.LABELS,
            "dice_per_fold": {"0": {"pancreas": 0.8312, "tumour": 0.6421}},
            "dice_source": "nnU-Net's own validation of each fold",
            "training_cohort": cohort.name,
            "training_patients": ["P1", "P2", "P3", "P4", "P5"],
            "trainer": "nnUNetTrainerShortBudget",
            "code_version": "abc1234",
            "package_versions": {"nnunetv2": "2.8.1", "torch": "2.13.0+cpu"},
            "budget": {"epochs": 10, "iterations_per_epoch": 40, "batch_size": 4},
        },
    )
    client = logged_in(members[R])
    listing = client.get(f"/cohorts/{cohort.pk}/segmentation/").content.decode()
    assert "site model" in listing and "active" in listing and "0.831 / 0.642" in listing
    assert f"/cohorts/{cohort.pk}/segmentation/{model.pk}/" in listing
    # A reader views, never trains: no train or import button.
    assert "Train a segmentation model" not in listing and "Import a trained" not in listing

    card = client.get(f"/cohorts/{cohort.pk}/segmentation/{model.pk}/").content.decode()
    for shown in (
        "pancreas = 1",
        "tumour = 2",
        "nnUNetTrainerShortBudget",
        "nnunetv2 2.8.1",
        "torch 2.13.0+cpu",
        "abc1234",
        f"{cohort.name} (5 patients with an approved mask)",
        "10 epochs of 40 iterations per fold",
        "<td>0.831</td>",
    ):
        assert shown in card.replace('<td class="num">', "<td>"), shown
    assert "Activate this model" not in card

    coordinator = logged_in(members[C]).get(f"/cohorts/{cohort.pk}/segmentation/").content
    assert b"Train a segmentation model" in coordinator and b"Import a trained" in coordinator


def test_a_model_of_another_cohort_is_not_found(cohort, other_cohort, members):
    hidden = ready_model(other_cohort, name="HIDDEN")
    response = logged_in(members[C]).get(f"/cohorts/{cohort.pk}/segmentation/{hidden.pk}/")
    assert response.status_code == 404


# ----------------------------------------------------------------------------------------------
# Train


def test_the_train_form_says_how_many_patients_and_starts_the_job(cohort, members):
    for index in range(6):
        imaged_patient(cohort, f"P{index}", approved_mask=True)
    imaged_patient(cohort, "NO-MASK")
    client = logged_in(members[C])
    page = client.get(f"{PAGES.format(cohort=cohort.pk)}/train/").content.decode()
    default = nc.default_budget(6)
    assert "6 patients with an approved mask will be used" in page
    assert f'name="epochs" value="{default.epochs}"' in page
    assert f'name="iterations_per_epoch" value="{default.iterations_per_epoch}"' in page
    assert 'value="3d_lowres"' in page
    assert [f for f in range(5) if f'value="{f}" id="id_folds_{f}" checked' in page] == list(
        default.folds
    )

    response = client.post(
        f"{PAGES.format(cohort=cohort.pk)}/train/",
        {
            "name": "first",
            "configuration": "3d_fullres",
            "folds": ["0", "1"],
            "epochs": "3",
            "iterations_per_epoch": "20",
        },
    )
    model = SegmentationModelVersion.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{model.job_id}/"
    assert model.configuration == "3d_fullres" and model.folds == [0, 1]
    assert model.card["budget"]["epochs"] == 3
    assert model.card["budget"]["iterations_per_epoch"] == 20
    assert len(model.card["training_patients"]) == 6
    job = Job.objects.get(pk=model.job_id)
    assert job.kind == Job.Kind.SEGMENTATION_TRAINING and job.status == "queued"
    # The job page shows its progress bar.
    assert b'role="progressbar"' in client.get(response["Location"]).content


GOOD_TRAINING = {
    "name": "first",
    "configuration": "2d",
    "folds": ["0"],
    "epochs": "3",
    "iterations_per_epoch": "20",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"configuration": "4d"}, "Select a valid choice. 4d is not one of the available"),
        ({"folds": []}, "This field is required"),
        ({"folds": ["7"]}, "Select a valid choice. 7 is not one of the available"),
        ({"epochs": "0"}, "Ensure this value is greater than or equal to 1"),
        ({"iterations_per_epoch": "many"}, "Enter a whole number"),
        ({"name": ""}, "This field is required"),
        ({"name": "taken"}, "A segmentation model named &#x27;taken&#x27; exists"),
    ],
    ids=["configuration", "no-fold", "fold-7", "epochs-0", "iterations-text", "no-name", "taken"],
)
def test_a_bad_training_form_is_refused_and_nothing_started(cohort, members, change, message):
    for index in range(5):
        imaged_patient(cohort, f"P{index}", approved_mask=True)
    ready_model(cohort, name="taken")
    response = logged_in(members[C]).post(
        f"{PAGES.format(cohort=cohort.pk)}/train/", {**GOOD_TRAINING, **change}
    )
    assert response.status_code == 400 and message in response.content.decode()
    assert SegmentationModelVersion.objects.count() == 1 and not Job.objects.exists()


def test_training_with_too_few_approved_masks_is_refused(cohort, members):
    for index in range(3):
        imaged_patient(cohort, f"P{index}", approved_mask=True)
    client = logged_in(members[C])
    page = client.get(f"{PAGES.format(cohort=cohort.pk)}/train/").content.decode()
    assert "3 patients with an approved mask: nnU-Net&#x27;s five-fold split needs at least 5" in (
        page
    )
    assert "Start training" not in page
    response = client.post(f"{PAGES.format(cohort=cohort.pk)}/train/", GOOD_TRAINING)
    assert response.status_code == 400
    assert "has 3 patients with an approved mask" in response.content.decode()
    assert not SegmentationModelVersion.objects.exists() and not Job.objects.exists()


def test_the_training_job_plans_the_configuration_it_trains(cohort, members, monkeypatch):
    """nnU-Net preprocesses only the configurations it is asked to plan: a 3d_fullres
    training must plan 3d_fullres, not the 2d default."""
    from inference import segmentation_jobs

    for index in range(5):
        imaged_patient(cohort, f"P{index}", approved_mask=True)
    model = segmentation_jobs.start_segmentation_training(
        cohort,
        user=members[C],
        name="3d",
        budget=nc.TrainingBudget(configuration="3d_fullres", epochs=1, iterations_per_epoch=1),
    )
    planned = []
    monkeypatch.setattr(segmentation_jobs, "_case", lambda patient, with_mask: patient)
    monkeypatch.setattr(nc, "write_raw_dataset", lambda *args, **kwargs: None)
    monkeypatch.setattr(nc, "plan_and_preprocess", lambda workdir, **kwargs: planned.append(kwargs))

    def stop(*args, **kwargs):
        raise nc.NnUNetError("stopped by the test after planning")

    monkeypatch.setattr(nc, "train", stop)
    with pytest.raises(UserFacingError, match="stopped by the test"):
        train_segmentation_model(model.pk, lambda percent, phrase: None)
    assert [p["budget"].configuration for p in planned] == ["3d_fullres"]


# ----------------------------------------------------------------------------------------------
# Import: upload, then map the labels


def upload_step(client, cohort, data: bytes, name: str = "site-model.zip"):
    return client.post(
        f"{PAGES.format(cohort=cohort.pk)}/import/", {"file": zip_upload(data, name)}
    )


def test_import_reads_the_labels_then_stores_the_mapped_model(cohort, members):
    client = logged_in(members[C])
    labels = {"background": 0, "pancreas": 1, "lesion": 2, "duct": 3}
    response = upload_step(client, cohort, nnunet_results_zip(labels=labels))
    assert response.status_code == 302
    assert response["Location"] == f"{PAGES.format(cohort=cohort.pk)}/import/labels/"
    assert not SegmentationModelVersion.objects.exists()

    page = client.get(response["Location"]).content.decode()
    assert "pancreas = 1, lesion = 2, duct = 3" in page
    # The guesses: the label named pancreas, the lesion as the tumour.
    assert '<option value="pancreas" selected>' in page and '<option value="lesion" selected>' in (
        page
    )
    assert '<option value="background"' not in page

    done = client.post(
        response["Location"],
        {"name": "site model", "pancreas_label": "pancreas", "tumour_label": "lesion"},
    )
    model = SegmentationModelVersion.objects.get()
    assert done.status_code == 302
    assert done["Location"] == f"{PAGES.format(cohort=cohort.pk)}/{model.pk}/"
    assert model.origin == "imported" and model.label_of_class == {"pancreas": 1, "tumour": 2}
    assert model.card["imported_from"] == "site-model.zip" and model.card["labels"] == labels
    assert default_storage.exists(model.results_zip.name)
    assert pending_uploads() == []
    assert AuditEvent.objects.filter(action="import_segmentation_model").count() == 1
    # The pending upload is gone: the mapping page sends back to the upload.
    again = client.get(response["Location"])
    assert again.status_code == 302 and again["Location"].endswith("/segmentation/import/")


def test_a_pancreas_only_model_imports_with_tumour_none_and_its_card_says_so(cohort, members):
    client = logged_in(members[C])
    labels = {"background": 0, "pancreas": 1}
    response = upload_step(client, cohort, nnunet_results_zip(labels=labels))
    assert response.status_code == 302, response.content.decode()
    page = client.get(response["Location"]).content.decode()
    # Offered and guessed: no label looks like a tumour.
    assert '<option value="" selected>none — this model does not segment the tumour' in page
    assert '<option value="pancreas" selected>' in page

    done = client.post(
        response["Location"], {"name": "pancreas only", "pancreas_label": "pancreas"}
    )
    model = SegmentationModelVersion.objects.get()
    assert done.status_code == 302, done.content.decode()
    assert model.label_of_class == {"pancreas": 1} and not model.segments_tumour
    assert model.card["labels"] == labels and model.card["segments_tumour"] is False
    assert pending_uploads() == []

    card = client.get(done["Location"]).content.decode()
    assert "pancreas only: readers draw the tumour" in card
    listing = client.get(f"{PAGES.format(cohort=cohort.pk)}/").content.decode()
    assert "1, none" in listing and "pancreas only: readers draw the tumour" in listing


def two_channel_zip() -> bytes:
    return nnunet_results_zip(channels={"0": "CT", "1": "CT"})


def not_a_results_folder() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("weights/model.pth", b"weights")
        archive.writestr("dataset.json", json.dumps({"labels": {"background": 0}}))
    return buffer.getvalue()


def without_checkpoint() -> bytes:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(nnunet_results_zip())) as source,
        zipfile.ZipFile(buffer, "w") as archive,
    ):
        for name in source.namelist():
            if not name.endswith("checkpoint_final.pth"):
                archive.writestr(name, source.read(name))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK not really", "site-model.zip: not a ZIP file"),
        (not_a_results_folder(), "site-model.zip: no folder with both dataset.json and plans.json"),
        (without_checkpoint(), "site-model.zip: no fold_N/checkpoint_final.pth"),
        (
            nnunet_results_zip(channels={"0": "MRI"}),
            "the platform predicts from a single CT channel",
        ),
        (two_channel_zip(), "the platform predicts from a single CT channel"),
        (
            nnunet_results_zip(labels={"background": 0}),
            "site-model.zip: dataset.json labels are {'background': 0}; the platform needs a "
            "label for the pancreas",
        ),
    ],
    ids=["not-a-zip", "not-results", "no-checkpoint", "mri", "two-channels", "background-only"],
)
def test_a_bad_results_zip_is_refused_at_upload_and_nothing_kept(cohort, members, data, message):
    client = logged_in(members[C])
    response = upload_step(client, cohort, data)
    assert response.status_code == 400, response.status_code
    assert message in response.content.decode().replace("&#x27;", "'").replace("&quot;", '"')
    nothing_stored()
    assert f"segmentation-import-{cohort.pk}" not in client.session


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (
            {"pancreas_label": "pancreas", "tumour_label": "pancreas"},
            "site-model.zip: pancreas and tumour cannot be the same label",
        ),
        (
            {"pancreas_label": "pancreas", "tumour_label": "tumour"},
            "Select a valid choice. tumour is not one of the available choices.",
        ),
        (
            {"pancreas_label": "background", "tumour_label": "lesion"},
            "Select a valid choice. background is not one of the available choices.",
        ),
        ({"name": "taken"}, "A segmentation model named &#x27;taken&#x27; exists"),
        ({"name": ""}, "This field is required"),
    ],
    ids=["same-label", "unknown-label", "background", "taken-name", "no-name"],
)
def test_a_bad_label_mapping_is_refused_and_the_upload_kept(cohort, members, mapping, message):
    ready_model(cohort, name="taken")
    client = logged_in(members[C])
    upload_step(client, cohort, nnunet_results_zip())
    url = f"{PAGES.format(cohort=cohort.pk)}/import/labels/"
    response = client.post(
        url, {"name": "new", "pancreas_label": "pancreas", "tumour_label": "lesion", **mapping}
    )
    assert response.status_code == 400 and message in response.content.decode()
    assert SegmentationModelVersion.objects.count() == 1
    # Corrected, the same upload imports.
    fixed = client.post(
        url, {"name": "new", "pancreas_label": "pancreas", "tumour_label": "lesion"}
    )
    assert fixed.status_code == 302 and SegmentationModelVersion.objects.count() == 2


def test_an_upload_without_a_file_is_refused(cohort, members):
    response = logged_in(members[C]).post(f"{PAGES.format(cohort=cohort.pk)}/import/", {})
    assert response.status_code == 400 and "This field is required" in response.content.decode()
    nothing_stored()


def test_cancelling_an_import_keeps_nothing(cohort, members):
    client = logged_in(members[C])
    upload_step(client, cohort, nnunet_results_zip())
    assert len(pending_uploads()) == 1
    response = client.post(f"{PAGES.format(cohort=cohort.pk)}/import/labels/", {"cancel": "1"})
    assert response.status_code == 302 and response["Location"].endswith("/segmentation/")
    nothing_stored()


def test_an_abandoned_upload_is_deleted_at_the_next_upload(cohort, members):
    import os
    import time

    abandoned = default_storage.save("segmentation-models/pending/old.zip", io.BytesIO(b"x"))
    two_days_ago = time.time() - 2 * 86400
    os.utime(default_storage.path(abandoned), (two_days_ago, two_days_ago))
    upload_step(logged_in(members[C]), cohort, nnunet_results_zip())
    assert not default_storage.exists(abandoned) and len(pending_uploads()) == 1


def test_a_mapping_without_an_upload_sends_back_to_the_upload(cohort, members):
    response = logged_in(members[C]).post(
        f"{PAGES.format(cohort=cohort.pk)}/import/labels/",
        {"name": "x", "pancreas_label": "pancreas", "tumour_label": "lesion"},
    )
    assert response.status_code == 302 and response["Location"].endswith("/segmentation/import/")
    assert not SegmentationModelVersion.objects.exists()


# ----------------------------------------------------------------------------------------------
# Activate and predict


def test_activate_a_ready_model_and_refuse_one_in_training(cohort, members):
    first = ready_model(cohort, name="first", is_active=True)
    second = ready_model(cohort, name="second")
    training = SegmentationModelVersion.objects.create(
        cohort=cohort, name="training", origin="trained", status="training"
    )
    client = logged_in(members[C])
    response = client.post(f"{PAGES.format(cohort=cohort.pk)}/{second.pk}/activate/")
    assert response.status_code == 302
    assert list(SegmentationModelVersion.objects.filter(is_active=True)) == [second]
    refused = client.post(f"{PAGES.format(cohort=cohort.pk)}/{training.pk}/activate/", follow=True)
    assert "nnU-Net model &#x27;training&#x27; is not ready." in refused.content.decode()
    assert list(SegmentationModelVersion.objects.filter(is_active=True)) == [second]
    first.refresh_from_db()
    assert not first.is_active


def test_predict_masks_for_the_cohort_and_for_named_patients(cohort, members):
    model = ready_model(cohort, is_active=True)
    imaged_patient(cohort, "NEW-1")
    imaged_patient(cohort, "DONE-1", approved_mask=True)
    client = logged_in(members[C])
    page = client.get(f"{PAGES.format(cohort=cohort.pk)}/").content.decode()
    assert "1 patient with a CT and neither an approved mask" in page

    response = client.post(f"{PAGES.format(cohort=cohort.pk)}/predict/", {"study_ids": ""})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.kind == Job.Kind.SEGMENTATION
    assert job.parameters == {"segmentation_model": model.pk, "study_ids": []}

    # On request, a patient who has an approved mask is predicted again.
    again = client.post(f"{PAGES.format(cohort=cohort.pk)}/predict/", {"study_ids": "DONE-1"})
    assert again.status_code == 302
    assert Job.objects.latest("pk").parameters["study_ids"] == ["DONE-1"]


@pytest.mark.parametrize(
    ("study_ids", "active", "message"),
    [
        ("", False, "No active segmentation model"),
        ("GHOST-9, NEW-1", True, "No patient GHOST-9 in"),
        ("NO-CT", True, "NO-CT: no CT selected for PMPD, nothing to segment."),
        ("", True, "No patient to segment"),
    ],
    ids=["no-active-model", "unknown-patient", "no-ct", "nothing-to-segment"],
)
def test_a_bad_prediction_request_is_refused_and_nothing_started(
    cohort, members, study_ids, active, message
):
    ready_model(cohort, is_active=active)
    imaged_patient(cohort, "NEW-1", approved_mask=True)
    make_patient(cohort, "NO-CT")
    response = logged_in(members[C]).post(
        f"{PAGES.format(cohort=cohort.pk)}/predict/", {"study_ids": study_ids}
    )
    assert response.status_code == 400 and message in response.content.decode()
    assert not Job.objects.exists()


# ----------------------------------------------------------------------------------------------
# The review queue: who reviews what


def test_a_reader_says_they_review_a_patient_and_others_see_it(cohort, members):
    patient = imaged_patient(cohort, "NEW-1")
    version = automatic_version(patient)
    reader = logged_in(members[R])
    response = reader.post(f"/cohorts/{cohort.pk}/review/{version.pk}/claim/")
    assert response.status_code == 302 and response["Location"] == f"/cohorts/{cohort.pk}/review/"
    version.refresh_from_db()
    assert version.reviewing_by == members[R] and version.reviewing_since is not None

    page = logged_in(members[C]).get(f"/cohorts/{cohort.pk}/review/").content.decode()
    since = version.reviewing_since.astimezone().strftime("%Y-%m-%d")
    assert f'{members[R].username} <span class="muted small">since {since}' in page
    study = ImagingStudy.objects.get(patient=patient).study_instance_uid
    assert f"/ohif/segmentation?StudyInstanceUIDs={study}" in page
    assert f"/cohorts/{cohort.pk}/patients/NEW-1/masks/" in page

    # The clinician sees who reviews, but gets no viewer-editing link nor claim button.
    clinician = logged_in(members[K]).get(f"/cohorts/{cohort.pk}/review/").content.decode()
    assert members[R].username in clinician and "/ohif/segmentation" not in clinician
    assert "I&#x27;m reviewing this" not in clinician

    # Their own row offers to stop; stopping clears only their own claim.
    assert (
        "I stopped reviewing this" in reader.get(f"/cohorts/{cohort.pk}/review/").content.decode()
    )
    logged_in(members[C]).post(f"/cohorts/{cohort.pk}/review/{version.pk}/claim/", {"stop": "1"})
    version.refresh_from_db()
    assert version.reviewing_by == members[R]
    reader.post(f"/cohorts/{cohort.pk}/review/{version.pk}/claim/", {"stop": "1"})
    version.refresh_from_db()
    assert version.reviewing_by is None and version.reviewing_since is None


def test_a_reader_taking_over_a_review_is_told_whose_it_was(cohort, members):
    version = automatic_version(imaged_patient(cohort, "NEW-1"))
    logged_in(members[C]).post(f"/cohorts/{cohort.pk}/review/{version.pk}/claim/")
    response = logged_in(members[R]).post(
        f"/cohorts/{cohort.pk}/review/{version.pk}/claim/", follow=True
    )
    assert (
        f"You are reviewing NEW-1 (mask version 1), taking over from {members[C].username}."
        in response.content.decode()
    )
    version.refresh_from_db()
    assert version.reviewing_by == members[R]


def test_claiming_a_version_that_needs_no_review_is_refused(cohort, members):
    version = automatic_version(imaged_patient(cohort, "NEW-1"), status="approved")
    response = logged_in(members[R]).post(
        f"/cohorts/{cohort.pk}/review/{version.pk}/claim/", follow=True
    )
    assert "Mask version 1 of NEW-1 is approved: nothing to review." in response.content.decode()
    version.refresh_from_db()
    assert version.reviewing_by is None


def test_the_queue_puts_pancreas_only_masks_after_the_tumour_scored_ones(cohort, members):
    """First the masks in which a tumour model found none, then the most uncertain tumours,
    then the pancreas-only models' masks (nothing to measure), oldest first."""
    patients = {s: imaged_patient(cohort, s) for s in ("A", "B", "C", "D", "E")}
    newer_pancreas_only = automatic_version(patients["A"], flags=[PANCREAS_ONLY_FLAG])
    older_pancreas_only = automatic_version(patients["B"], flags=[PANCREAS_ONLY_FLAG])
    MaskVersion.objects.filter(pk=older_pancreas_only.pk).update(
        produced_at=newer_pancreas_only.produced_at - timedelta(hours=1)
    )
    sure = automatic_version(patients["C"], uncertainty=0.1, tumour_voxels=50)
    unsure = automatic_version(patients["D"], uncertainty=0.6, tumour_voxels=50)
    missed = automatic_version(patients["E"], flags=[NO_TUMOUR_FLAG])
    expected = [missed, unsure, sure, older_pancreas_only, newer_pancreas_only]
    assert list(review_queue(cohort)) == expected
    api = logged_in(members[R]).get(f"/api/cohorts/{cohort.pk}/review-queue/").json()
    rows = api["results"] if isinstance(api, dict) else api
    assert [row["id"] for row in rows] == [v.pk for v in expected]

    page = logged_in(members[R]).get(f"/cohorts/{cohort.pk}/review/").content.decode()
    assert [page.index(f"<td>{s}</td>") for s in "EDCBA"] == sorted(
        page.index(f"<td>{s}</td>") for s in "EDCBA"
    )
    assert "then the masks of pancreas-only models, oldest first" in page
    assert page.count('<span class="muted small">pancreas only</span>') == 2
    assert page.count(PANCREAS_ONLY_FLAG) == 2


# ----------------------------------------------------------------------------------------------
# Navigation


@pytest.mark.parametrize(
    ("username", "models_link", "queue_link"),
    [(C, True, True), (R, True, True), (K, True, False), (S, False, False)],
)
def test_the_cohort_page_links_to_segmentation_for_those_allowed(
    cohort, members, username, models_link, queue_link
):
    page = logged_in(members[username]).get(f"/cohorts/{cohort.pk}/").content.decode()
    assert (f'href="/cohorts/{cohort.pk}/segmentation/"' in page) == models_link
    assert (f'class="button" href="/cohorts/{cohort.pk}/review/"' in page) == queue_link


# ----------------------------------------------------------------------------------------------
# Who may do what

ENDPOINTS = [
    ("segmentation models page", "get", PAGES + "/", {C, K, R}),
    ("segmentation model card", "get", PAGES + "/{model}/", {C, K, R}),
    ("segmentation train page", "get", PAGES + "/train/", {C}),
    ("segmentation train", "post", PAGES + "/train/", {C}),
    ("segmentation import page", "get", PAGES + "/import/", {C}),
    ("segmentation import upload", "post", PAGES + "/import/", {C}),
    ("segmentation import labels page", "get", PAGES + "/import/labels/", {C}),
    ("segmentation import labels", "post", PAGES + "/import/labels/", {C}),
    ("segmentation predict", "post", PAGES + "/predict/", {C}),
    ("segmentation activate", "post", PAGES + "/{model}/activate/", {C}),
    ("review claim", "post", "/cohorts/{cohort}/review/{version}/claim/", {C, R}),
]


@pytest.fixture
def world(cohort, members):
    patient = imaged_patient(cohort, "SECRET-42")
    model = ready_model(cohort, name="m")
    version = automatic_version(patient)
    return {"cohort": cohort.pk, "model": model.pk, "version": version.pk}


@pytest.mark.sample(keep={"username": ["outsider"]})
@pytest.mark.parametrize("username", [*USERS, R])
@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_segmentation_pages_permission_table(world, members, username, name, method, path, allowed):
    url = path.format(**world)
    client = logged_in(members[username])
    response = getattr(client, method)(url)
    if (username == "admin" or username in allowed) and method == "post":
        # Through the check; the empty form itself may be refused (400), never 403 or 404.
        assert response.status_code in (200, 302, 400), (url, response.status_code)
    else:
        may = assert_answer_for(username, allowed, response, url)
        if not may:
            assert b"SECRET-42" not in response.content


@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_anonymous_is_sent_to_login(world, name, method, path, allowed):
    response = getattr(APIClient(), method)(path.format(**world))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert SegmentationModelVersion.objects.filter(is_active=True).count() == 0
