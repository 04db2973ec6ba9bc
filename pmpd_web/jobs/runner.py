"""The shape every job task shares: claim the job, beat a heartbeat, report progress, finish or
fail in words, and retry a transient error a bounded number of times before failing with the
reason."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.db import OperationalError, connection
from django.utils import timezone

from .files import discard_written, job_scratch
from .models import IllegalTransition, Job, JobStatus, RunningElsewhere, heartbeat_stale_after

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, str], None]


class UserFacingError(Exception):
    """An error whose message is meant for the user (names the file, row or field)."""


class JobCancelled(Exception):
    """The job was cancelled while it ran: stop at the next progress report."""


TRANSIENT_ERRORS = (OperationalError, ConnectionError)

# What a job's work returns when it handed the job to its parts, which settle it
# (``pmpd_web.jobs.parts``): the job stays running.
PARTS_RUNNING = "parts-running"


def retry_countdown(retries: int) -> int:
    """Seconds before retry number ``retries + 1``: exponential, jittered, capped."""
    return get_exponential_backoff_interval(
        factor=int(getattr(settings, "PMPD_JOB_RETRY_BACKOFF_SECONDS", 2)),
        retries=retries,
        maximum=int(getattr(settings, "PMPD_JOB_RETRY_BACKOFF_MAX_SECONDS", 300)),
        full_jitter=True,
    )


class _Heartbeat:
    """Stamps the job's heartbeat every few seconds from a thread, so a long step without
    progress reports still reads as alive, and a dead worker reads as dead."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"job-{job.pk}-heartbeat")
        self.thread.daemon = True

    def _run(self) -> None:
        interval = float(getattr(settings, "PMPD_JOB_HEARTBEAT_SECONDS", 30))
        try:
            while not self.stop.wait(interval):
                self.job.beat()
        except Exception:
            log.exception("job %s: the heartbeat stopped", self.job.pk)
        finally:
            connection.close()

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def defer_redelivery(task: Any, what: str) -> None:
    """The broker delivered again the message of ``what`` (a job or a part) while the worker
    that took it first still beats: send the same message (same task ID, same retry count)
    to be looked at once that heartbeat would be stale, and let this delivery go. If that
    worker died meanwhile, the copy takes the work over; if it finished, the copy has nothing
    to do; while it still works, the copy is deferred again."""
    countdown = int(heartbeat_stale_after().total_seconds()) + 1
    request = task.request
    log.info(
        "%s: delivered again while its worker still works on it; looking again in %s s",
        what,
        countdown,
    )
    task.apply_async(
        args=request.args,
        kwargs=request.kwargs,
        task_id=request.id,
        countdown=countdown,
        retries=request.retries,
    )


def _give_up_message(exc: BaseException, attempts: int) -> str:
    return (
        f"Gave up after {attempts} attempt(s): a service the job needs (the database, the "
        f"storage or the queue) kept failing ({type(exc).__name__}). Retry the job once it is "
        "back; the administrators can see the log."
    )


def run_job(
    job_id: int, work: Callable[[Job, ProgressCallback], dict[str, Any]], *, task: Any = None
) -> None:
    """Run ``work(job, progress)`` for the job, idempotently.

    A finished job, or one another worker is running well, is not run (a redelivered or
    republished message is a no-op). What an earlier attempt of the job wrote and did not
    commit is removed first. A transient error is retried by ``task`` (Celery) with backoff
    up to its ``max_retries``; after the last one, or without a task, the job fails with the
    reason. Any other error fails the job with a message.
    """
    job = Job.objects.get(pk=job_id)
    message_id = str(getattr(getattr(task, "request", None), "id", None) or "")
    try:
        claimed = job.claim(message_id)
    except RunningElsewhere:
        defer_redelivery(task, f"job {job_id}")
        return
    if not claimed:
        if job.status == JobStatus.FAILED and job.workers_lost:
            log.error("job %s: its worker died %s times; given up", job_id, job.workers_lost)
            discard_written(job)
        log.info("job %s is %s; this message has nothing to do", job_id, job.status)
        return
    discard_written(job)

    def progress(percent: int, phrase: str) -> None:
        try:
            job.update_status(progress=percent, phrase=phrase)
        except IllegalTransition:
            job.refresh_from_db()
            if job.status == JobStatus.CANCELLED:
                raise JobCancelled() from None
            raise

    try:
        with job_scratch(job), _Heartbeat(job):
            result = work(job, progress)
    except JobCancelled:
        log.info("job %s was cancelled while it ran", job_id)
        discard_written(job)
        return
    except UserFacingError as exc:
        discard_written(job)
        _settle(job, JobStatus.FAILED, error=str(exc), phrase="Failed")
        return
    except TRANSIENT_ERRORS as exc:
        discard_written(job)
        retries = task.request.retries if task is not None else 0
        if task is None or retries >= task.max_retries:
            log.exception("job %s: giving up after %s attempt(s)", job_id, job.attempts)
            _settle(
                job, JobStatus.FAILED, error=_give_up_message(exc, job.attempts), phrase="Failed"
            )
            return
        queued = _settle(
            job,
            JobStatus.QUEUED,
            phrase=f"Waiting to retry ({retries + 1} of {task.max_retries}) after a transient "
            f"error ({type(exc).__name__})",
        )
        if not queued:
            return
        # The retry is a new message: the sweeper leaves it its backoff.
        Job.objects.filter(pk=job_id).update(published_at=timezone.now())
        raise task.retry(exc=exc, countdown=retry_countdown(retries)) from exc
    except Exception as exc:
        log.exception("job %s failed", job_id)
        discard_written(job)
        _settle(
            job,
            JobStatus.FAILED,
            error=f"Internal error ({type(exc).__name__}); the administrators can see the log.",
            phrase="Failed",
        )
        return
    if result == PARTS_RUNNING:
        return
    _settle(job, JobStatus.SUCCEEDED, phrase="Done", result=result)


def _settle(job: Job, status: str, **fields: Any) -> bool:
    """The attempt's outcome; dropped (``False``) when the job was cancelled meanwhile (the
    error that followed, such as the received files deleted by the cancel, is no news)."""
    try:
        job.update_status(status, **fields)
    except IllegalTransition:
        log.info("job %s was cancelled meanwhile; the attempt's outcome is dropped", job.pk)
        return False
    return True
