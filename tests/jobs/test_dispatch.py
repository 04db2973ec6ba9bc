"""Starting jobs reliably (issue 9, item 2): the job row is the source of truth; a queue that
is down when a job starts gives the user a 503 with an honest message and leaves the job
waiting, not stranded; the sweeper publishes it when the queue is back; the person who started
a job (or an admin) can retry or cancel it; a dead worker is named as such (item 9)."""

from __future__ import annotations

import types
from datetime import timedelta

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from rest_framework.test import APIClient
from tablemaker import rows, to_csv

from pmpd_web.cohorts import tasks as cohort_tasks
from pmpd_web.cohorts.importer import start_commit, upload_table
from pmpd_web.cohorts.models import Patient, TableImport
from pmpd_web.jobs import dispatch
from pmpd_web.jobs.models import Job, JobStatus, RunningElsewhere, job_stopped
from pmpd_web.jobs.runner import run_job


@pytest.fixture
def queue_down(monkeypatch):
    """The broker refuses every message, as kombu reports it after its own retries."""

    def refuse(*args, **kwargs):
        raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(cohort_tasks.commit_table_import, "apply_async", refuse)
    return monkeypatch


def previewed(cohort, user, n: int = 3) -> TableImport:
    return upload_table(cohort=cohort, user=user, data=to_csv(rows(n)), filename="t.csv")


def age(job: Job, minutes: int) -> None:
    past = timezone.now() - timedelta(minutes=minutes)
    Job.objects.filter(pk=job.pk).update(created_at=past, published_at=None)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_queue_down_at_start_gives_a_clear_503_and_the_job_runs_once_when_it_is_back(
    client_for, cohort, members, queue_down
):
    user = members["coordinator"]
    table_import = previewed(cohort, user)
    client = client_for(user)
    response = client.post(f"/cohorts/{cohort.pk}/import/{table_import.pk}/commit/")
    assert response.status_code == 503
    page = response.content.decode()
    assert "The job queue is unreachable" in page and "is saved" in page
    job = Job.objects.get(kind=Job.Kind.TABLE_IMPORT)
    assert job.status == "queued" and job.waiting_for_queue and job.published_at is None
    assert "unreachable" in job.phrase
    detail = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Waiting for the queue" in detail and "will start by itself" in detail
    # A second commit is refused in words, not by "already running" forever: the job waits.
    table_import.refresh_from_db()
    assert table_import.status == TableImport.Status.COMMITTING

    queue_down.undo()  # the queue is back
    age(job, minutes=1)
    report = dispatch.sweep()
    assert report.republished == [job.pk]
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert Patient.objects.filter(cohort=cohort).count() == 3
    assert dispatch.sweep().republished == []


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_api_answers_503_with_the_message(cohort, members, queue_down):
    user = members["coordinator"]
    table_import = previewed(cohort, user)
    api = APIClient()
    api.force_login(user)
    response = api.post(f"/api/cohorts/{cohort.pk}/imports/{table_import.pk}/commit/")
    assert response.status_code == 503
    assert "The job queue is unreachable" in response.json()["detail"]
    job = Job.objects.get()
    state = api.get(f"/api/jobs/{job.pk}/").json()
    assert state["waiting_for_queue"] and "queue was unreachable" in state["state"]


@pytest.mark.django_db
def test_the_sweeper_republishes_a_job_no_worker_picked_up(cohort, members, monkeypatch, settings):
    settings.PMPD_JOB_REPUBLISH_AFTER_SECONDS = 600
    sent = []
    monkeypatch.setattr(
        cohort_tasks.commit_table_import, "apply_async", lambda args, **kw: sent.append(args)
    )
    job = start_commit(previewed(cohort, members["coordinator"]), members["coordinator"])
    dispatch.publish(job)
    assert sent == [[job.pk]]
    assert dispatch.sweep().republished == []  # published just now
    Job.objects.filter(pk=job.pk).update(published_at=timezone.now() - timedelta(minutes=11))
    assert dispatch.sweep().republished == [job.pk]
    assert sent == [[job.pk], [job.pk]]
    job.refresh_from_db()
    assert "again" in job.phrase


@pytest.mark.django_db
def test_a_message_for_a_job_that_runs_well_elsewhere_is_refused(cohort):
    job = Job.objects.create(kind=Job.Kind.ANALYSIS, cohort=cohort, task="x")
    assert job.claim("message-1") and job.attempts == 1
    # The sweeper's second message, while the first worker is alive: refused.
    assert not Job.objects.get(pk=job.pk).claim("message-2")
    # The first message delivered again while its worker still beats (a visibility timeout
    # shorter than the work): not taken over, to be looked at again later.
    with pytest.raises(RunningElsewhere):
        Job.objects.get(pk=job.pk).claim("message-1")
    # A stale heartbeat (its worker died): the redelivery, or any message, takes it over.
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert Job.objects.get(pk=job.pk).claim("message-1")
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    again = Job.objects.get(pk=job.pk)
    assert again.claim("message-3") and again.attempts == 3


