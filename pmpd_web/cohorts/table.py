"""The clinical table: its columns, and writing the template and exports.

Pure Python (no Django): the import (:mod:`.parsing` reads files into checked columns), the
API, the template download and the export all use these columns, and the synthetic phantom
cohort writes the same ones. A cohort adds its study-defined variables (REDCap's data
dictionary) as further columns: :func:`study_column` describes one.

Row numbers in messages are spreadsheet rows: the header is row 1, the first patient row 2.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from pmpd_web.spreadsheets import escape_formula

from . import vocabulary as v
from .rules import SITE_FIELDS

#: The kinds of a study-defined variable, as the coordinator chooses them.
STUDY_KINDS: dict[str, str] = {
    "number": "number",
    "int": "whole number",
    "choice": "category",
    "date": "date (YYYY-MM-DD)",
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # text, int, decimal, number, choice, sites, date
    description: str
    required: bool = False
    allowed: tuple[str, ...] = ()
    decimal_places: int = 0
    max_length: int = 120
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    study: bool = False  # a study-defined variable (stored in Patient.study_values)

    @property
    def range_text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.minimum is not None and self.maximum is not None:
            return f"{self.minimum:g} to {self.maximum:g}{unit}"
        if self.minimum is not None:
            return f"{self.minimum:g} or more{unit}"
        if self.maximum is not None:
            return f"at most {self.maximum:g}{unit}"
        return ""


def study_column(
    *,
    name: str,
    label: str,
    kind: str,
    unit: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    choices: Sequence[str] = (),
    required: bool = False,
) -> Column:
    """The column of a study-defined variable (its range is checked by the import)."""
    if kind not in STUDY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(STUDY_KINDS)}")
    return Column(
        name,
        kind,
        label,
        required=required,
        allowed=tuple(choices),
        unit=unit,
        minimum=minimum,
        maximum=maximum,
        study=True,
    )


COLUMNS: tuple[Column, ...] = (
    Column(
        "study_id",
        "text",
        "Pseudonymised study ID, unique in the cohort; never a name",
        required=True,
        max_length=64,
    ),
    Column(
        "age_at_diagnosis_years",
        "int",
        "Age at diagnosis",
        unit="years",
        minimum=v.AGE_RANGE_YEARS[0],
        maximum=v.AGE_RANGE_YEARS[1],
    ),
    Column("sex", "choice", "Sex", allowed=v.SEX),
    Column("centre", "text", "Recruiting centre"),
    Column(
        "tumour_location", "choice", "Location of the primary tumour", allowed=v.TUMOUR_LOCATION
    ),
    Column(
        "tumour_size_mm",
        "decimal",
        "Largest tumour diameter",
        decimal_places=1,
        unit="mm",
        minimum=v.TUMOUR_SIZE_RANGE_MM[0],
        maximum=v.TUMOUR_SIZE_RANGE_MM[1],
    ),
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
        minimum=v.CA19_9_RANGE_U_PER_ML[0],
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
    Column(
        "overall_survival_days",
        "int",
        "Overall survival from diagnosis",
        unit="days",
        minimum=0,
        maximum=v.SURVIVAL_DAYS_MAX,
    ),
    Column("vital_status", "choice", "Vital status at last follow-up", allowed=v.VITAL_STATUS),
    Column(
        "developed_metastasis",
        "choice",
        "For patients without metastasis at diagnosis: did it develop later",
        allowed=v.YES_NO,
    ),
    Column(
        "days_to_metastasis",
        "int",
        "Days from diagnosis until metastasis developed",
        unit="days",
        minimum=0,
        maximum=v.SURVIVAL_DAYS_MAX,
    ),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
# The model fields a table row sets (metastasis_sites spreads over the site_* booleans).
FIELD_NAMES: tuple[str, ...] = (
    tuple(name for name in COLUMN_NAMES if name != "metastasis_sites") + SITE_FIELDS
)


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
    """A read table: the checked values of every patient row as columns (``frame``: numbers
    as floats with NaN when blank, coded and text values as strings, sites as booleans), their
    spreadsheet row numbers, and every problem found."""

    filename: str
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    rows: list[int] = field(default_factory=list)
    problems: list[TableProblem] = field(default_factory=list)
    columns: tuple[Column, ...] = COLUMNS
    #: The study-defined variables the file has a column for (the others are left as stored).
    study_present: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def records(self) -> list[dict[str, Any]]:
        """The rows as model values (int, Decimal, str, bool; None when blank), each with its
        ``study_values`` (variable name -> value of each study column in the file; None, as
        an absent name, means no value)."""
        return frame_records(self.frame, self.columns, self.study_present)


def frame_records(
    frame: pd.DataFrame, columns: Sequence[Column], study_present: Sequence[str]
) -> list[dict[str, Any]]:
    converted: dict[str, list[Any]] = {}
    for column in columns:
        if column.kind == "sites":
            for name in SITE_FIELDS:
                converted[name] = frame[name].astype(bool).tolist()
            continue
        if column.study and column.name not in study_present:
            continue
        converted[column.name] = python_values(frame[column.name], column)
    fields = [c.name for c in columns if not c.study and c.kind != "sites"] + list(SITE_FIELDS)
    records = []
    for position in range(len(frame)):
        record = {name: converted[name][position] for name in fields}
        record["study_values"] = {name: converted[name][position] for name in study_present}
        records.append(record)
    return records


def python_values(values: pd.Series, column: Column) -> list[Any]:
    """A checked column as the model's Python values (None when blank)."""
    if column.kind in {"int", "decimal", "number"}:
        numbers = values.to_numpy(dtype=float)
        if column.kind == "int":
            return [None if n != n else int(n) for n in numbers]
        if column.kind == "decimal":
            quantum = Decimal(1).scaleb(-column.decimal_places)
            return [
                None if n != n else Decimal(repr(n)).quantize(quantum) for n in numbers.tolist()
            ]
        return [None if n != n else n for n in numbers.tolist()]
    return (
        [value if value != "" else None for value in values.tolist()]
        if column.study
        else (values.tolist())
    )


