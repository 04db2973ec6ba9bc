"""A job split into parts (``pmpd_web.jobs.parts``): one worker at a time per part, the last
part settles the job, and the sweeper publishes again a part whose worker died."""

from __future__ import annotations

import types
from datetime import timedelta

import pytest
from django.utils import timezone

from pmpd_web.jobs import parts as job_parts
from pmpd_web.jobs.dispatch import sweep
from pmpd_web.jobs.models import Job, JobPart, JobStatus, RunningElsewhere, job_stopped

TASKS = ["inference.tasks.gpu_score_part"]


@pytest.fixture
def running_job(cohort):
    job = Job.objects.create(kind=Job.Kind.SCORING, cohort=cohort, task="")
    job.claim("coordinator-message")
    return job


def _split(job, n=3):
    planned = [job_parts.PlannedPart({"patients": [k]}, 1) for k in range(n)]
    return job_parts.split(job, planned, tasks=TASKS)


@pytest.mark.django_db
def test_parts_are_created_once(running_job):
    first = _split(running_job)
    again = _split(running_job, n=5)
    assert [p.pk for p in again] == [p.pk for p in first] and len(first) == 3


@pytest.mark.django_db
def test_a_part_runs_once_at_a_time(running_job, settings):
    part = _split(running_job)[0]
    assert job_parts.claim_part(part.pk, "message-a") is not None
    # Another message (the sweeper's copy) while the first runs well: refused.
    assert job_parts.claim_part(part.pk, "message-b") is None
    # The message that started it, delivered again while its worker still beats: not taken
    # (both would run it), to be looked at again later.
    with pytest.raises(RunningElsewhere):
        job_parts.claim_part(part.pk, "message-a")
    # A stale heartbeat (its worker died): the redelivery, or any message, takes it.
    stale = timezone.now() - timedelta(seconds=settings.PMPD_JOB_HEARTBEAT_STALE_SECONDS + 5)
    JobPart.objects.filter(pk=part.pk).update(heartbeat_at=stale)
    assert job_parts.claim_part(part.pk, "message-a") is not None
    JobPart.objects.filter(pk=part.pk).update(heartbeat_at=stale)
    taken = job_parts.claim_part(part.pk, "message-c")
    assert taken is not None and taken.attempts == 3


@pytest.mark.django_db
def test_a_part_delivered_again_while_its_worker_beats_is_sent_again_for_later(
    running_job, settings
):
    settings.PMPD_JOB_HEARTBEAT_STALE_SECONDS = 30
    part = _split(running_job)[0]
    assert job_parts.claim_part(part.pk, "message-a") is not None
    sent, ran = [], []
    delivery = types.SimpleNamespace(
        request=types.SimpleNamespace(id="message-a", args=[part.pk], kwargs={}, retries=0),
        apply_async=lambda **options: sent.append(options),
    )
    job_parts.run_part(part.pk, lambda *a: ran.append(a) or {}, lambda job, r: {}, task=delivery)
    assert ran == [] and sent == [
        {"args": [part.pk], "kwargs": {}, "task_id": "message-a", "countdown": 31, "retries": 0}
    ]
    part.refresh_from_db()
    assert part.status == JobPart.Status.RUNNING and part.attempts == 1


@pytest.mark.django_db
def test_nothing_runs_for_a_cancelled_job(running_job):
    part = _split(running_job)[0]
    running_job.update_status(JobStatus.CANCELLED)
    assert job_parts.claim_part(part.pk, "message-a") is None


@pytest.mark.django_db
def test_the_last_part_settles_the_job_with_the_merged_result(running_job):
    def work(job, payload, scratch):
        assert scratch.is_dir()
        return {"done": payload["patients"]}

    def finish(job, results):
        return {"patients": sorted(k for result in results for k in result["done"])}

    for part in _split(running_job):
        job_parts.run_part(part.pk, work, finish)
        running_job.refresh_from_db()
        if part.index < 2:
            assert running_job.status == JobStatus.RUNNING
            assert running_job.progress == int(100 * (part.index + 1) / 3)
    assert running_job.status == JobStatus.SUCCEEDED
    assert running_job.result == {"patients": [0, 1, 2]}


@pytest.mark.django_db
def test_the_sweeper_publishes_again_the_part_of_a_dead_worker(running_job, settings, monkeypatch):
    lost, well, queued = _split(running_job)
    job_parts.claim_part(lost.pk, "dead-worker")
    job_parts.claim_part(well.pk, "live-worker")
    stale = timezone.now() - timedelta(seconds=settings.PMPD_JOB_HEARTBEAT_STALE_SECONDS + 5)
    JobPart.objects.filter(pk=lost.pk).update(heartbeat_at=stale)
    JobPart.objects.filter(pk=queued.pk).update(published_at=timezone.now())
    published = []
    monkeypatch.setattr(
        job_parts, "publish_parts", lambda chosen: published.extend(p.pk for p in chosen)
    )
    report = sweep()
    assert published == [lost.pk] and report.parts_republished == [lost.pk]
    assert JobPart.objects.get(pk=lost.pk).status == JobPart.Status.QUEUED
    assert job_parts.claim_part(lost.pk, "republished-message") is not None


