"""The clinical table: its columns, reading CSV/XLSX into checked records, and writing exports.

Pure Python (no Django): the import job, the API, the template download and the export all use
these functions, and the synthetic phantom cohort writes the same columns.

Row numbers in messages are spreadsheet rows: the header is row 1, the first patient row 2.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from pmpd_web.spreadsheets import escape_formula, unescape_formula

from . import vocabulary as v
from .rules import SITE_FIELDS, check_patient


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # text, int, decimal, choice, sites
    description: str
    required: bool = False
    allowed: tuple[str, ...] = ()
    decimal_places: int = 0
    max_length: int = 120
    unit: str = ""


COLUMNS: tuple[Column, ...] = (
    Column(
        "study_id",
        "text",
        "Pseudonymised study ID, unique in the cohort; never a name",
        required=True,
        max_length=64,
    ),
    Column("age_at_diagnosis_years", "int", "Age at diagnosis", unit="years"),
    Column("sex", "choice", "Sex", allowed=v.SEX),
    Column("centre", "text", "Recruiting centre"),
    Column(
        "tumour_location", "choice", "Location of the primary tumour", allowed=v.TUMOUR_LOCATION
    ),
    Column("tumour_size_mm", "decimal", "Largest tumour diameter", decimal_places=1, unit="mm"),
    Column(
        "ct_manufacturer",
        "text",
        "CT scanner manufacturer (filled from DICOM when empty)",
        max_length=64,
    ),
    Column(
        "ca19_9_u_per_ml",
        "decimal",
        "Serum CA19-9 at diagnosis; blank when not measured",
        decimal_places=2,
        unit="U/mL",
    ),
    Column(
        "nccn_resectability", "choice", "NCCN resectability status", allowed=v.NCCN_RESECTABILITY
    ),
    Column(
        "metastasis_at_diagnosis",
        "choice",
        "Distant metastasis at diagnosis",
        required=True,
        allowed=v.YES_NO_UNKNOWN,
    ),
    Column(
        "metastasis_sites",
        "sites",
        "Sites of distant metastasis, several joined with ';'; only when metastatic",
        allowed=v.METASTASIS_SITES,
    ),
    Column(
        "metastasis_detection",
        "choice",
        "How metastasis was found; only when metastatic",
        allowed=v.METASTASIS_DETECTION,
    ),
    Column("overall_survival_days", "int", "Overall survival from diagnosis", unit="days"),
    Column("vital_status", "choice", "Vital status at last follow-up", allowed=v.VITAL_STATUS),
    Column(
        "developed_metastasis",
        "choice",
        "For patients without metastasis at diagnosis: did it develop later",
        allowed=v.YES_NO,
    ),
    Column(
        "days_to_metastasis", "int", "Days from diagnosis until metastasis developed", unit="days"
    ),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
# The model fields a table row sets (metastasis_sites spreads over the site_* booleans).
FIELD_NAMES: tuple[str, ...] = (
    tuple(name for name in COLUMN_NAMES if name != "metastasis_sites") + SITE_FIELDS
)

XLSX_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class TableProblem:
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass
class ParsedTable:
    filename: str
    records: list[dict[str, Any]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    problems: list[TableProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class TableError(Exception):
    """The file as a whole cannot be read (empty, too large, not UTF-8...)."""


def describe_columns() -> list[dict[str, str]]:
    """The template's documentation: one entry per column."""
    return [
        {
            "column": c.name,
            "required": "yes" if c.required else "no",
            "type": {
                "int": "whole number",
                "decimal": f"number ({c.decimal_places} decimals)",
                "choice": "one value",
                "sites": "values joined with ';'",
            }.get(c.kind, "text"),
            "unit": c.unit,
            "allowed": ", ".join(c.allowed),
            "description": c.description,
        }
        for c in COLUMNS
    ]


# ---------------------------------------------------------------------------------------------
# Reading


RowProgress = Callable[[int, int], None]


