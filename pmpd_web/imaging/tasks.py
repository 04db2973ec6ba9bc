"""Celery task of the imaging app: the ingest of an upload, on the cpu queue."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from pmpd_web.jobs.runner import TRANSIENT_ERRORS, run_job

from .ingest import ingest_upload
from .models import ImageUpload


@shared_task(
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=settings.CELERY_TASK_MAX_RETRIES,
    retry_backoff=True,
)
def ingest_upload_task(self, job_id: int) -> None:
    def work(job, progress):
        return ingest_upload(ImageUpload.objects.get(job=job), progress)

    run_job(job_id, work)
