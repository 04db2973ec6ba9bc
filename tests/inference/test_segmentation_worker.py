"""Real Celery workers on the Redis of this machine predict one cohort's masks together: the
segmentation job's parts (one patient each, on the gpu queue) are shared by both workers, and
a worker killed with SIGKILL in the middle of a prediction leaves its part to the other, with
one automatic mask version per patient (each stored with its job in one transaction; a part
run again skips the masks its job already stored)."""

from __future__ import annotations

import io

import pytest
from engine_fixtures import nnunet_random_weights_zip
from factories import make_patient
from imagemaker import dicom_series, folder_files, ingest, small_patient
from permission_table import C
from rest_framework.test import APIClient
from workers import kill_mid_part, two_engine_workers, wait_until_finished

from inference.segmentation_jobs import start_segmentation
from inference.segmentation_models import SegmentationModelVersion
from pmpd_web.imaging.models import MaskVersion
from pmpd_web.jobs.models import JobPart

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

LABELS = {"background": 0, "pancreas": 1, "lesion": 2}


@pytest.fixture
def world(cohort, members, tmp_path):
    """Four patients with an ingested CT (no mask) and a ready nnU-Net (random weights)."""
    coordinator = members[C]
    patients = []
    for index in range(4):
        case = small_patient(index, study_id=f"NEW-{index}")
        patients.append(make_patient(cohort, case.study_id))
        dicom_series(case, tmp_path / "in" / case.study_id / "ct", private_tags=False)
    _, ingested = ingest(cohort, coordinator, folder_files(tmp_path / "in"))
    assert ingested.status == "succeeded", ingested.error
    client = APIClient()
    client.force_login(coordinator)
    upload = io.BytesIO(nnunet_random_weights_zip(LABELS))
    upload.name = "site-model.zip"
    answer = client.post(
        f"/api/cohorts/{cohort.pk}/segmentation-models/import/",
        {
            "name": "site model",
            "file": upload,
            "pancreas_label": "pancreas",
            "tumour_label": "lesion",
        },
        format="multipart",
    )
    assert answer.status_code == 201, answer.content
    return patients, SegmentationModelVersion.objects.get()


def _assert_one_mask_each(job, patients, logs) -> None:
    assert job.status == "succeeded", job.error
    assert job.progress == 100
    assert job.result["parts"] == len(patients)
    assert [entry["study_id"] for entry in job.result["stored"]] == [p.study_id for p in patients]
    # The model says pancreas everywhere: every mask is flagged for its missing tumour.
    assert job.result["without_tumour"] == [p.study_id for p in patients]
    text = "".join(log.read_text() for log in logs)
    for patient in patients:
        versions = MaskVersion.objects.filter(patient=patient)
        assert versions.count() == 1
        assert versions.get().produced_by_job_id == job.pk
        assert versions.get().source == "automatic"
        assert text.count(f"Segmented {patient.study_id} with") == 1


def test_two_workers_share_one_cohorts_mask_prediction(tmp_path, settings, world, members):
    patients, model = world
    with two_engine_workers(tmp_path, settings) as (workers, logs):
        job = start_segmentation(model.cohort, model, user=members[C])
        wait_until_finished(job, logs)
    _assert_one_mask_each(job, patients, logs)
    pids = {part.worker.rsplit(":", 1)[1] for part in JobPart.objects.filter(job=job)}
    assert pids == {str(worker.pid) for worker in workers}, "both workers predicted parts"
    assert all(part.tasks == ["inference.tasks.gpu_predict_masks_part"] for part in job.parts.all())


def test_a_worker_killed_mid_prediction_leaves_its_patient_to_the_other(
    tmp_path, settings, world, members
):
    patients, model = world
    # Each prediction of the workers is delayed by three seconds (engine_worker_settings), time
    # enough to kill a worker in the middle of a part whatever the speed of the machine.
    delayed = {"PMPD_TEST_WORK_DELAY_SECONDS": "3"}
    with two_engine_workers(tmp_path, settings, **delayed) as (workers, logs):
        job = start_segmentation(model.cohort, model, user=members[C])
        stored = MaskVersion.objects.filter(produced_by_job=job)
        running, pid = kill_mid_part(
            job, workers, logs, patients_done=stored.values_list("patient_id", flat=True)
        )
        wait_until_finished(job, logs)
    _assert_one_mask_each(job, patients, logs)
    taken_over = JobPart.objects.get(pk=running.pk)
    assert taken_over.status == "done" and taken_over.attempts >= 2
    assert taken_over.worker.rsplit(":", 1)[1] != str(pid), "the other worker finished it"
