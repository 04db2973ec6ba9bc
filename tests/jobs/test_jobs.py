"""Job status transitions, and a real Celery worker on Redis running an import job."""

from __future__ import annotations

import pytest
from tablemaker import rows, to_csv
from workers import celery_worker, wait_for

from pmpd_web.celery import app
from pmpd_web.cohorts.importer import start_commit, upload_table
from pmpd_web.cohorts.models import Patient
from pmpd_web.jobs.models import IllegalTransition, Job, JobStatus
from pmpd_web.jobs.runner import UserFacingError, run_job


@pytest.mark.django_db
def test_update_status_is_the_one_way_through():
    job = Job.objects.create(kind=Job.Kind.TABLE_IMPORT)
    assert (job.status, job.progress, job.attempts) == ("queued", 0, 0)
    job.update_status(JobStatus.RUNNING, progress=10, phrase="Reading")
    assert job.attempts == 1 and job.started_at is not None
    job.update_status(progress=150, phrase="x" * 300)
    assert job.progress == 100 and len(job.phrase) == 200
    job.update_status(JobStatus.SUCCEEDED)
    assert job.finished and job.finished_at is not None
    with pytest.raises(IllegalTransition, match="A succeeded job cannot become running"):
        job.update_status(JobStatus.RUNNING)
    fresh = Job.objects.get(pk=job.pk)
    assert (fresh.status, fresh.progress) == ("succeeded", 100)


@pytest.mark.django_db
def test_run_job_reports_user_errors_and_hides_internal_ones():
    def refuse(job, progress):
        progress(30, "Checking")
        raise UserFacingError("t.csv: row 4, column sex: 'x' is not one of: female, male")

    def crash(job, progress):
        raise KeyError("internal detail")

    first = Job.objects.create(kind=Job.Kind.TABLE_IMPORT)
    run_job(first.pk, refuse)
    first.refresh_from_db()
    assert first.status == "failed" and "row 4, column sex" in first.error
    second = Job.objects.create(kind=Job.Kind.TABLE_IMPORT)
    run_job(second.pk, crash)
    second.refresh_from_db()
    assert second.status == "failed"
    assert "KeyError" in second.error and "internal detail" not in second.error


@pytest.mark.django_db
def test_a_finished_job_is_not_run_again():
    job = Job.objects.create(kind=Job.Kind.TABLE_IMPORT, status=JobStatus.SUCCEEDED)
    calls = []
    run_job(job.pk, lambda j, p: calls.append(1) or {})
    assert calls == []


def test_celery_is_configured_for_reliable_work():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert {q.name for q in conf.task_queues} == {"cpu", "gpu"}
    assert conf.task_routes["inference.tasks.gpu_*"]["queue"] == "gpu"
    from pmpd_web.cohorts.tasks import commit_table_import

    assert commit_table_import.max_retries == 3


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_on_redis_runs_an_import(tmp_path, settings, cohort, members):
    from workers import redis_url

    if app.conf.broker_url != redis_url():
        pytest.fail(f"run the tests with CELERY_BROKER_URL={redis_url()} (make test does)")
    settings.MEDIA_ROOT = tmp_path / "shared-media"
    app.conf.task_always_eager = False
    log = tmp_path / "worker.log"
    with celery_worker(log=log, extra_env={"DJANGO_MEDIA_ROOT": str(settings.MEDIA_ROOT)}):
        table_import = upload_table(
            cohort=cohort,
            user=members["coordinator"],
            data=to_csv(rows(50)),
            filename="t.csv",
        )
        job = start_commit(table_import, members["coordinator"])

        def finished():
            job.refresh_from_db()
            return job.finished

        wait_for(finished, timeout=60, log=log)
    assert job.status == "succeeded", job.error
    assert job.result["created"] == 50 and job.attempts == 1
    assert Patient.objects.filter(cohort=cohort).count() == 50
    assert "commit_table_import" in log.read_text()
