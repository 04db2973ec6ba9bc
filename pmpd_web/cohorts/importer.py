"""Clinical table import: preview (dry run) and an all-or-nothing commit in one transaction.

Re-importing updates patients by study ID; patients absent from the file are kept, and so are
the values of study variables the file has no column for. The preview lists each changed
patient's old -> new values (as REDCap's import does).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection, transaction
from django.utils import timezone

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction, acting_user
from pmpd_web.dbcopy import copy_csv, csv_field
from pmpd_web.jobs.runner import UserFacingError

from .models import Cohort, Patient, StudyVariable, TableImport, table_columns
from .parsing import check_size, read_table
from .table import (
    FIELD_NAMES,
    Column,
    ParsedTable,
    TableError,
    TableProblem,
    frame_records,
    pack_checked,
    python_values,
    unpack_checked,
)

BATCH = 1000
#: Patients whose old -> new values the preview lists (the counts cover all of them).
SHOWN_CHANGES = 200


@dataclass
class ImportPlan:
    """What an import does to the cohort: the rows of the file that become new patients, the
    patients they change (their pk, their row of the file and, when a study variable changed,
    their study values merged with the stored ones) and, for the preview, each changed
    patient's old -> new values."""

    new_positions: np.ndarray
    new_study_ids: list[str]
    update_ids: list[int] = field(default_factory=list)
    #: The frame row of each updated patient (same order as ``update_ids``).
    update_positions: list[int] = field(default_factory=list)
    #: Each updated patient's study values as JSON text, "" when none of them changed.
    update_study_values: list[str] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    changed_fields: dict[str, int] = field(default_factory=dict)
    unchanged: int = 0
    kept_not_in_file: int = 0

    def arrays(self) -> dict[str, np.ndarray]:
        """What the commit needs of the plan, kept with the preview's checked table."""
        return {
            "new_positions": np.asarray(self.new_positions, dtype=np.int64),
            "update_ids": np.asarray(self.update_ids, dtype=np.int64),
            "update_positions": np.asarray(self.update_positions, dtype=np.int64),
            "update_study_values": np.asarray(self.update_study_values, dtype=str),
        }

    @classmethod
    def of_arrays(cls, arrays: dict[str, np.ndarray], summary: dict[str, Any]) -> ImportPlan:
        """The plan kept with the preview; its counts and listed changes are the summary's."""
        return cls(
            new_positions=arrays["new_positions"],
            new_study_ids=list(summary.get("new_study_ids", [])),
            update_ids=arrays["update_ids"].tolist(),
            update_positions=arrays["update_positions"].tolist(),
            update_study_values=arrays["update_study_values"].tolist(),
            changes=list(summary.get("changes", [])),
            changed_fields=dict(summary.get("changed_fields", {})),
            unchanged=int(summary.get("unchanged", 0)),
            kept_not_in_file=int(summary.get("kept_not_in_file", 0)),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "created": len(self.new_positions),
            "updated": len(self.update_ids),
            "unchanged": self.unchanged,
            "kept_not_in_file": self.kept_not_in_file,
            "changed_fields": self.changed_fields,
            "new_study_ids": self.new_study_ids[:20],
            "updated_study_ids": [change["study_id"] for change in self.changes[:20]],
            "changes": self.changes[:SHOWN_CHANGES],
        }


