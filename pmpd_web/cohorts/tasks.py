"""Celery tasks of the cohorts app: they take primary keys and call the importer."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from pmpd_web.jobs.runner import TRANSIENT_ERRORS, run_job

from .importer import commit_import, preview_stored_table
from .models import TableImport


@shared_task(
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=settings.CELERY_TASK_MAX_RETRIES,
    retry_backoff=True,
)
def commit_table_import(self, job_id: int) -> None:
    def work(job, progress):
        table_import = TableImport.objects.select_related("cohort", "uploaded_by").get(job=job)
        try:
            return commit_import(table_import, progress)
        except Exception:
            TableImport.objects.filter(pk=table_import.pk).update(status=TableImport.Status.FAILED)
            raise

    run_job(job_id, work)


@shared_task(
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=settings.CELERY_TASK_MAX_RETRIES,
    retry_backoff=True,
)
def preview_table_import(self, job_id: int) -> None:
    """The preview of a large table (the import page shows its progress)."""

    def work(job, progress):
        table_import = TableImport.objects.select_related("cohort", "uploaded_by").get(job=job)
        return preview_stored_table(table_import, progress)

    run_job(job_id, work)
