"""Starting jobs reliably: the job row is the source of truth, the queue message a copy.

A job is created in the caller's transaction with its task and parameters; ``start_on_commit``
publishes it once that transaction commits. When the queue is unreachable the row stays, says
so, and the caller gets ``JobQueueUnavailable`` (a 503 with an honest message); the sweeper
(``sweep``) publishes it again once the queue is back, and publishes again any job the queue
received but no worker picked up within ``PMPD_JOB_REPUBLISH_AFTER_SECONDS``. A second message
for a job is harmless: ``Job.claim`` lets one run.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import current_app
from celery.exceptions import NotRegistered
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from rest_framework.exceptions import APIException

from .files import discard_written, scratch_folder, scratch_root
from .models import FINISHED, Job, JobPart, JobStatus

log = logging.getLogger(__name__)

QUEUE_UNREACHABLE = (
    "The job queue is unreachable. The job is saved and will start by itself when the queue "
    "is back; you can also retry it from its page."
)
# A job created this recently may still be publishing from the request that created it.
PUBLISH_GRACE = timedelta(seconds=10)


class JobQueueUnavailable(APIException):
    status_code = 503
    default_detail = QUEUE_UNREACHABLE
    default_code = "job_queue_unavailable"

    def __init__(self, job: Job) -> None:
        super().__init__(f"Job {job.pk} ({job.get_kind_display().lower()}): {QUEUE_UNREACHABLE}")
        self.job = job


def republish_after() -> timedelta:
    return timedelta(seconds=int(getattr(settings, "PMPD_JOB_REPUBLISH_AFTER_SECONDS", 900)))


def registered_task(name: str) -> Any:
    """The Celery task called ``name`` (``module.function``), importing its module when this
    process has not: web and command processes import no task module at start (only workers
    discover them), and modules that start jobs name their task rather than import it."""
    try:
        return current_app.tasks[name]
    except NotRegistered:
        importlib.import_module(name.rpartition(".")[0])
        return current_app.tasks[name]


def publish(job: Job) -> None:
    """Hand the job to the queue now; ``JobQueueUnavailable`` when the broker cannot be
    reached (the row then says it is waiting for the queue)."""
    task = registered_task(job.task)
    try:
        task.apply_async(
            args=[job.pk],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except (BrokerError, ConnectionError, OSError) as exc:
        log.warning("job %s: the queue is unreachable (%s)", job.pk, exc)
        Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            published_at=None, phrase="Waiting for the job queue, which was unreachable"
        )
        raise JobQueueUnavailable(job) from exc
    Job.objects.filter(pk=job.pk).update(published_at=timezone.now())


def start_on_commit(job: Job) -> None:
    """Publish ``job`` when the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: publish(job))


def retry(job: Job) -> Job:
    """Queue a failed, waiting or lost job again and publish it (``JobQueueUnavailable`` when
    the queue is down: the job stays queued and the sweeper publishes it later)."""
    job = job.update_status(JobStatus.QUEUED, phrase="Queued again; waiting for a worker")
    # A retry is a person's decision to try again: the count of dead workers starts afresh.
    Job.objects.filter(pk=job.pk).update(workers_lost=0)
    JobPart.objects.filter(job=job).update(workers_lost=0, warming_at=None)
    job.workers_lost = 0
    discard_written(job)
    publish(job)
    return job


def cancel(job: Job) -> Job:
    """Cancel a queued or running job: a queued one never starts, a running one stops at its
    next progress report, and what it wrote and did not commit is removed."""
    job = job.update_status(JobStatus.CANCELLED, phrase="Cancelled")
    if job.heartbeat_at is None or job.worker_lost:
        discard_written(job)
    return job


@dataclass
class SweepReport:
    republished: list[int] = field(default_factory=list)
    unreachable: list[int] = field(default_factory=list)
    files_removed: int = 0
    scratch_removed: list[str] = field(default_factory=list)
    parts_republished: list[int] = field(default_factory=list)


def sweep() -> SweepReport:
    """Publish queued jobs the queue never received or no worker picked up, and remove what
    finished jobs and dead attempts left (recorded files, scratch folders)."""
    report = SweepReport()
    now = timezone.now()
    stale = Job.objects.filter(status=JobStatus.QUEUED).exclude(task="")
    stale = stale.filter(
        Q(published_at__isnull=True, created_at__lt=now - PUBLISH_GRACE)
        | Q(published_at__lt=now - republish_after())
    )
    for job_id in stale.values_list("pk", flat=True):
        with transaction.atomic():
            job = (
                Job.objects.select_for_update(skip_locked=True)
                .filter(pk=job_id, status=JobStatus.QUEUED)
                .first()
            )
            if job is None:
                continue
            # Stamped first, so a second sweeper waits its turn.
            Job.objects.filter(pk=job.pk).update(published_at=now)
        try:
            publish(job)
        except JobQueueUnavailable:
            report.unreachable.append(job.pk)
            break
        Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            phrase="Handed to the queue again; waiting for a worker"
        )
        report.republished.append(job.pk)
    for job in Job.objects.filter(status__in=FINISHED).exclude(written_files=[]):
        report.files_removed += discard_written(job)
    report.scratch_removed = _remove_dead_scratch()
    if not report.unreachable:
        from .parts import republish_lost_parts  # parts imports this module

        report.parts_republished = republish_lost_parts()
    if report.republished or report.unreachable or report.files_removed:
        log.info("job sweep: %s", report)
    return report


def _remove_dead_scratch() -> list[str]:
    root = scratch_root()
    if not root.is_dir():
        return []
    running = Job.objects.filter(status=JobStatus.RUNNING).values_list("pk", flat=True)
    live = {scratch_folder(pk).name for pk in running}
    # A folder this young may belong to an attempt that started after the query.
    young = time.time() - 60
    removed = []
    for folder in root.glob("job-*"):
        # A part's folder (job-<id>-part-<k>) lives as long as its job.
        if folder.name.split("-part-")[0] not in live and folder.stat().st_mtime < young:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