def _existing(cohort: Cohort, parsed: ParsedTable) -> pd.DataFrame:
    """The cohort's patients in the frame's convention, read with one plain query (numbers
    cast to float and JSON to text by the database: no per-value converters)."""
    quote = connection.ops.quote_name
    numeric = {c.name for c in parsed.columns if c.kind in {"int", "decimal"} and not c.study}
    selected = ["id", *FIELD_NAMES, "study_values"]
    expressions = []
    for name in selected:
        column = quote(Patient._meta.get_field(name).column)
        if name in numeric:
            column = f"CAST({column} AS double precision)"
        elif name == "study_values":
            column = f"CAST({column} AS text)" if parsed.study_present else "NULL"
        expressions.append(column)
    sql = (
        f"SELECT {', '.join(expressions)} FROM {quote(Patient._meta.db_table)} "
        f"WHERE {quote(Patient._meta.get_field('cohort').column)} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [cohort.pk])
        rows = cursor.fetchall()
    frame = pd.DataFrame.from_records(rows, columns=selected)
    for name in numeric:
        frame[name] = frame[name].astype(float)
    stored = (
        json.loads("[" + ",".join(text or "{}" for text in frame["study_values"]) + "]")
        if parsed.study_present
        else [{}] * len(frame)
    )
    frame["study_values"] = stored
    for name in parsed.study_present:
        column = next(c for c in parsed.columns if c.name == name)
        values = [item.get(name) for item in stored]
        if column.kind in {"int", "number"}:
            frame[name] = np.array([np.nan if x is None else x for x in values], dtype=float)
        else:
            frame[name] = ["" if x is None else str(x) for x in values]
    return frame


def _compared(parsed: ParsedTable) -> list[tuple[str, Column | None]]:
    """The frame columns an import compares with the stored patients."""
    columns = {c.name: c for c in parsed.columns}
    out: list[tuple[str, Column | None]] = [
        (name, columns.get(name)) for name in FIELD_NAMES if name != "study_id"
    ]
    out.extend((name, columns[name]) for name in parsed.study_present)
    return out


def _shown(value: Any) -> str:
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def plan_import(cohort: Cohort, parsed: ParsedTable) -> ImportPlan:
    """Compare the checked rows with the cohort's patients, column by column."""
    new = parsed.frame
    old = _existing(cohort, parsed)
    position_of = pd.Series(np.arange(len(old)), index=old["study_id"].to_numpy())
    matched = position_of.reindex(new["study_id"].to_numpy())
    is_new = matched.isna().to_numpy()
    plan = ImportPlan(
        new_positions=np.flatnonzero(is_new),
        new_study_ids=new["study_id"][is_new].tolist(),
        kept_not_in_file=len(old) - int((~is_new).sum()),
    )
    in_file = np.flatnonzero(~is_new)
    in_cohort = matched.to_numpy()[in_file].astype(int)
    differs: dict[str, np.ndarray] = {}
    for name, _column in _compared(parsed):
        a = new[name].to_numpy()[in_file]
        b = old[name].to_numpy()[in_cohort]
        if a.dtype.kind == "f":
            b = b.astype(float)
            same = (a == b) | (np.isnan(a) & np.isnan(b))
        else:
            same = a == b
        differs[name] = ~np.asarray(same, dtype=bool)
    changed = np.zeros(len(in_file), dtype=bool)
    for mask in differs.values():
        changed |= mask
    plan.unchanged = int((~changed).sum())
    columns = dict(_compared(parsed))
    converted: dict[str, list[Any]] = {}  # a changed study column as values, converted once
    for index in np.flatnonzero(changed):
        row, stored = in_file[index], in_cohort[index]
        names = [name for name, mask in differs.items() if mask[index]]
        study_values: dict[str, Any] | None = None
        for name in names:
            plan.changed_fields[name] = plan.changed_fields.get(name, 0) + 1
            column = columns[name]
            if column is not None and column.study:
                if name not in converted:
                    converted[name] = python_values(new[name], column)
                if study_values is None:
                    study_values = dict(old["study_values"].iat[stored] or {})
                study_values[name] = converted[name][row]
        plan.update_ids.append(int(old["id"].iat[stored]))
        plan.update_positions.append(int(row))
        plan.update_study_values.append(
            "" if study_values is None else json.dumps(study_values, default=str)
        )
        if len(plan.changes) < SHOWN_CHANGES:
            plan.changes.append(
                {
                    "study_id": str(new["study_id"].iat[row]),
                    "values": [
                        [name, _shown(old[name].iat[stored]), _shown(new[name].iat[row])]
                        for name in names
                    ],
                }
            )
    return plan


@dataclass(frozen=True)
class _OrmWrites:
    """What a commit writes on databases other than PostgreSQL: the plan's new and changed
    patients through the ORM."""

    parsed: ParsedTable
    plan: ImportPlan

    @property
    def created(self) -> int:
        return len(self.plan.new_positions)

    @property
    def updated(self) -> int:
        return len(self.plan.update_ids)

    def write(self, cohort: Cohort) -> None:
        insert_patients(cohort, self.parsed, self.plan.new_positions)
        _update_patients(self.parsed, self.plan)


def insert_patients(cohort: Cohort, parsed: ParsedTable, positions: np.ndarray) -> None:
    """Insert the rows at ``positions`` as new patients through the ORM (databases other than
    PostgreSQL; there :class:`CopyPayload` writes them with one COPY).

    The rows were checked by ``read_table`` (types, ranges, consistency rules); the database
    still enforces the unique study ID and the column types.
    """
    if not len(positions):
        return
    records = frame_records(parsed.frame.iloc[positions], parsed.columns, parsed.study_present)
    Patient.objects.bulk_create(
        [Patient(cohort=cohort, **record) for record in records], batch_size=BATCH
    )


def _new_rows_csv(cohort: Cohort, parsed: ParsedTable, positions: np.ndarray) -> str:
    """The new patients' rows as the CSV of one COPY into :func:`_new_columns` (many times
    faster than INSERTs), written by columns."""
    if not len(positions):
        return ""
    # Positions are ascending: as many as the rows are all of them (a first import).
    frame = parsed.frame if len(positions) == len(parsed.frame) else parsed.frame.iloc[positions]
    cells = _copy_cells(frame, parsed)
    # created_at and updated_at are left to the database's defaults (its clock), and so are
    # the study values ({}) when the file has no study variable.
    if parsed.study_present:
        cells.append(_study_fields(frame, parsed))
    return _csv_rows(cells, tail=f",{cohort.pk}\n")


def _csv_rows(cells: list[list[str]], tail: str = "\n") -> str:
    """CSV rows of the columns' fields, each row ended by ``tail``."""
    return tail.join(map(",".join, zip(*cells, strict=True))) + tail


def _new_columns(study_values: bool) -> list[str]:
    """The columns of the new patients' COPY (quoted names), in the order of its CSV."""
    names = [*FIELD_NAMES, *(["study_values"] if study_values else []), "cohort_id"]
    return [connection.ops.quote_name(Patient._meta.get_field(name).column) for name in names]


def _numbers(values: pd.Series, form: str) -> list[str]:
    """Numbers as CSV fields (blank, NaN, as an unquoted empty field: NULL), each distinct
    number formatted once."""
    codes, uniques = pd.factorize(values.to_numpy(dtype=float))
    text = np.array([*(form.format(u) for u in uniques.tolist()), ""], dtype=object)
    return text[codes].tolist()  # code -1 (NaN) picks the trailing ""


def _quoted(values: pd.Series) -> list[str]:
    """Text as quoted CSV fields (an empty text stays empty text, never NULL), each distinct
    text quoted once: coded columns hold a handful of values."""
    # A NumPy array, not a Series: factorize then returns its distinct values as an array
    # (building a pandas Index of them cost more than the quoting).
    codes, uniques = pd.factorize(values.to_numpy(dtype=object))
    quoted = np.array([*(csv_field(str(u)) for u in uniques), '""'], dtype=object)
    return quoted[codes].tolist()  # code -1 (a missing value) picks the trailing empty text


def _copy_cells(frame: pd.DataFrame, parsed: ParsedTable) -> list[list[str]]:
    """The COPY's CSV fields of ``FIELD_NAMES``, one list per column, formatted by columns
    (NULL is an unquoted empty field): writing the rows through a data frame and ``to_csv``
    cost more than the COPY itself."""
    columns = {c.name: c for c in parsed.columns}
    cells: list[list[str]] = []
    for name in FIELD_NAMES:
        column = columns.get(name)
        values = frame[name]
        if column is None:  # a site_* boolean
            cells.append(np.where(values.to_numpy(dtype=bool), "t", "f").tolist())
        elif name == "study_id":
            # Letters, digits, '.', '_' and '-', never blank (read_table refuses any other):
            # nothing to quote, and as distinct as the rows (quoting them took 2 ms).
            cells.append(values.tolist())
        elif column.kind == "int":
            cells.append(_numbers(values, "{:.0f}"))
        elif column.kind == "decimal":
            cells.append(_numbers(values, f"{{:.{column.decimal_places}f}}"))
        else:
            cells.append(_quoted(values))
    return cells


def _study_fields(frame: pd.DataFrame, parsed: ParsedTable) -> list[str]:
    """Each row's ``study_values`` as JSON text in a quoted CSV field (its double quotes
    doubled), written by columns: each distinct value of a variable is formatted once (a blank
    is null: no value). Codes are letters, digits and '_', dates ISO text: they need no
    escaping."""
    kinds = {c.name: c.kind for c in parsed.columns}
    columns: list[list[str]] = []
    for position, name in enumerate(parsed.study_present):
        key = ("" if position == 0 else ", ") + f'""{name}"": '
        values = frame[name].to_numpy()
        if kinds[name] in ("int", "number"):
            codes, uniques = pd.factorize(values.astype(float))
            whole = kinds[name] == "int"
            shown = [key + (str(int(u)) if whole else str(u)) for u in uniques.tolist()]
        else:
            codes, uniques = pd.factorize(values.astype(object))
            shown = [key + (f'""{u}""' if u != "" else "null") for u in uniques.tolist()]
        # Code -1 (a missing number) picks the trailing null.
        columns.append(np.array([*shown, key + "null"], dtype=object)[codes].tolist())
    return ['"{' + "".join(parts) + '}"' for parts in zip(*columns, strict=True)]


def cohort_state(cohort: Cohort) -> tuple[str, tuple[Column, ...]]:
    """What a preview is checked against, and the columns it is checked with: the state is a
    digest of the cohort's data version, its patients (count and last change, which catches
    edits made elsewhere) and its study variables. Two queries: the version with one pass
    over the patients (a plain statement: the ORM's two subqueries took two passes and a
    millisecond to compile, at the preview and again at the commit), and the variables, read
    once for both."""
    quote = connection.ops.quote_name
    patients = Patient._meta
    sql = (
        f"SELECT c.{quote(Cohort._meta.get_field('data_version').column)}, p.n, p.last "
        f"FROM {quote(Cohort._meta.db_table)} AS c CROSS JOIN ("
        f"SELECT COUNT(*) AS n, MAX({quote(patients.get_field('updated_at').column)}) AS last "
        f"FROM {quote(patients.db_table)} "
        f"WHERE {quote(patients.get_field('cohort').column)} = %s) AS p "
        f"WHERE c.{quote(Cohort._meta.pk.column)} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [cohort.pk, cohort.pk])
        version, count, last = cursor.fetchone() or (None, None, None)
    variables = list(StudyVariable.objects.filter(cohort=cohort))
    described = sorted(
        ((v.name, v.kind, v.minimum, v.maximum, v.choices, v.required) for v in variables),
        key=lambda item: item[0],
    )
    text = json.dumps([version, count or 0, str(last), described], default=str)
    return hashlib.sha256(text.encode()).hexdigest(), table_columns(cohort, variables)


def _read(data: bytes, filename: str, columns: tuple[Column, ...]) -> ParsedTable:
    try:
        return read_table(
            data,
            filename,
            max_bytes=settings.PMPD_TABLE_MAX_BYTES,
            max_rows=settings.PMPD_TABLE_MAX_ROWS,
            columns=columns,
        )
    except TableError as exc:
        raise UserFacingError(str(exc)) from None


def upload_table(*, cohort: Cohort, user, data: bytes, filename: str) -> TableImport:
    """Store the uploaded file and its preview, or queue the preview as a job when the file is
    larger than ``PMPD_TABLE_PREVIEW_JOB_BYTES``. Nothing in the cohort changes.

    What the commit writes is kept with the preview (on PostgreSQL its COPY payload, the rows
    formatted as the COPY takes them): while the file and the cohort stay as they were, the
    commit writes it without reading, checking and formatting the file again.
    """
    try:
        check_size(data, filename, max_bytes=settings.PMPD_TABLE_MAX_BYTES)
    except TableError as exc:
        raise UserFacingError(str(exc)) from None
    in_a_job = len(data) > settings.PMPD_TABLE_PREVIEW_JOB_BYTES
    state, columns = cohort_state(cohort)
    parsed = None if in_a_job else _read(data, filename, columns)
    digest = hashlib.sha256(data).hexdigest()
    table_import = TableImport(
        cohort=cohort,
        uploaded_by=acting_user(user),
        original_filename=filename[:255],
        sha256=digest,
        size_bytes=len(data),
    )
    table_import.file.save(f"{digest}.bin", ContentFile(data), save=False)
    if parsed is None:
        return _start_preview(table_import, user)
    _record_preview(table_import, parsed, state)
    return table_import


def _start_preview(table_import: TableImport, user) -> TableImport:
    from pmpd_web.jobs.dispatch import start_on_commit
    from pmpd_web.jobs.models import Job

    from .tasks import preview_table_import

    with transaction.atomic():
        table_import.status = TableImport.Status.PREVIEWING
        table_import.save()
        job = Job.objects.create(
            kind=Job.Kind.TABLE_IMPORT,
            cohort=table_import.cohort,
            created_by=acting_user(user),
            phrase="Waiting for a worker to check the table",
            task=preview_table_import.name,
            parameters={"table_import": table_import.pk, "step": "preview"},
        )
        TableImport.objects.filter(pk=table_import.pk).update(job=job)
        start_on_commit(job)
    table_import.refresh_from_db()
    return table_import


def preview_stored_table(
    table_import: TableImport, progress: Callable[[int, str], None]
) -> dict[str, Any]:
    """The preview job's work: check the stored file as an upload in the request would."""
    progress(5, "Reading and checking the table")
    state, columns = cohort_state(table_import.cohort)
    with table_import.file.open("rb") as handle:
        data = handle.read()
    try:
        parsed = _read(data, table_import.original_filename, columns)
    except UserFacingError as exc:
        # The table cannot be read at all: the import says why, as a problem of the file.
        parsed = ParsedTable(
            filename=table_import.original_filename,
            problems=[TableProblem(None, None, str(exc))],
        )
    progress(80, "Comparing with the cohort")
    _record_preview(table_import, parsed, state)
    return {"rows": len(parsed.rows), "import_status": table_import.status}


def _record_preview(table_import: TableImport, parsed: ParsedTable, state: Any) -> None:
    cohort, user = table_import.cohort, table_import.uploaded_by
    filename = table_import.original_filename
    if parsed.ok:
        table_import.status = TableImport.Status.PREVIEWED
        plan = plan_import(cohort, parsed)
        table_import.summary = plan.summary()
        table_import.checked = _kept(cohort, parsed, plan)
        table_import.checked_against = state
    else:
        table_import.status = TableImport.Status.INVALID
        table_import.problems = [
            {"row": p.row, "column": p.column, "message": p.message} for p in parsed.problems
        ]
        table_import.summary = {"rows": len(parsed.rows), "problems": len(parsed.problems)}
    table_import.summary["rows"] = len(parsed.rows)
    # The import row and its audit event together, in one commit (one flush of the log).
    with transaction.atomic():
        table_import.save()
        audit(
            user,
            AuditAction.IMPORT_PREVIEW,
            cohort=cohort,
            label=filename,
            table_import=table_import.pk,
            status=table_import.status,
        )


def _kept(cohort: Cohort, parsed: ParsedTable, plan: ImportPlan) -> bytes:
    """What the preview keeps for the commit: on PostgreSQL the COPY payload (the rows as the
    commit writes them), elsewhere the checked rows and the plan as arrays."""
    if connection.vendor == "postgresql":
        return CopyPayload.of_plan(cohort, parsed, plan).pack(cohort)
    return pack_checked(parsed, plan.arrays())


@dataclass
class _Checked:
    """The rows a commit writes: the preview's (``reused``) or the file's, read and checked
    again. On PostgreSQL a reused preview is its COPY payload alone (no table, no plan)."""

    rows: int
    reused: bool
    parsed: ParsedTable | None = None
    plan: ImportPlan | None = None
    payload: CopyPayload | None = None


def _checked_table(table_import: TableImport) -> _Checked:
    """What the preview kept when the file and the cohort are unchanged since, else the file
    read and checked again against the cohort as it is now (and no plan: the caller compares
    it with the cohort again)."""
    cohort = table_import.cohort
    with table_import.file.open("rb") as handle:
        data = handle.read()
    same_file = hashlib.sha256(data).hexdigest() == table_import.sha256
    state, columns = cohort_state(cohort)
    if same_file and table_import.checked and table_import.checked_against == state:
        kept, summary = bytes(table_import.checked), table_import.summary
        try:
            if connection.vendor == "postgresql":
                payload = CopyPayload.unpack(kept, cohort, summary)
                return _Checked(payload.rows, True, payload=payload)
            parsed, arrays = unpack_checked(kept, columns)
            plan = ImportPlan.of_arrays(arrays, summary)
            return _Checked(len(parsed.rows), True, parsed=parsed, plan=plan)
        except (ValueError, KeyError):
            pass  # kept in another form (never unpickled): the file is checked again
    parsed = _read(data, table_import.original_filename, columns)
    return _Checked(len(parsed.rows), False, parsed=parsed)


def commit_import(
    table_import: TableImport, progress: Callable[[int, str], None]
) -> dict[str, Any]:
    """Apply a previewed table: all rows or none, in one transaction.

    The preview's checked rows are written when the file and the cohort are unchanged since
    the preview (on PostgreSQL its COPY payload, as it is); otherwise the file is read and
    checked again, against the cohort as it is now. Any problem fails the whole import and
    leaves the cohort unchanged.
    """
    cohort = table_import.cohort
    progress(5, "Reading the table")
    checked = _checked_table(table_import)
    if checked.parsed is not None and not checked.parsed.ok:
        problems = checked.parsed.problems
        first = "; ".join(str(p) for p in problems[:5])
        raise UserFacingError(f"{len(problems)} problem(s) in the table: {first}")
    progress(
        40,
        f"Comparing {checked.rows} rows with the cohort"
        + (
            " (checked at the preview)"
            if checked.reused
            else " (checked again: the cohort changed)"
        ),
    )
    writes: CopyPayload | _OrmWrites
    if checked.payload is not None:
        writes, planned = checked.payload, dict(table_import.summary)  # the preview's plan
    else:
        assert checked.parsed is not None
        plan = checked.plan or plan_import(cohort, checked.parsed)
        writes = (
            CopyPayload.of_plan(cohort, checked.parsed, plan)
            if connection.vendor == "postgresql"
            else _OrmWrites(checked.parsed, plan)
        )
        planned = plan.summary()
    progress(
        60,
        f"Writing {writes.created} new and {writes.updated} changed patients in one transaction",
    )
    with transaction.atomic():
        writes.write(cohort)
        if writes.created or writes.updated:
            cohort.bump_data_version()
        summary = planned | {"rows": checked.rows, "checked_at_preview": checked.reused}
        TableImport.objects.filter(pk=table_import.pk).update(
            status=TableImport.Status.COMMITTED, summary=summary, checked=None
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


def _update_patients(parsed: ParsedTable, plan: ImportPlan) -> None:
    """Write the changed patients through the ORM (databases other than PostgreSQL; there
    :class:`CopyPayload` writes them): their checked rows, all their template fields (the
    unchanged ones equal what is stored), and the study values the plan merged."""
    if not plan.update_ids:
        return
    now = timezone.now()
    records = frame_records(
        parsed.frame.iloc[plan.update_positions], parsed.columns, parsed.study_present
    )
    for study_values in ({"study_values"}, set()):
        patients = [
            Patient(
                pk=pk,
                updated_at=now,
                **{name: record[name] for name in FIELD_NAMES},
                **({"study_values": json.loads(merged)} if merged else {}),
            )
            for pk, record, merged in zip(
                plan.update_ids, records, plan.update_study_values, strict=True
            )
            if bool(merged) == bool(study_values)
        ]
        Patient.objects.bulk_update(
            patients, [*FIELD_NAMES, "updated_at", *study_values], batch_size=BATCH
        )


def _changed_rows_csv(parsed: ParsedTable, plan: ImportPlan) -> str:
    """The changed patients' rows as the CSV of :func:`_copy_updates`: their id, their checked
    row and their merged study values (NULL: left as stored)."""
    if not plan.update_ids:
        return ""
    cells = _copy_cells(parsed.frame.iloc[plan.update_positions], parsed)
    cells.append([csv_field(merged) if merged else "" for merged in plan.update_study_values])
    cells.insert(0, [str(pk) for pk in plan.update_ids])
    return _csv_rows(cells)


def _copy_updates(cohort: Cohort, data: bytes) -> int:
    """Write the changed patients' rows (CSV of :func:`_changed_rows_csv`) with one COPY into
    a temporary table and one UPDATE from it (``bulk_update``'s CASE per row and field took
    seconds for 10,000 changed patients); only patients of ``cohort`` are written. Returns
    how many were."""
    quote = connection.ops.quote_name
    table = quote(Patient._meta.db_table)
    staged = quote("pmpd_import_updates")
    fields = [quote(Patient._meta.get_field(name).column) for name in FIELD_NAMES]
    columns = ["id", *fields, "study_values"]
    assignments = ", ".join(f"{name} = t.{name}" for name in fields)
    cohort_column = quote(Patient._meta.get_field("cohort").column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE {staged} AS SELECT {', '.join(columns)} FROM {table} "
            "WITH NO DATA"
        )
        # Inside the import's transaction: a failure rolls the table back with the rest.
        copy_csv(cursor, staged, columns, data)
        cursor.execute(
            f"UPDATE {table} AS p SET {assignments}, "
            "study_values = COALESCE(t.study_values, p.study_values), updated_at = %s "
            f"FROM {staged} AS t WHERE p.id = t.id AND p.{cohort_column} = %s",
            [timezone.now(), cohort.pk],
        )
        updated = cursor.rowcount
        cursor.execute(f"DROP TABLE {staged}")
    return updated


#: The kept form of a preview's COPY payload: this prefix (its version), a line of JSON (the
#: counts and the byte lengths of the two texts), then the two texts (zlib).
PAYLOAD_MAGIC = b"PMPD-COPY/1\n"


@dataclass(frozen=True)
class CopyPayload:
    """What a commit writes on PostgreSQL, formatted by the preview: the new patients' rows
    (CSV of :func:`_new_columns`, cohort id included) for one COPY into the patients, and the
    changed patients' rows (CSV of :func:`_changed_rows_csv`) for one COPY into a temporary
    table and one UPDATE from it.

    Kept with the preview (``TableImport.checked``), the commit COPYs them as they are while
    the file and the cohort are unchanged: it neither loads nor formats the rows again. Read
    back, it is text for ``COPY ... FORMAT csv`` into fixed column lists and nothing else
    (no pickle, nothing that runs code): a tampered payload can at worst fail the COPY or the
    database's checks (types, the unique study ID, the patient's cohort), or be refused for
    writing other counts of rows than it says.
    """

    rows: int
    created: int
    updated: int
    #: The new rows carry their study values (the file has study variables).
    study_values: bool
    new_rows: bytes
    changed_rows: bytes

    @classmethod
    def of_plan(cls, cohort: Cohort, parsed: ParsedTable, plan: ImportPlan) -> CopyPayload:
        return cls(
            rows=len(parsed.rows),
            created=len(plan.new_positions),
            updated=len(plan.update_ids),
            study_values=bool(parsed.study_present),
            new_rows=_new_rows_csv(cohort, parsed, plan.new_positions).encode(),
            changed_rows=_changed_rows_csv(parsed, plan).encode(),
        )

    def pack(self, cohort: Cohort) -> bytes:
        head = {
            "cohort": cohort.pk,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "study_values": self.study_values,
            "new_bytes": len(self.new_rows),
            "changed_bytes": len(self.changed_rows),
        }
        body = zlib.compress(self.new_rows + self.changed_rows, 1)
        return PAYLOAD_MAGIC + json.dumps(head).encode() + b"\n" + body

    @classmethod
    def unpack(cls, data: bytes, cohort: Cohort, summary: dict[str, Any]) -> CopyPayload:
        """What :meth:`pack` wrote for ``cohort`` with the preview's ``summary``;
        ``ValueError`` when ``data`` is not that (another form, another cohort, other counts
        than the summary's, inconsistent)."""
        if not data.startswith(PAYLOAD_MAGIC):
            raise ValueError("not a COPY payload")
        line, _, body = data[len(PAYLOAD_MAGIC) :].partition(b"\n")
        try:
            head = json.loads(line)
            text = zlib.decompress(body)
        except (ValueError, zlib.error) as exc:
            raise ValueError(f"not a COPY payload ({exc})") from None
        counts = ("rows", "created", "updated", "new_bytes", "changed_bytes")
        if (
            not isinstance(head, dict)
            or not all(type(head.get(name)) is int and head[name] >= 0 for name in counts)
            or head.get("cohort") != cohort.pk
            or type(head["cohort"]) is not int
            or type(head.get("study_values")) is not bool
            or head["new_bytes"] + head["changed_bytes"] != len(text)
            or [head[name] for name in counts[:3]] != [summary.get(name) for name in counts[:3]]
        ):
            raise ValueError("not this preview's COPY payload")
        return cls(
            rows=head["rows"],
            created=head["created"],
            updated=head["updated"],
            study_values=head["study_values"],
            new_rows=text[: head["new_bytes"]],
            changed_rows=text[head["new_bytes"] :],
        )

    def write(self, cohort: Cohort) -> None:
        """COPY the rows (inside the caller's transaction); refused when they are not as many
        as the payload says."""
        created = updated = 0
        if self.new_rows:
            table = connection.ops.quote_name(Patient._meta.db_table)
            with connection.cursor() as cursor:
                created = copy_csv(cursor, table, _new_columns(self.study_values), self.new_rows)
        if self.changed_rows:
            updated = _copy_updates(cohort, self.changed_rows)
        if (created, updated) != (self.created, self.updated):
            raise UserFacingError(
                f"The import wrote {created} new and {updated} changed patients where its "
                f"preview counted {self.created} and {self.updated}: nothing was imported. "
                "Upload the file again."
            )


def start_commit(table_import: TableImport, user) -> Any:
    """Queue the commit of a previewed import as a job on the cpu queue; returns the job."""
    from pmpd_web.jobs.dispatch import start_on_commit
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
            task=commit_table_import.name,
            parameters={"table_import": table_import.pk},
        )
        TableImport.objects.filter(pk=table_import.pk).update(
            job=job, status=TableImport.Status.COMMITTING
        )
        start_on_commit(job)
    table_import.refresh_from_db()
    return job
