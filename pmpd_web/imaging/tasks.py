"""Celery task of the imaging app: the ingest of an upload, on the cpu queue."""

from __future__ import annotations

from pmpd_web.jobs.tasks import job_task

from .ingest import ingest_upload
from .models import ImageUpload


@job_task
def ingest_upload_task(job, progress):
    return ingest_upload(ImageUpload.objects.get(pk=job.parameters["upload"]), progress)
