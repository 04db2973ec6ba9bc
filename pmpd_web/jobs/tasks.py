"""``job_task``: the one way to write a Celery task that runs a job.

Every job task is acknowledged late and handed to another worker when its worker dies
(``acks_late``, ``reject_on_worker_lost``), takes the job's primary key only (its inputs are
``Job.parameters``), retries a transient error ``CELERY_TASK_MAX_RETRIES`` times with
exponential backoff, and fails the job with the reason after the last retry (``run_job``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from celery import shared_task
from django.conf import settings

from .models import Job
from .runner import ProgressCallback, run_job

Work = Callable[[Job, ProgressCallback], dict[str, Any]]


def reliable_task(func):
    """A bound Celery task with the platform's delivery and retry settings (job tasks get them
    through ``job_task``; a task without a job row, like a cache warmer, uses this)."""
    return shared_task(
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=settings.CELERY_TASK_MAX_RETRIES,
    )(func)


def job_task(work: Work):
    """Turn ``work(job, progress) -> result`` into the Celery task ``task(job_id)`` of the same
    module and name (so routing by name, e.g. ``inference.tasks.gpu_*``, applies)."""

    def task(self, job_id: int) -> None:
        run_job(job_id, work, task=self)

    # The task's name comes from these; its signature stays (job_id).
    functools.update_wrapper(task, work, updated=())
    del task.__wrapped__

    return reliable_task(task)
