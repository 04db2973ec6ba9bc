"""A real Celery worker on Redis runs an ingest from the cpu queue."""

from __future__ import annotations

import pytest
from factories import make_patient
from imagemaker import dicom_series, folder_files, small_patient, upload_files, write_volume
from kombu import pools
from workers import celery_worker, redis_url, wait_for

from pmpd_web.celery import app
from pmpd_web.imaging.models import CanonicalVolume, ImageSeries
from pmpd_web.imaging.uploads import finish_upload


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_ingests_an_upload(tmp_path, settings, cohort, members):
    if app.conf.broker_url != redis_url():
        pytest.fail(f"run the tests with CELERY_BROKER_URL={redis_url()} (make test does)")
    settings.MEDIA_ROOT = tmp_path / "shared-media"
    app.conf.task_always_eager = False
    patient = small_patient()
    make_patient(cohort, patient.study_id)
    folder = tmp_path / "in" / patient.study_id
    dicom_series(patient, folder / "ct")
    write_volume(patient.mask, patient, folder / "mask.nii.gz")
    log = tmp_path / "worker.log"
    try:
        with celery_worker(log=log, extra_env={"DJANGO_MEDIA_ROOT": str(settings.MEDIA_ROOT)}):
            upload = upload_files(cohort, members["coordinator"], folder_files(tmp_path / "in"))
            job = finish_upload(upload, members["coordinator"])

            def finished():
                job.refresh_from_db()
                return job.finished

            wait_for(finished, timeout=300, log=log)
    finally:
        # Close the broker connections, and leave the app fresh ones for later tests.
        app.pool.force_close_all()
        pools.reset()
        app._pool = None
        app.amqp._producer_pool = None
    assert job.status == "succeeded", job.error
    assert ImageSeries.objects.get(modality="CT").is_selected
    assert CanonicalVolume.objects.filter(kind="mask").count() == 1
    assert "ingest_upload_task" in log.read_text()