def pack_checked(parsed: ParsedTable, extra: Mapping[str, np.ndarray] = {}) -> bytes:
    """A checked table (and ``extra`` arrays) as compressed NumPy arrays: no pickle, nothing
    that runs code when read back. Text columns are kept as codes into their distinct texts."""
    arrays: dict[str, np.ndarray] = {
        "rows": np.asarray(parsed.rows, dtype=np.int64),
        "meta": _json_bytes(
            {
                "filename": parsed.filename,
                "study_present": list(parsed.study_present),
                "columns": [str(name) for name in parsed.frame.columns],
            }
        ),
    }
    for position, name in enumerate(parsed.frame.columns):
        values = parsed.frame[name].to_numpy()
        if values.dtype.kind == "O":
            codes, uniques = pd.factorize(values)
            arrays[f"codes{position}"] = codes.astype(np.min_scalar_type(max(len(uniques), 1)))
            arrays[f"texts{position}"] = np.asarray(uniques, dtype=str)
        else:
            arrays[f"values{position}"] = values
    arrays.update({f"extra_{name}": np.asarray(array) for name, array in extra.items()})
    out = io.BytesIO()
    np.savez(out, allow_pickle=False, **arrays)
    return zlib.compress(out.getvalue(), 1)


def unpack_checked(
    data: bytes, columns: Sequence[Column]
) -> tuple[ParsedTable, dict[str, np.ndarray]]:
    """What :func:`pack_checked` wrote, with the table's ``columns`` (the cohort's, unchanged
    since). ``ValueError`` when ``data`` is not such a table."""
    try:
        with np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(arrays["meta"].tobytes())
    except (zlib.error, zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as exc:
        raise ValueError(f"not a checked table ({exc})") from None
    frame: dict[str, np.ndarray] = {}
    for position, name in enumerate(meta["columns"]):
        if f"codes{position}" in arrays:
            texts = arrays[f"texts{position}"].astype(object)
            frame[name] = texts[arrays[f"codes{position}"]]
        else:
            frame[name] = arrays[f"values{position}"]
    rows = arrays["rows"]
    parsed = ParsedTable(
        filename=meta["filename"],
        frame=pd.DataFrame(frame, index=pd.RangeIndex(len(rows)), copy=False),
        rows=rows.tolist(),
        columns=tuple(columns),
        study_present=tuple(meta["study_present"]),
    )
    extra = {
        name.removeprefix("extra_"): a for name, a in arrays.items() if name.startswith("extra_")
    }
    return parsed, extra


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


class TableError(Exception):
    """The file as a whole cannot be read (empty, too large, not UTF-8...)."""


def describe_columns(columns: Sequence[Column] = COLUMNS) -> list[dict[str, str]]:
    """The template's documentation: one entry per column."""
    return [
        {
            "column": c.name,
            "required": "yes" if c.required else "no",
            "type": {
                "int": "whole number",
                "decimal": f"number ({c.decimal_places} decimals)",
                "number": "number",
                "date": "date (YYYY-MM-DD)",
                "choice": "one value",
                "sites": "values joined with ';'",
            }.get(c.kind, "text"),
            "unit": c.unit,
            "allowed": ", ".join(c.allowed) or c.range_text,
            "description": ("Study variable: " if c.study else "") + c.description,
        }
        for c in columns
    ]


# ---------------------------------------------------------------------------------------------
# Writing


NUMBER_KINDS = frozenset({"int", "decimal", "number"})


def record_to_row(
    record: Mapping[str, Any], columns: Sequence[Column] = COLUMNS, *, typed: bool = False
) -> list[Any]:
    """One patient as the template's cells, formula-escaped: text, or with ``typed`` (XLSX)
    the numbers of number columns as numbers and empty cells as None. Study-defined variables
    come from ``record["study_values"]``."""
    cells: list[Any] = []
    study_values = record.get("study_values") or {}
    for column in columns:
        if column.kind == "sites":
            value: Any = ";".join(s for s in column.allowed if record.get(f"site_{s}"))
        else:
            value = study_values.get(column.name) if column.study else record.get(column.name)
            if typed and column.kind in NUMBER_KINDS:
                value = None if value is None else _number(value)
            else:
                value = "" if value is None else _cell_text(value)
        cells.append(escape_formula(value))
    return cells


def _number(value: Any) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number


def _cell_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def write_csv(records: Iterable[Mapping[str, Any]], columns: Sequence[Column] = COLUMNS) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([c.name for c in columns])
    for record in records:
        writer.writerow(record_to_row(record, columns))
    return out.getvalue().encode("utf-8")


def write_xlsx(
    records: Iterable[Mapping[str, Any]],
    *,
    notes: Sequence[str] = (),
    columns: Sequence[Column] = COLUMNS,
) -> bytes:
    """An XLSX with a 'patients' sheet (the template's columns; numbers as numbers, the rest as
    text, never a formula; a drop-down on every choice column and a range check on every number
    with a range), a 'columns' sheet documenting each column and, with ``notes``, a
    'Provenance' sheet."""
    import openpyxl
    from openpyxl.cell.cell import TYPE_STRING

    workbook = openpyxl.Workbook(write_only=False)
    sheet = workbook.active
    sheet.title = "patients"
    sheet.append([c.name for c in columns])
    for record in records:
        sheet.append(record_to_row(record, columns, typed=True))
    for row in sheet.iter_rows(min_row=2):
        for cell in row:
            if isinstance(cell.value, str):
                cell.data_type = TYPE_STRING
    sheet.freeze_panes = "B2"
    _add_validations(sheet, columns)
    docs = workbook.create_sheet("columns")
    described = describe_columns(columns)
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


def _add_validations(sheet: Any, columns: Sequence[Column]) -> None:
    """Excel data validation: choice columns as drop-downs, numbers within their range (a
    warning in the spreadsheet; the import checks again and refuses)."""
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    for position, column in enumerate(columns, start=1):
        cells = f"{get_column_letter(position)}2:{get_column_letter(position)}1048576"
        if column.kind == "choice":
            validation = DataValidation(
                type="list",
                formula1='"' + ",".join(column.allowed) + '"',
                allow_blank=not column.required,
                showErrorMessage=True,
                errorTitle=column.name,
                error=f"Choose one of: {', '.join(column.allowed)}",
            )
        elif column.kind in {"int", "decimal", "number"} and column.range_text:
            low = column.minimum if column.minimum is not None else -1e307
            high = column.maximum if column.maximum is not None else 1e307
            validation = DataValidation(
                type="whole" if column.kind == "int" else "decimal",
                operator="between",
                formula1=f"{low:g}",
                formula2=f"{high:g}",
                allow_blank=True,
                showErrorMessage=True,
                errorTitle=column.name,
                error=f"{column.name}: {column.range_text}",
            )
        else:
            continue
        validation.add(cells)
        sheet.add_data_validation(validation)