def check_size(data: bytes, filename: str, *, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise TableError(
            f"{filename}: the file is {len(data) / 1e6:.1f} MB, over the limit of "
            f"{max_bytes / 1e6:.1f} MB"
        )


def read_table(
    data: bytes,
    filename: str,
    *,
    max_bytes: int,
    max_rows: int | None = None,
    progress: RowProgress | None = None,
) -> ParsedTable:
    """Read a CSV or XLSX file into checked records; every problem names its row and column.

    The format is sniffed from the content, not the file name. More than ``max_rows`` rows
    below the header (blank ones count: an XLSX can hold a million formatted empty rows) is
    refused before they are all read. ``progress(rows read, rows in the file)`` is called
    every 1,000 rows.
    """
    check_size(data, filename, max_bytes=max_bytes)
    if not data.strip():
        raise TableError(f"{filename}: the file is empty")
    reader = _read_xlsx if data.startswith(XLSX_MAGIC) else _read_csv
    header, body, cell_problems, n_rows = reader(data, filename)
    if max_rows is not None and reader is _read_xlsx and n_rows > max_rows:
        raise TableError(_too_many_rows(filename, n_rows, max_rows))
    body = _counted(body, filename, max_rows=max_rows, n_rows=n_rows, progress=progress)
    parsed = check_rows(header, body, filename)
    if cell_problems:
        # A formula cell was read as blank: its row's other problems are beside the point.
        flagged = {p.row for p in cell_problems}
        parsed.problems = cell_problems + [p for p in parsed.problems if p.row not in flagged]
        parsed.problems.sort(key=_problem_order)
    return parsed


def _too_many_rows(filename: str, n_rows: int, max_rows: int) -> str:
    return (
        f"{filename}: {n_rows:,} rows below the header (blank rows count), over the limit of "
        f"{max_rows:,} (PMPD_TABLE_MAX_ROWS); split the table or remove the empty rows"
    )


def _counted(
    body: Iterable[tuple[int, list[Any]]],
    filename: str,
    *,
    max_rows: int | None,
    n_rows: int,
    progress: RowProgress | None,
) -> Iterable[tuple[int, list[Any]]]:
    """``body``, refused past ``max_rows`` rows (the size the file announced may be wrong)."""
    for count, item in enumerate(body, start=1):
        if max_rows is not None and count > max_rows:
            raise TableError(_too_many_rows(filename, max(count, n_rows), max_rows))
        if progress is not None and count % 1000 == 0:
            progress(count, max(n_rows, count))
        yield item


Reader = tuple[list[str], Iterable[tuple[int, list[Any]]], list[TableProblem], int]


def _read_csv(data: bytes, filename: str) -> Reader:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TableError(
            f"{filename}: the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at position "
            f"{exc.start}); save it as 'CSV UTF-8'"
        ) from None
    if "\x00" in text:
        raise TableError(f"{filename}: the file is binary, not a CSV or XLSX table")
    first_line = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise TableError(f"{filename}: the file is empty") from None
    n_rows = max(0, text.count("\n") - 1)  # an estimate: quoted values may hold line breaks
    return header, ((number, row) for number, row in enumerate(reader, start=2)), [], n_rows


def _read_xlsx(data: bytes, filename: str) -> Reader:
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=False)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise TableError(f"{filename}: not a readable XLSX workbook ({exc})") from None
    sheet = workbook["patients"] if "patients" in workbook.sheetnames else workbook.worksheets[0]
    rows = sheet.iter_rows()
    try:
        header_cells = next(rows)
    except StopIteration:
        raise TableError(f"{filename}: the first sheet is empty") from None
    header = ["" if c.value is None else str(c.value) for c in header_cells]

    def body() -> Iterable[tuple[int, list[Any]]]:
        for number, cells in enumerate(rows, start=2):
            values = []
            for position, cell in enumerate(cells):
                if cell.data_type == "f":
                    column = header[position] if position < len(header) else None
                    formula_problems.append(
                        TableProblem(
                            number,
                            column,
                            f"contains a formula ({str(cell.value)[:40]}); paste values only",
                        )
                    )
                    values.append(None)
                else:
                    values.append(cell.value)
            yield number, values

    formula_problems: list[TableProblem] = []
    # The sheet's own dimension: a cheap first refusal; the rows read are counted anyway.
    n_rows = max(0, (sheet.max_row or 1) - 1)
    return header, body(), formula_problems, n_rows


