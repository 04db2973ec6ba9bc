"""A job split into parts (``pmpd_web.jobs.parts``): one worker at a time per part, the last
part settles the job, and the sweeper publishes again a part whose worker died."""

from __future__ import annotations

import types
from datetime import timedelta

import pytest
from django.utils import timezone

from pmpd_web.jobs import parts as job_parts
from pmpd_web.jobs.dispatch import sweep
from pmpd_web.jobs.models import Job, JobPart, JobStatus, RunningElsewhere

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