class _Delivery:
    """What a Celery task shows ``run_job`` of its delivery, and the copies it sends."""

    def __init__(self, message_id: str, retries: int = 0) -> None:
        self.request = types.SimpleNamespace(id=message_id, args=[], kwargs={}, retries=retries)
        self.sent: list[dict] = []
        self.max_retries = 3

    def apply_async(self, **options) -> None:
        self.sent.append(options)


@pytest.mark.django_db
def test_a_redelivery_while_the_worker_beats_is_looked_at_again_once_it_would_be_stale(
    cohort, settings
):
    settings.PMPD_JOB_HEARTBEAT_STALE_SECONDS = 120
    job = Job.objects.create(kind=Job.Kind.ANALYSIS, cohort=cohort, task="x")
    assert job.claim("message-1")
    ran = []
    delivery = _Delivery("message-1", retries=1)
    run_job(job.pk, lambda job, progress: ran.append(job.pk) or {}, task=delivery)
    assert ran == [], "the work runs once at a time"
    assert delivery.sent == [
        {"args": [], "kwargs": {}, "task_id": "message-1", "countdown": 121, "retries": 1}
    ]
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.attempts == 1
    # Its worker died meanwhile: the copy takes the job over and runs it.
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    copy = _Delivery("message-1", retries=1)
    run_job(job.pk, lambda job, progress: ran.append(job.pk) or {"done": True}, task=copy)
    job.refresh_from_db()
    assert ran == [job.pk] and copy.sent == []
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2


@pytest.mark.django_db
def test_a_job_whose_worker_dies_every_time_is_failed_not_run_for_ever(
    cohort, settings, client_for, members
):
    """Work that kills its worker each time (out of memory on one scan) would go round the
    workers for ever: the third dead worker fails the job with the reason."""
    settings.PMPD_JOB_MAX_WORKERS_LOST = 3
    job = Job.objects.create(kind=Job.Kind.ANALYSIS, cohort=cohort, task="x")
    stopped = []
    job_stopped.connect(lambda **kw: stopped.append(kw["status"]), weak=False, dispatch_uid="t")
    ran = []
    try:
        assert job.claim("message-1")
        for taken_over in (1, 2):
            Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
            assert job.claim("message-1") and job.workers_lost == taken_over
        Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        run_job(job.pk, lambda job, progress: ran.append(job.pk) or {}, task=_Delivery("message-1"))
    finally:
        job_stopped.disconnect(dispatch_uid="t")
    job.refresh_from_db()
    assert ran == [] and stopped == [JobStatus.FAILED]
    assert job.status == JobStatus.FAILED and job.attempts == 3 and job.workers_lost == 3
    assert job.error.startswith("The worker stopped 3 times before finishing (killed, out of")
    assert "Retry starts it once more" in job.error and job.can_retry
    page = client_for(members["clinician"]).get(f"/jobs/{job.pk}/").content.decode()
    assert "workers lost: 3" in page and "The worker stopped 3 times" in page
    api = APIClient()
    api.force_login(members["clinician"])
    assert api.get(f"/api/jobs/{job.pk}/").json()["workers_lost"] == 3


@pytest.mark.django_db
def test_a_dead_worker_is_named_on_the_page_and_in_the_api(client_for, cohort, members, settings):
    settings.PMPD_JOB_HEARTBEAT_STALE_SECONDS = 120
    job = Job.objects.create(kind=Job.Kind.IMAGE_INGEST, cohort=cohort)
    job.update_status(JobStatus.RUNNING, progress=19, phrase="Patient P-1: storing")
    client = client_for(members["clinician"])
    alive = client.get(f"/jobs/{job.pk}/progress/").content.decode()
    assert "19%" in alive and "stopped responding" not in alive
    stopped_at = timezone.now() - timedelta(hours=6)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=stopped_at)
    page = client.get(f"/jobs/{job.pk}/progress/").content.decode()
    local = timezone.localtime(stopped_at)
    assert f"The worker stopped responding at {local:%H:%M}" in page
    api = APIClient()
    api.force_login(members["clinician"])
    state = api.get(f"/api/jobs/{job.pk}/").json()
    assert state["worker_lost"] and "stopped responding" in state["state"]


@pytest.mark.slow
@pytest.mark.django_db
def test_the_starter_retries_a_failed_job_from_its_page(
    client_for, cohort, members, monkeypatch, django_capture_on_commit_callbacks
):
    user = members["coordinator"]
    real = cohort_tasks.commit_import
    monkeypatch.setattr(
        cohort_tasks, "commit_import", lambda *a: (_ for _ in ()).throw(KeyError("bug"))
    )
    table_import = previewed(cohort, user)
    with django_capture_on_commit_callbacks(execute=True):
        job = start_commit(table_import, user)
    job.refresh_from_db()
    assert job.status == "failed"
    monkeypatch.setattr(cohort_tasks, "commit_import", real)
    client = client_for(user)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Retry" in page
    response = client.post(f"/jobs/{job.pk}/retry/")
    assert response.status_code == 302
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result["created"]) == ("succeeded", 2, 3)
    table_import.refresh_from_db()
    assert table_import.status == TableImport.Status.COMMITTED
    # A finished job is not retried again.
    api = APIClient()
    api.force_login(user)
    assert api.post(f"/api/jobs/{job.pk}/retry/").status_code == 409


