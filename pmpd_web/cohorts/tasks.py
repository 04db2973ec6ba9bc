"""Celery tasks of the cohorts app: they take the job's primary key and call the importer."""

from __future__ import annotations

from pmpd_web.jobs.tasks import job_task

from .importer import commit_import, preview_stored_table
from .models import TableImport


@job_task
def commit_table_import(job, progress):
    table_import = TableImport.objects.select_related("cohort", "uploaded_by").get(
        pk=job.parameters["table_import"]
    )
    # A retried job commits again what its failed attempt left "failed".
    TableImport.objects.filter(pk=table_import.pk).update(status=TableImport.Status.COMMITTING)
    return commit_import(table_import, progress)


@job_task
def preview_table_import(job, progress):
    """The preview of a large table (the import page shows its progress)."""
    table_import = TableImport.objects.select_related("cohort", "uploaded_by").get(
        pk=job.parameters["table_import"]
    )
    return preview_stored_table(table_import, progress)