def _normalise_header(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def check_rows(
    header: Sequence[str], body: Iterable[tuple[int, Sequence[Any]]], filename: str
) -> ParsedTable:
    parsed = ParsedTable(filename=filename)
    names = [_normalise_header(h) for h in header]
    while names and names[-1] == "":
        names.pop()
    missing = [c for c in COLUMN_NAMES if c not in names]
    unknown = [h for h in names if h not in COLUMN_NAMES]
    if missing:
        parsed.problems.append(TableProblem(1, None, f"missing columns: {', '.join(missing)}"))
    if unknown:
        parsed.problems.append(
            TableProblem(
                1,
                None,
                f"unknown columns: {', '.join(repr(u) for u in unknown)}; "
                "download the template for the allowed columns",
            )
        )
    repeated = sorted({n for n in names if names.count(n) > 1 and n})
    if repeated:
        parsed.problems.append(TableProblem(1, None, f"repeated columns: {', '.join(repeated)}"))
    if parsed.problems:
        return parsed

    index = {name: names.index(name) for name in COLUMN_NAMES}
    seen: dict[str, int] = {}
    memo: dict[str, dict[tuple[type, Any], dict[str, Any] | str]] = {
        name: {} for name in COLUMN_NAMES
    }
    for number, row in body:
        if all(_blank(cell) for cell in row):
            continue
        if len(row) > len(names) and any(not _blank(c) for c in row[len(names) :]):
            parsed.problems.append(
                TableProblem(number, None, "has more cells than the header has columns")
            )
            continue
        record, problems = _convert_row(number, row, index, memo)
        parsed.problems.extend(problems)
        study_id = record.get("study_id")
        if study_id:
            if study_id in seen:
                parsed.problems.append(
                    TableProblem(
                        number, "study_id", f"'{study_id}' already appears in row {seen[study_id]}"
                    )
                )
            else:
                seen[study_id] = number
        if not problems:
            for rule in check_patient(record):
                parsed.problems.append(TableProblem(number, rule.field, rule.message))
        parsed.records.append(record)
        parsed.rows.append(number)
    if not parsed.records and not parsed.problems:
        parsed.problems.append(TableProblem(None, None, f"{filename}: the table has no patients"))
    parsed.problems.sort(key=_problem_order)
    return parsed


def _problem_order(problem: TableProblem) -> tuple[int, int]:
    column = COLUMN_NAMES.index(problem.column) if problem.column in COLUMN_NAMES else -1
    return problem.row or 0, column


def _blank(cell: Any) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    # Undo the export's formula escaping, so export -> import gives the same value back.
    return unescape_formula(str(cell).strip())


def _convert_row(
    number: int,
    row: Sequence[Any],
    index: Mapping[str, int],
    memo: dict[str, dict[tuple[type, Any], dict[str, Any] | str]],
) -> tuple[dict[str, Any], list[TableProblem]]:
    record: dict[str, Any] = {}
    problems: list[TableProblem] = []
    for column in COLUMNS:
        position = index[column.name]
        cell = row[position] if position < len(row) else ""
        # Clinical tables repeat their values (codes, ages, days): convert each distinct cell
        # of a column once (text columns, mostly distinct, are not kept).
        seen = memo[column.name]
        key = (type(cell), cell)  # True == 1 in Python, but not in a table
        outcome = seen.get(key)
        if outcome is None:
            converted: dict[str, Any] = {}
            try:
                _convert_cell(column, _text(cell), converted)
                outcome = converted
            except ValueError as exc:
                outcome = str(exc)
            if column.kind != "text":
                seen[key] = outcome
        if isinstance(outcome, str):
            problems.append(TableProblem(number, column.name, outcome))
        else:
            record.update(outcome)
    return record, problems


def _convert_cell(column: Column, raw: str, record: dict[str, Any]) -> None:
    name = column.name
    if column.kind == "sites":
        chosen = [_code(part) for part in re.split(r"[;,|]", raw) if part.strip()]
        bad = [c for c in chosen if c not in column.allowed]
        if bad:
            raise ValueError(
                f"unknown site(s) {', '.join(bad)}; allowed: {', '.join(column.allowed)}"
            )
        for site in column.allowed:
            record[f"site_{site}"] = site in chosen
        return
    if raw == "":
        if column.required:
            raise ValueError("is required")
        record[name] = None if column.kind in {"int", "decimal"} else ""
        return
    if column.kind == "text":
        if len(raw) > column.max_length:
            raise ValueError(f"is longer than {column.max_length} characters")
        if name == "study_id" and not re.match(v.STUDY_ID_PATTERN, raw):
            raise ValueError(
                f"'{raw}' is not a valid study ID (letters, digits, '.', '_', '-'; a pseudonym)"
            )
        record[name] = raw
    elif column.kind == "int":
        try:
            number = Decimal(raw)
        except InvalidOperation:
            raise ValueError(f"'{raw}' is not a whole number") from None
        if number != number.to_integral_value():
            raise ValueError(f"'{raw}' is not a whole number")
        record[name] = int(number)
    elif column.kind == "decimal":
        try:
            number = Decimal(raw)
        except InvalidOperation:
            raise ValueError(f"'{raw}' is not a number") from None
        if not number.is_finite():
            raise ValueError(f"'{raw}' is not a number")
        exponent = number.normalize().as_tuple().exponent
        if isinstance(exponent, int) and -exponent > column.decimal_places:
            raise ValueError(f"'{raw}' has more than {column.decimal_places} decimal places")
        if number < 0:
            raise ValueError(f"'{raw}' must be 0 or more")
        record[name] = number.quantize(Decimal(1).scaleb(-column.decimal_places))
    elif column.kind == "choice":
        code = _code(raw)
        if code not in column.allowed:
            raise ValueError(f"'{raw}' is not one of: {', '.join(column.allowed)}")
        record[name] = code


def _code(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", value.strip().lower())


# ---------------------------------------------------------------------------------------------
# Writing


def record_to_row(record: Mapping[str, Any], *, typed: bool = False) -> list[Any]:
    """One patient as the template's cells, formula-escaped: text, or with ``typed`` the
    numbers of int and decimal columns as numbers (XLSX) and empty cells as None."""
    cells: list[Any] = []
    for column in COLUMNS:
        if column.kind == "sites":
            value: Any = ";".join(s for s in column.allowed if record.get(f"site_{s}"))
        else:
            value = record.get(column.name)
            if not (typed and column.kind in ("int", "decimal")):
                value = "" if value is None else str(value)
        cells.append(escape_formula(value))
    return cells


def write_csv(records: Iterable[Mapping[str, Any]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMN_NAMES)
    for record in records:
        writer.writerow(record_to_row(record))
    return out.getvalue().encode("utf-8")


def write_xlsx(records: Iterable[Mapping[str, Any]], *, notes: Sequence[str] = ()) -> bytes:
    """An XLSX with a 'patients' sheet (the template's columns; numbers as numbers, the rest
    as text, never a formula), a 'columns' sheet documenting each column and, with ``notes``,
    a 'Provenance' sheet."""
    import openpyxl
    from openpyxl.cell.cell import TYPE_STRING

    workbook = openpyxl.Workbook(write_only=False)
    sheet = workbook.active
    sheet.title = "patients"
    sheet.append(list(COLUMN_NAMES))
    for record in records:
        sheet.append(record_to_row(record, typed=True))
    for row in sheet.iter_rows(min_row=2):
        for cell in row:
            if isinstance(cell.value, str):
                cell.data_type = TYPE_STRING
    sheet.freeze_panes = "B2"
    docs = workbook.create_sheet("columns")
    described = describe_columns()
    docs.append(list(described[0].keys()))
    for entry in described:
        docs.append(list(entry.values()))
    if notes:
        provenance = workbook.create_sheet("Provenance")
        for note in notes:
            provenance.append([note])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()
