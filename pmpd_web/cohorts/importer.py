"""Clinical table import: preview (dry run) and an all-or-nothing commit in one transaction.

Re-importing updates patients by study ID; patients absent from the file are kept. A table of
more than ``PMPD_TABLE_MAX_ROWS`` rows is refused; one larger than
``PMPD_TABLE_PREVIEW_JOB_BYTES`` is previewed by a job on the cpu queue (its page shows the
progress), a smaller one in the request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection, transaction
from django.utils import timezone

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction
from pmpd_web.jobs.runner import UserFacingError

from .models import Cohort, Patient, TableImport
from .table import (
    FIELD_NAMES,
    ParsedTable,
    RowProgress,
    TableError,
    TableProblem,
    check_size,
    read_table,
)

BATCH = 1000


@dataclass
class ImportPlan:
    to_create: list[dict[str, Any]] = field(default_factory=list)
    to_update: list[tuple[Patient, dict[str, Any]]] = field(default_factory=list)
    unchanged: int = 0
    kept_not_in_file: int = 0

    def summary(self) -> dict[str, Any]:
        changed_fields: dict[str, int] = {}
        for _, changes in self.to_update:
            for name in changes:
                changed_fields[name] = changed_fields.get(name, 0) + 1
        return {
            "created": len(self.to_create),
            "updated": len(self.to_update),
            "unchanged": self.unchanged,
            "kept_not_in_file": self.kept_not_in_file,
            "changed_fields": changed_fields,
            "new_study_ids": [r["study_id"] for r in self.to_create[:20]],
            "updated_study_ids": [p.study_id for p, _ in self.to_update[:20]],
        }


def plan_import(cohort: Cohort, parsed: ParsedTable) -> ImportPlan:
    existing = {p.study_id: p for p in Patient.objects.filter(cohort=cohort).only(*FIELD_NAMES)}
    plan = ImportPlan()
    seen = set()
    for record in parsed.records:
        seen.add(record["study_id"])
        patient = existing.get(record["study_id"])
        if patient is None:
            plan.to_create.append(record)
            continue
        changes = {name: value for name, value in record.items() if getattr(patient, name) != value}
        if changes:
            plan.to_update.append((patient, changes))
        else:
            plan.unchanged += 1
    plan.kept_not_in_file = len(set(existing) - seen)
    return plan


def insert_patients(cohort: Cohort, records: list[dict[str, Any]]) -> None:
    """Insert new patients; on PostgreSQL through COPY, many times faster than INSERTs.

    The records were checked by ``read_table`` (types, ranges, consistency rules); the database
    still enforces the unique study ID and the column types.
    """
    if not records:
        return
    if connection.vendor != "postgresql":
        Patient.objects.bulk_create(
            [Patient(cohort=cohort, **record) for record in records], batch_size=BATCH
        )
        return
    now = timezone.now()
    fields = [Patient._meta.get_field(name) for name in FIELD_NAMES]
    columns = ", ".join(
        connection.ops.quote_name(f.column) for f in [*fields, *_STAMP_FIELDS, _COHORT_FIELD]
    )
    table = connection.ops.quote_name(Patient._meta.db_table)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for record in records:
            copy.write_row([*(record[f.name] for f in fields), now, now, cohort.pk])


_STAMP_FIELDS = [Patient._meta.get_field("created_at"), Patient._meta.get_field("updated_at")]
_COHORT_FIELD = Patient._meta.get_field("cohort")


def _read(data: bytes, filename: str, progress: RowProgress | None = None) -> ParsedTable:
    try:
        return read_table(
            data,
            filename,
            max_bytes=settings.PMPD_TABLE_MAX_BYTES,
            max_rows=settings.PMPD_TABLE_MAX_ROWS,
            progress=progress,
        )
    except TableError as exc:
        raise UserFacingError(str(exc)) from None


def upload_table(*, cohort: Cohort, user, data: bytes, filename: str) -> TableImport:
    """Store the uploaded file and its preview, or queue the preview as a job when the file
    is large. Nothing in the cohort changes."""
    try:
        check_size(data, filename, max_bytes=settings.PMPD_TABLE_MAX_BYTES)
    except TableError as exc:
        raise UserFacingError(str(exc)) from None
    in_a_job = len(data) > settings.PMPD_TABLE_PREVIEW_JOB_BYTES
    parsed = None if in_a_job else _read(data, filename)
    digest = hashlib.sha256(data).hexdigest()
    table_import = TableImport(
        cohort=cohort,
        uploaded_by=user if user.is_authenticated else None,
        original_filename=filename[:255],
        sha256=digest,
        size_bytes=len(data),
    )
    table_import.file.save(f"{digest}.bin", ContentFile(data), save=False)
    if parsed is None:
        return _start_preview(table_import, user)
    _record_preview(table_import, parsed)
    return table_import


def _start_preview(table_import: TableImport, user) -> TableImport:
    from pmpd_web.jobs.models import Job

    from .tasks import preview_table_import

    with transaction.atomic():
        table_import.status = TableImport.Status.PREVIEWING
        table_import.job = Job.objects.create(
            kind=Job.Kind.TABLE_IMPORT,
            cohort=table_import.cohort,
            created_by=user if user.is_authenticated else None,
            phrase="Waiting for a worker to check the table",
        )
        table_import.save()
        job_id = table_import.job.pk
        transaction.on_commit(lambda: preview_table_import.delay(job_id))
    table_import.refresh_from_db()
    return table_import


def preview_stored_table(table_import: TableImport, progress: Callable[[int, str], None]) -> dict:
    """The preview job's work: check the stored file as an upload in the request would."""
    progress(5, "Reading the table")
    with table_import.file.open("rb") as handle:
        data = handle.read()

    def rows_read(done: int, total: int) -> None:
        progress(5 + 85 * done // max(total, 1), f"Checked {done:,} of about {total:,} rows")

    try:
        parsed = _read(data, table_import.original_filename, rows_read)
    except UserFacingError as exc:
        # The table cannot be read at all: the import says why, as a problem of the file.
        parsed = ParsedTable(
            filename=table_import.original_filename,
            problems=[TableProblem(None, None, str(exc))],
        )
    progress(90, "Comparing with the cohort")
    _record_preview(table_import, parsed)
    return {"rows": len(parsed.records), "import_status": table_import.status}


def _record_preview(table_import: TableImport, parsed: ParsedTable) -> None:
    cohort, user = table_import.cohort, table_import.uploaded_by
    filename = table_import.original_filename
    if parsed.ok:
        table_import.status = TableImport.Status.PREVIEWED
        table_import.summary = plan_import(cohort, parsed).summary()
    else:
        table_import.status = TableImport.Status.INVALID
        table_import.problems = [
            {"row": p.row, "column": p.column, "message": p.message} for p in parsed.problems
        ]
        table_import.summary = {"rows": len(parsed.records), "problems": len(parsed.problems)}
    table_import.summary["rows"] = len(parsed.records)
    table_import.save()
    audit(
        user,
        AuditAction.IMPORT_PREVIEW,
        cohort=cohort,
        label=filename,
        table_import=table_import.pk,
        status=table_import.status,
    )


def commit_import(
    table_import: TableImport, progress: Callable[[int, str], None]
) -> dict[str, Any]:
    """Apply a previewed table: all rows or none, in one transaction.

    The file is read and checked again, against the cohort as it is now: the preview may be
    stale. Any problem fails the whole import and leaves the cohort unchanged.
    """
    cohort = table_import.cohort
    progress(5, "Reading the table")
    with table_import.file.open("rb") as handle:
        data = handle.read()
    parsed = _read(data, table_import.original_filename)
    if not parsed.ok:
        first = "; ".join(str(p) for p in parsed.problems[:5])
        raise UserFacingError(f"{len(parsed.problems)} problem(s) in the table: {first}")
    progress(40, f"Comparing {len(parsed.records)} rows with the cohort")
    plan = plan_import(cohort, parsed)
    progress(
        60,
        f"Writing {len(plan.to_create)} new and {len(plan.to_update)} changed "
        "patients in one transaction",
    )
    with transaction.atomic():
        insert_patients(cohort, plan.to_create)
        changed_fields: set[str] = set()
        for patient, changes in plan.to_update:
            for name, value in changes.items():
                setattr(patient, name, value)
            changed_fields.update(changes)
        if plan.to_update:
            Patient.objects.bulk_update(
                [p for p, _ in plan.to_update],
                sorted(changed_fields | {"updated_at"}),
                batch_size=BATCH,
            )
        if plan.to_create or plan.to_update:
            cohort.bump_data_version()
        summary = plan.summary()
        TableImport.objects.filter(pk=table_import.pk).update(
            status=TableImport.Status.COMMITTED, summary=summary | {"rows": len(parsed.records)}
        )
        audit(
            table_import.uploaded_by,
            AuditAction.IMPORT_COMMIT,
            cohort=cohort,
            label=table_import.original_filename,
            table_import=table_import.pk,
            created=summary["created"],
            updated=summary["updated"],
            unchanged=summary["unchanged"],
        )
    return summary


def start_commit(table_import: TableImport, user) -> Any:
    """Queue the commit of a previewed import as a job on the cpu queue; returns the job."""
    from pmpd_web.jobs.models import Job

    from .tasks import commit_table_import

    if table_import.status != TableImport.Status.PREVIEWED:
        raise UserFacingError(
            f"This import is {table_import.get_status_display().lower()}; only a previewed table "
            "without problems can be imported."
        )
    with transaction.atomic():
        job = Job.objects.create(
            kind=Job.Kind.TABLE_IMPORT,
            cohort=table_import.cohort,
            created_by=user,
            phrase="Waiting for a worker",
        )
        TableImport.objects.filter(pk=table_import.pk).update(
            job=job, status=TableImport.Status.COMMITTING
        )
        transaction.on_commit(lambda: commit_table_import.delay(job.pk))
    table_import.refresh_from_db()
    return job
