"""The shape every job task shares: mark running, report progress, finish or fail in words."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import OperationalError

from .models import Job, JobStatus

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, str], None]


class UserFacingError(Exception):
    """An error whose message is meant for the user (names the file, row or field)."""


TRANSIENT_ERRORS = (OperationalError, ConnectionError)


def run_job(job_id: int, work: Callable[[Job, ProgressCallback], dict[str, Any]]) -> None:
    """Run ``work(job, progress)`` for the job, idempotently.

    A finished job is not run again (a redelivered message is a no-op). Transient errors are
    re-raised so Celery retries them (bounded); anything else fails the job with a message.
    """
    job = Job.objects.get(pk=job_id)
    if job.finished:
        log.info("job %s already %s; nothing to do", job_id, job.status)
        return
    job.update_status(JobStatus.RUNNING, phrase="Started")

    def progress(percent: int, phrase: str) -> None:
        job.update_status(progress=percent, phrase=phrase)

    try:
        result = work(job, progress)
    except UserFacingError as exc:
        job.update_status(JobStatus.FAILED, error=str(exc), phrase="Failed")
        return
    except TRANSIENT_ERRORS:
        job.update_status(JobStatus.QUEUED, phrase="Waiting to retry after a transient error")
        raise
    except Exception as exc:
        log.exception("job %s failed", job_id)
        job.update_status(
            JobStatus.FAILED,
            error=f"Internal error ({type(exc).__name__}); the administrators can see the log.",
            phrase="Failed",
        )
        return
    job.update_status(JobStatus.SUCCEEDED, phrase="Done", result=result)