@pytest.mark.django_db
def test_a_failed_part_fails_the_job_and_runs_again_when_the_job_is_retried(running_job):
    from pmpd_web.jobs.runner import UserFacingError

    part = _split(running_job, n=1)[0]

    def refuse(job, payload, scratch):
        raise UserFacingError("PHX-0001: the mask has no tumour label")

    job_parts.run_part(part.pk, refuse, lambda job, results: {})
    running_job.refresh_from_db()
    assert running_job.status == JobStatus.FAILED
    assert running_job.error == "PHX-0001: the mask has no tumour label"
    assert JobPart.objects.get(pk=part.pk).status == JobPart.Status.QUEUED
    running_job.update_status(JobStatus.QUEUED)
    running_job.claim("retry-message")
    assert job_parts.claim_part(part.pk, "new-message") is not None


@pytest.mark.django_db
def test_a_job_whose_parts_are_all_done_is_settled_by_its_next_attempt(running_job):
    parts = _split(running_job, n=2)
    JobPart.objects.filter(job=running_job).update(status="done", result={"n": 1})
    parts = list(JobPart.objects.filter(job=running_job))
    result = job_parts.hand_over(
        running_job, parts, lambda job, results: {"n": sum(r["n"] for r in results)}
    )
    assert result == {"n": 2}


def _worker_dies(part, settings):
    """The part's worker stops beating (killed): its heartbeat goes stale."""
    stale = timezone.now() - timedelta(seconds=settings.PMPD_JOB_HEARTBEAT_STALE_SECONDS + 5)
    JobPart.objects.filter(pk=part.pk).update(heartbeat_at=stale)


@pytest.mark.django_db
def test_a_part_whose_worker_dies_every_time_fails_the_job_naming_the_part(
    running_job, settings, monkeypatch
):
    settings.PMPD_JOB_MAX_WORKERS_LOST = 3
    monkeypatch.setattr(job_parts, "publish_parts", lambda chosen: None)
    stopped = []
    part = _split(running_job, n=2)[1]
    ran = []

    def work(job, payload, scratch):
        ran.append(payload)
        return {}

    # Taken over twice after a dead worker (by the redelivered message, then the sweeper's copy).
    assert job_parts.claim_part(part.pk, "first") is not None
    _worker_dies(part, settings)
    assert job_parts.claim_part(part.pk, "first").workers_lost == 1
    _worker_dies(part, settings)
    job_parts.republish_lost_parts()
    assert JobPart.objects.get(pk=part.pk).workers_lost == 2
    assert job_parts.claim_part(part.pk, "sweeper-copy") is not None
    # The third dead worker: the next message does not run it again, it fails the job.
    _worker_dies(part, settings)
    job_stopped.connect(lambda **kw: stopped.append(kw["status"]), weak=False, dispatch_uid="t")
    try:
        job_parts.run_part(
            part.pk, work, lambda job, results: {}, describe=lambda p: f"patients {p['patients']}"
        )
    finally:
        job_stopped.disconnect(dispatch_uid="t")
    running_job.refresh_from_db()
    assert ran == [] and stopped == [JobStatus.FAILED]
    assert running_job.status == JobStatus.FAILED
    assert running_job.error.startswith(
        "The worker stopped 3 times on part 2 of 2 (patients [1]) before finishing (killed, "
        "out of memory, or its host went down), so the job is not started again by itself."
    )
    part.refresh_from_db()
    assert part.status == JobPart.Status.QUEUED and part.workers_lost == 3


@pytest.mark.django_db
def test_a_retry_gives_a_given_up_part_its_workers_again(running_job, settings, monkeypatch):
    from pmpd_web.jobs import dispatch

    settings.PMPD_JOB_MAX_WORKERS_LOST = 1
    part = _split(running_job, n=1)[0]
    job_parts.claim_part(part.pk, "first")
    _worker_dies(part, settings)
    with pytest.raises(job_parts.PartAbandoned):
        job_parts.claim_part(part.pk, "first")
    running_job.update_status(JobStatus.FAILED, error="given up")
    monkeypatch.setattr(dispatch, "publish", lambda job: None)
    dispatch.retry(running_job)
    assert JobPart.objects.get(pk=part.pk).workers_lost == 0
    assert running_job.claim("retry")
    assert job_parts.claim_part(part.pk, "retry-part") is not None


@pytest.mark.django_db
def test_a_worker_that_died_in_a_parts_cpu_step_is_counted(running_job, settings):
    settings.PMPD_JOB_MAX_WORKERS_LOST = 2
    part = _split(running_job, n=1)[0]
    warmed = []
    assert job_parts.run_warming(part.pk, lambda payload: warmed.append(1) or 7) == 7
    assert JobPart.objects.get(pk=part.pk).warming_at is None, "a finished step clears its mark"
    # A worker killed in the step leaves its mark; the next start counts it.
    JobPart.objects.filter(pk=part.pk).update(warming_at=timezone.now())
    assert job_parts.run_warming(part.pk, lambda payload: warmed.append(2) or 1) == 1
    assert JobPart.objects.get(pk=part.pk).workers_lost == 1
    JobPart.objects.filter(pk=part.pk).update(warming_at=timezone.now())
    assert job_parts.run_warming(part.pk, lambda payload: warmed.append(3) or 1) == 0
    assert warmed == [1, 2]
    running_job.refresh_from_db()
    assert running_job.status == JobStatus.FAILED
    assert "stopped 2 times on part 1 of 1" in running_job.error
    assert JobPart.objects.get(pk=part.pk).warming_at is None
