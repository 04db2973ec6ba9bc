"""A worker killed with SIGKILL in the middle of an ingest leaves no file behind (issue 9, item
9): the de-identified files it had written are recorded on the job, the redelivered job
removes them before it starts again, its scratch folder is removed, and it finishes."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from factories import make_patient
from imagemaker import dicom_series, folder_files, small_patient, upload_files, write_volume
from kombu import pools
from workers import REPO, celery_worker, redis_url, wait_for

from pmpd_web.celery import app
from pmpd_web.imaging.models import DicomInstance, ImageUpload
from pmpd_web.imaging.uploads import finish_upload
from pmpd_web.jobs.files import referenced_names, stored_names, unreferenced_files
from pmpd_web.jobs.models import Job

N_PATIENTS = 4


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_killed_ingest_leaves_no_orphan_file_and_the_redelivered_job_finishes(
    tmp_path, settings, cohort, members
):
    if app.conf.broker_url != redis_url():
        pytest.fail(f"run the tests with CELERY_BROKER_URL={redis_url()} (make test does)")
    settings.MEDIA_ROOT = tmp_path / "shared-media"
    scratch = tmp_path / "scratch"
    app.conf.task_always_eager = False
    for index in range(N_PATIENTS):
        patient = small_patient(index + 2, study_id=f"KILL-{index}")
        make_patient(cohort, patient.study_id)
        folder = tmp_path / "in" / patient.study_id
        dicom_series(patient, folder / "ct", private_tags=False)
        write_volume(patient.mask, patient, folder / "mask.nii.gz")
    environment = {
        "DJANGO_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "DJANGO_SETTINGS_MODULE": "engine_worker_settings",  # a 2 s visibility timeout
        "PYTHONPATH": str(REPO / "tests" / "support"),
        "PMPD_JOB_SCRATCH_DIR": str(scratch),
        # The killed worker's job is taken over once its heartbeat is stale: a few seconds
        # here (the redelivered message waits for that rather than run beside a live worker).
        "PMPD_JOB_HEARTBEAT_SECONDS": "1",
        "PMPD_JOB_HEARTBEAT_STALE_SECONDS": "6",
    }
    first_log, second_log = tmp_path / "first-worker.log", tmp_path / "second-worker.log"
    try:
        with celery_worker(log=first_log, extra_env=environment) as first:
            upload = upload_files(cohort, members["coordinator"], folder_files(tmp_path / "in"))
            job = finish_upload(upload, members["coordinator"])

            def wrote_some_files() -> bool:
                job.refresh_from_db()
                return len(job.written_files) >= 20 or job.finished

            wait_for(wrote_some_files, timeout=240, interval=0.05, log=first_log)
            assert not job.finished, "the ingest ended before the worker could be killed"
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        job.refresh_from_db()
        left_by_the_kill = set(job.written_files)
        media = settings.MEDIA_ROOT
        # Recorded before written: the last one may not have been written when the kill came.
        assert len(left_by_the_kill & set(stored_names(media))) >= 19, "the files were written"
        assert any(scratch.glob("job-*")), "the killed attempt's scratch folder is there"
        assert DicomInstance.objects.count() == 0

        with celery_worker(log=second_log, extra_env=environment, flush=False):

            def finished() -> bool:
                job.refresh_from_db()
                return job.finished

            wait_for(finished, timeout=300, log=second_log)
    finally:
        app.pool.force_close_all()
        pools.reset()
        app._pool = None
        app.amqp._producer_pool = None
    job = Job.objects.get(pk=job.pk)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2 and job.written_files == []
    assert ImageUpload.objects.get(pk=upload.pk).status == "done"
    assert job.result["ct_added"] == N_PATIENTS
    # What the killed attempt wrote is either gone or (the same name written again by the
    # second attempt) referenced by a row; nothing under the media folder is unreferenced.
    assert unreferenced_files(older_than=timedelta(0)) == []
    referenced = referenced_names()
    stranded = sorted((left_by_the_kill - referenced) & set(stored_names(media)))
    assert not stranded, (stranded[:3], len(stranded), sorted(referenced)[:3])
    assert not any(scratch.glob("job-*"))