@pytest.mark.django_db
def test_cancelling_a_queued_import_lets_it_be_committed_again(cohort, members):
    user = members["coordinator"]
    table_import = previewed(cohort, user)
    job = start_commit(table_import, user)  # the test never commits: nothing is published
    api = APIClient()
    api.force_login(user)
    response = api.post(f"/api/jobs/{job.pk}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    table_import.refresh_from_db()
    assert table_import.status == TableImport.Status.PREVIEWED
    run_job(job.pk, lambda job, progress: pytest.fail("a cancelled job ran"))
    assert api.post(f"/api/jobs/{job.pk}/cancel/").status_code == 409


@pytest.mark.django_db
def test_a_running_job_stops_at_its_next_progress_report_when_cancelled(cohort):
    job = Job.objects.create(kind=Job.Kind.ANALYSIS, cohort=cohort)
    steps = []

    def work(running, progress):
        progress(10, "step 1")
        steps.append(1)
        dispatch.cancel(Job.objects.get(pk=running.pk))
        progress(20, "step 2")
        steps.append(2)
        return {}

    run_job(job.pk, work)
    job.refresh_from_db()
    assert steps == [1] and job.status == "cancelled"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_scoring_stranded_by_the_queue_is_cancelled_and_the_cohort_scored_again(
    cohort, members, monkeypatch
):
    from engine_fixtures import make_random_version

    from inference import jobs
    from inference import tasks as inference_tasks

    version = make_random_version(cohort)
    user = members["coordinator"]

    def refuse(*args, **kwargs):
        raise BrokerError("Connection refused.")

    monkeypatch.setattr(inference_tasks.gpu_score_cohort, "apply_async", refuse)
    with pytest.raises(dispatch.JobQueueUnavailable, match="The job queue is unreachable"):
        jobs.start_scoring(cohort, version, user=user)
    stranded = Job.objects.get(kind=Job.Kind.SCORING)
    assert stranded.waiting_for_queue
    with pytest.raises(Exception, match=rf"cancel it on its page, /jobs/{stranded.pk}/"):
        jobs.create_scoring(cohort, version, user=user)
    dispatch.cancel(stranded)
    sent = []
    monkeypatch.setattr(
        inference_tasks.gpu_score_cohort, "apply_async", lambda args, **kw: sent.append(args)
    )
    again = jobs.start_scoring(cohort, version, user=user)
    assert sent == [[again.pk]] and again.pk != stranded.pk


@pytest.mark.slow
@pytest.mark.django_db
def test_a_job_that_stops_leaves_its_work_in_a_state_the_user_can_act_on(cohort, members):
    from django.core.files.storage import default_storage
    from engine_fixtures import make_random_version
    from imagemaker import upload_files

    from inference.models import ModelVersion
    from pmpd_web.imaging.models import ImageUpload

    version = make_random_version(cohort)
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.TRAINING)
    training = Job.objects.create(
        kind=Job.Kind.TRAINING, cohort=cohort, parameters={"model_version": version.pk}
    )
    training.update_status(JobStatus.RUNNING)
    training.update_status(JobStatus.FAILED, error="Gave up after 4 attempt(s)")
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.FAILED  # not "training" forever

    upload = upload_files(cohort, members["coordinator"], {"P-1/ct/1.dcm": b"identifying"})
    chunk = upload.files.get().chunks[0][2]
    assert default_storage.exists(chunk)
    ingest = Job.objects.create(kind=Job.Kind.IMAGE_INGEST, cohort=cohort, task="x")
    ImageUpload.objects.filter(pk=upload.pk).update(job=ingest, status="queued")
    dispatch.cancel(ingest)
    upload.refresh_from_db()
    assert (upload.status, upload.error) == ("failed", "Cancelled")
    # The received files are gone (they may identify the patient): nothing left to retry.
    assert not default_storage.exists(chunk) and upload.files.get().chunks == []
    failed = Job.objects.create(kind=Job.Kind.IMAGE_INGEST, cohort=cohort, task="x")
    failed.update_status(JobStatus.FAILED)
    assert not failed.can_retry


@pytest.mark.django_db
def test_an_attempt_that_fails_after_a_cancel_leaves_the_job_cancelled(cohort):
    job = Job.objects.create(kind=Job.Kind.IMAGE_INGEST, cohort=cohort)

    def cancelled_then_broken(running, progress):
        dispatch.cancel(Job.objects.get(pk=running.pk))
        raise FileNotFoundError("the received files were deleted by the cancel")

    run_job(job.pk, cancelled_then_broken)
    job.refresh_from_db()
    assert job.status == "cancelled" and job.error == ""
