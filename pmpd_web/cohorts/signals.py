"""The cohorts app's receivers of job signals, connected at start-up (``CohortsConfig.ready``).

Kept apart from :mod:`.importer` so that starting Django (the web, every management command)
does not import the table reader with pandas behind it.
"""

from __future__ import annotations

from django.dispatch import receiver

from pmpd_web.jobs.models import job_stopped

from .models import TableImport


@receiver(job_stopped)
def import_stopped(sender, *, job, status, **kwargs) -> None:
    """A failed commit leaves the import failed; a cancelled one can be committed again; a
    stopped preview leaves it refused with the reason."""
    if job.kind != job.Kind.TABLE_IMPORT:
        return
    back_to = TableImport.Status.PREVIEWED if status == "cancelled" else TableImport.Status.FAILED
    TableImport.objects.filter(job=job, status=TableImport.Status.COMMITTING).update(status=back_to)
    # A preview job that stopped leaves the import with the reason, never "being checked".
    TableImport.objects.filter(job=job, status=TableImport.Status.PREVIEWING).update(
        status=TableImport.Status.INVALID,
        problems=[
            {
                "row": None,
                "column": None,
                "message": f"The check of the table was {status}: upload the file again.",
            }
        ],
    )
