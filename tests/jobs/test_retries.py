"""One retry policy for every job task: a transient error is retried with backoff, and the job
fails with the reason after the last retry instead of waiting to retry forever (issue 9,
item 3). Celery's eager mode honours the retries: each one runs the task again."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from tablemaker import rows, to_csv

from analytics import tasks as analytics_tasks
from inference import tasks as inference_tasks
from pmpd_web.cohorts import tasks as cohort_tasks
from pmpd_web.cohorts.importer import start_commit, upload_table
from pmpd_web.cohorts.models import TableImport
from pmpd_web.imaging import tasks as imaging_tasks
from pmpd_web.jobs.models import Job
from pmpd_web.jobs.runner import retry_countdown
from pmpd_web.jobs.tasks import job_task


@pytest.mark.django_db
def test_a_job_whose_error_stays_transient_fails_with_the_reason_after_the_last_retry(
    cohort, members, monkeypatch, settings, django_capture_on_commit_callbacks
):
    calls = []

    def database_gone(table_import, progress):
        calls.append(table_import.pk)
        progress(10, "Reading the table")
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(cohort_tasks, "commit_import", database_gone)
    table_import = upload_table(
        cohort=cohort, user=members["coordinator"], data=to_csv(rows(3)), filename="t.csv"
    )
    with django_capture_on_commit_callbacks(execute=True):
        job = start_commit(table_import, members["coordinator"])
    job.refresh_from_db()
    retries = settings.CELERY_TASK_MAX_RETRIES
    assert len(calls) == retries + 1
    assert job.status == "failed" and job.attempts == retries + 1
    assert f"Gave up after {retries + 1} attempt(s)" in job.error
    assert "OperationalError" in job.error and "server closed" not in job.error
    # The import does not stay "committing": it can be seen to have failed.
    table_import.refresh_from_db()
    assert table_import.status == TableImport.Status.FAILED


@pytest.mark.django_db
def test_a_transient_error_that_clears_is_retried_and_the_job_succeeds(
    cohort, members, monkeypatch, django_capture_on_commit_callbacks
):
    real = cohort_tasks.commit_import
    calls = []

    def flaky(table_import, progress):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("storage unreachable")
        return real(table_import, progress)

    monkeypatch.setattr(cohort_tasks, "commit_import", flaky)
    table_import = upload_table(
        cohort=cohort, user=members["coordinator"], data=to_csv(rows(3)), filename="t.csv"
    )
    with django_capture_on_commit_callbacks(execute=True):
        job = start_commit(table_import, members["coordinator"])
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result["created"]) == ("succeeded", 2, 3)


def test_every_job_task_has_the_one_policy(settings):
    job_tasks = [
        cohort_tasks.commit_table_import,
        imaging_tasks.ingest_upload_task,
        inference_tasks.gpu_train_model,
        inference_tasks.gpu_score_cohort,
        analytics_tasks.compute_dashboards,
        inference_tasks.cpu_preprocess_patient,
    ]
    for task in job_tasks:
        assert task.acks_late and task.reject_on_worker_lost, task.name
        assert task.max_retries == settings.CELERY_TASK_MAX_RETRIES, task.name
        # The retry policy is the runner's (with the reason on the job), not Celery's own.
        assert not getattr(task, "autoretry_for", ()), task.name
    assert inference_tasks.gpu_train_model.name == "inference.tasks.gpu_train_model"


def test_backoff_grows_and_is_capped(settings):
    settings.PMPD_JOB_RETRY_BACKOFF_SECONDS = 2
    settings.PMPD_JOB_RETRY_BACKOFF_MAX_SECONDS = 30
    assert all(0 <= retry_countdown(0) <= 2 for _ in range(20))
    assert all(retry_countdown(10) <= 30 for _ in range(20))
    assert max(retry_countdown(4) for _ in range(50)) > 2


@pytest.mark.django_db
def test_a_task_takes_the_job_key_only_and_reads_its_parameters(cohort):
    seen = {}

    @job_task
    def echo_parameters(job, progress):
        seen.update(job.parameters)
        return {"done": True}

    job = Job.objects.create(kind=Job.Kind.ANALYSIS, cohort=cohort, parameters={"section": "x"})
    echo_parameters.apply(args=[job.pk])
    job.refresh_from_db()
    assert seen == {"section": "x"} and job.result == {"done": True}
