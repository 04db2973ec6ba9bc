"""Reading a clinical table (CSV or XLSX) into checked columns, every problem in one pass.

Pure (pandas/numpy, no Django). The cells are checked column by column: numbers parsed with
``pandas.to_numeric``, ranges and the consistency rules (:mod:`.rules`) compared on whole
arrays, coded values converted once per distinct value. A table with unknown columns, cells
that do not parse, values out of range and rows that contradict themselves gets all these
problems in one answer, each naming its spreadsheet row and column.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zipfile
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd

from pmpd_web.spreadsheets import unescape_formula

from . import vocabulary as v
from .rules import SITE_FIELDS, check_frame
from .table import COLUMNS, Column, ParsedTable, TableError, TableProblem

__all__ = ["read_table", "check_table"]

XLSX_MAGIC = b"PK\x03\x04"


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
    columns: Sequence[Column] = COLUMNS,
) -> ParsedTable:
    """Read a CSV or XLSX file into checked columns; every problem names its row and column.

    ``columns`` are the template's columns and the cohort's study-defined variables. The
    format is sniffed from the content, not the file name. More than ``max_rows`` rows below
    the header (blank ones count: an XLSX can hold a million formatted empty rows) is refused,
    an XLSX before its rows are read.
    """
    check_size(data, filename, max_bytes=max_bytes)
    if not data.strip():
        raise TableError(f"{filename}: the file is empty")
    if data.startswith(XLSX_MAGIC):
        header, body, cell_problems = _read_xlsx(data, filename, max_rows)
        grid = _Grid.of_rows(header, body)
    else:
        grid, cell_problems = _read_csv(data, filename), []
    if max_rows is not None and grid.n_rows > max_rows:
        raise TableError(_too_many_rows(filename, grid.n_rows, max_rows))
    return _check_grid(grid, filename, columns=tuple(columns), cell_problems=cell_problems)


def _too_many_rows(filename: str, n_rows: int, max_rows: int) -> str:
    return (
        f"{filename}: {n_rows:,} rows below the header (blank rows count), over the limit of "
        f"{max_rows:,} (PMPD_TABLE_MAX_ROWS); split the table or remove the empty rows"
    )


def _read_csv(data: bytes, filename: str) -> _Grid:
    """The cells of a CSV as columns, read by pandas' C parser (every cell as its text); a
    table whose rows are longer than its first line is read by the csv module instead."""
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
    try:
        cells = pd.read_csv(
            io.BytesIO(data),
            sep=delimiter,
            header=None,
            dtype=str,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
            engine="c",
        )
    except pd.errors.EmptyDataError:
        raise TableError(f"{filename}: the file is empty") from None
    except pd.errors.ParserError:
        # A row longer than the first line: the csv module reads rows of any length.
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
        if not rows:
            raise TableError(f"{filename}: the file is empty") from None
        return _Grid.of_rows(rows[0], rows[1:])
    columns = [cells[name].to_numpy(dtype=object) for name in cells.columns]
    return _Grid(
        header=[str(column[0]) for column in columns],
        columns=[column[1:] for column in columns],
        n_rows=len(cells) - 1,
    )


def _read_xlsx(
    data: bytes, filename: str, max_rows: int | None = None
) -> tuple[list[str], list[list[str]], list[TableProblem]]:
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=False)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise TableError(f"{filename}: not a readable XLSX workbook ({exc})") from None
    sheet = workbook["patients"] if "patients" in workbook.sheetnames else workbook.worksheets[0]
    announced = max(0, (sheet.max_row or 1) - 1)  # the sheet's own dimension: a cheap refusal
    if max_rows is not None and announced > max_rows:
        raise TableError(_too_many_rows(filename, announced, max_rows))
    rows = sheet.iter_rows()
    try:
        header_cells = next(rows)
    except StopIteration:
        raise TableError(f"{filename}: the first sheet is empty") from None
    header = [_cell_text(c.value) for c in header_cells]
    body: list[list[str]] = []
    formulas: list[TableProblem] = []
    for number, cells in enumerate(rows, start=2):
        values = []
        for position, cell in enumerate(cells):
            if cell.data_type == "f":
                column = _normalise_header(header[position]) if position < len(header) else None
                formulas.append(
                    TableProblem(
                        number,
                        column,
                        f"contains a formula ({str(cell.value)[:40]}); paste values only",
                    )
                )
                values.append("")
            else:
                values.append(_cell_text(cell.value))
        body.append(values)
        if max_rows is not None and len(body) > max_rows:
            break  # the dimension was wrong: read_table refuses it with the count
    return header, body, formulas


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _normalise_header(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _code(value: str) -> str:
    return re.sub(r"[\s\-]+", "_", value.strip().lower())


# ---------------------------------------------------------------------------------------------
# Checking


class _Problems:
    """Problems gathered column by column, turned into sorted :class:`TableProblem` at the end."""

    def __init__(self, rows: np.ndarray, order: dict[str, int]):
        self.rows = rows
        self.order = order
        self.items: list[TableProblem] = []

    def add(
        self, mask: np.ndarray, column: str | None, message: str | Callable[[int], str]
    ) -> None:
        """A problem on each row of ``mask``; ``message`` is the text, or makes it from the
        row's position."""
        for position in np.flatnonzero(mask):
            text = message if isinstance(message, str) else message(int(position))
            self.items.append(TableProblem(int(self.rows[position]), column, text))

    def sorted(self) -> list[TableProblem]:
        return sorted(self.items, key=lambda p: (p.row or 0, self.order.get(p.column or "", -1)))


class _Grid:
    """A table's cells as columns of texts (every row as long as the longest, padded with
    empty cells) under its header."""

    def __init__(self, *, header: Sequence[str], columns: list[np.ndarray], n_rows: int):
        self.header = list(header)
        self.columns = columns
        self.n_rows = n_rows

    @classmethod
    def of_rows(cls, header: Sequence[str], body: Sequence[Sequence[str]]) -> _Grid:
        width = max([len(header), *map(len, body)])
        padded = [
            row if len(row) == width else [*row, *([""] * (width - len(row)))] for row in body
        ]
        columns = (
            [np.array(column, dtype=object) for column in zip(*padded, strict=True)]
            if padded
            else [np.array([], dtype=object) for _ in range(width)]
        )
        return cls(
            header=[*header, *([""] * (width - len(header)))], columns=columns, n_rows=len(body)
        )


def check_table(
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    filename: str,
    *,
    columns: Sequence[Column] = COLUMNS,
    cell_problems: Sequence[TableProblem] = (),
) -> ParsedTable:
    """Check a table given as its header and rows of cell texts (row 2 = ``body[0]``)."""
    return _check_grid(
        _Grid.of_rows(header, body), filename, columns=tuple(columns), cell_problems=cell_problems
    )


def _check_grid(
    grid: _Grid,
    filename: str,
    *,
    columns: tuple[Column, ...],
    cell_problems: Sequence[TableProblem] = (),
) -> ParsedTable:
    """Check a table's cells column by column: each column factorised once, its distinct
    texts stripped and converted once, every check an array operation over the rows."""
    names = [_normalise_header(h) for h in grid.header]
    while names and names[-1] == "":
        names.pop()
    header_problems = _header_problems(names, columns)
    present = [c for c in columns if c.name in names]
    width = len(names)

    factorised = [_Factorised(column) for column in grid.columns]
    blank = np.ones(grid.n_rows, dtype=bool)  # rows of empty cells are skipped
    for column in factorised:
        blank &= column.blank
    beyond = np.zeros(grid.n_rows, dtype=bool)  # a cell right of the header's last column
    for column in factorised[width:]:
        beyond |= ~column.blank
    too_long = np.flatnonzero(~blank & beyond) + 2
    keep = np.flatnonzero(~blank & ~beyond)
    rows = keep + 2
    order = {c.name: i for i, c in enumerate(columns)}
    problems = _Problems(rows, order)
    problems.items.extend(header_problems)
    problems.items.extend(
        TableProblem(int(n), None, "has more cells than the header has columns") for n in too_long
    )
    frame: dict[str, Any] = {}
    unreadable: dict[str, np.ndarray] = {}
    for column in present:
        cells = factorised[names.index(column.name)].cells(keep)
        values, bad = CONVERTERS[column.kind](column, cells, problems)
        if isinstance(values, dict):
            frame.update(values)
        else:
            frame[column.name] = values
        unreadable[column.name] = bad
    # The converters' arrays as they are: copying them into consolidated blocks took a
    # quarter of the check.
    table = pd.DataFrame(frame, index=pd.RangeIndex(len(rows)), copy=False)
    if "study_id" in table.columns:
        ids = table["study_id"]
        repeated = ids.duplicated() & (ids != "")
        if repeated.any():
            first = ids.drop_duplicates().pipe(lambda s: dict(zip(s, rows[s.index], strict=True)))
            problems.add(
                repeated.to_numpy(),
                "study_id",
                lambda position: (
                    f"'{ids.iat[position]}' already appears in row {first[ids.iat[position]]}"
                ),
            )
    for positions, rule in check_frame(table, unreadable=unreadable):
        mask = np.zeros(len(rows), dtype=bool)
        mask[positions] = True
        problems.add(mask, rule.field, rule.message)
    flagged = {p.row for p in cell_problems}
    if flagged:
        # A formula cell was read as blank: its row's other problems are beside the point.
        problems.items = [p for p in problems.items if p.row not in flagged or p.row == 1]
        problems.items.extend(cell_problems)
    if not len(rows) and not problems.items:
        problems.items.append(TableProblem(None, None, f"{filename}: the table has no patients"))
    return ParsedTable(
        filename=filename,
        frame=table,
        rows=rows.tolist(),
        problems=problems.sorted(),
        columns=columns,
        study_present=tuple(c.name for c in present if c.study),
    )


def _header_problems(names: list[str], columns: tuple[Column, ...]) -> list[TableProblem]:
    known = {c.name for c in columns}
    found: list[TableProblem] = []
    missing = [c.name for c in columns if c.name not in names and (not c.study or c.required)]
    unknown = [h for h in dict.fromkeys(names) if h not in known]
    if missing:
        found.append(TableProblem(1, None, f"missing columns: {', '.join(missing)}"))
    if unknown:
        quoted = ", ".join(repr(u) for u in unknown)
        found.append(
            TableProblem(
                1,
                None,
                f"unknown columns: {quoted}; download the template for the allowed columns, "
                "or have a coordinator define each as a study variable of the cohort (Study "
                "variables page, or POST /api/cohorts/<id>/variables/) before importing",
            )
        )
    repeated = sorted({n for n in names if names.count(n) > 1 and n})
    if repeated:
        found.append(TableProblem(1, None, f"repeated columns: {', '.join(repeated)}"))
    return found


class _Factorised:
    """One column of the grid as its distinct texts, stripped, and each row's index into them
    (clinical columns repeat their values: each distinct text is looked at once)."""

    def __init__(self, cells: np.ndarray):
        self.codes, uniques = pd.factorize(cells)
        self.stripped = np.array([str(text).strip() for text in uniques], dtype=object)
        blank = self.stripped == ""
        self.blank = blank[self.codes] if len(self.codes) else np.zeros(0, dtype=bool)

    def cells(self, keep: np.ndarray) -> _Cells:
        return _Cells(self.codes[keep], self.stripped)


class _Cells:
    """One column's cells (of the kept rows) as distinct texts (stripped, the export's formula
    escaping undone so export -> import gives the same value back) and each row's index into
    them: clinical columns repeat their values, so each distinct text is converted once."""

    def __init__(self, codes: np.ndarray, stripped: np.ndarray):
        self.codes = codes
        escaped = np.flatnonzero([text.startswith("'") for text in stripped])
        self.distinct = stripped.copy()
        self.distinct[escaped] = [unescape_formula(text) for text in stripped[escaped]]

    def rows(self, per_distinct: np.ndarray) -> np.ndarray:
        """A value per distinct text spread over the rows."""
        return np.asarray(per_distinct)[self.codes] if len(self.codes) else per_distinct[:0]

    def text(self, position: int) -> str:
        return self.distinct[self.codes[position]]

    def quoted(self, template: str) -> Callable[[int], str]:
        """The message of a row: ``template`` with its cell's text for ``{}``."""
        return lambda position: template.format(self.text(position))

    @property
    def blank(self) -> np.ndarray:
        return self.rows(self.distinct == "")


Converter = Callable[[Column, _Cells, _Problems], tuple[Any, np.ndarray]]


def _required(column: Column, blank: np.ndarray, problems: _Problems) -> np.ndarray:
    if column.required:
        problems.add(blank, column.name, "is required")
        return blank
    return np.zeros_like(blank)


def _convert_text(column: Column, cells: _Cells, problems: _Problems):
    blank = cells.blank
    bad = _required(column, blank, problems)
    long = cells.rows(np.array([len(t) > column.max_length for t in cells.distinct], dtype=bool))
    problems.add(long, column.name, f"is longer than {column.max_length} characters")
    bad = bad | long
    if column.name == "study_id":
        pattern = re.compile(v.STUDY_ID_PATTERN)
        valid = np.array([bool(pattern.match(t)) for t in cells.distinct], dtype=bool)
        invalid = ~cells.rows(valid) & ~blank & ~long
        problems.add(
            invalid,
            column.name,
            cells.quoted(
                "'{}' is not a valid study ID (letters, digits, '.', '_', '-'; a pseudonym)"
            ),
        )
        bad |= invalid
    return cells.rows(cells.distinct), bad


def _decimal_places(text: str) -> int:
    try:
        exponent = Decimal(text).normalize().as_tuple().exponent
    except InvalidOperation:
        return 0
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _range_message(column: Column) -> str:
    unit = f" {column.unit}" if column.unit else ""
    if column.minimum is not None and column.maximum is not None:
        return f"must be between {column.minimum:g} and {column.maximum:g}{unit}"
    if column.minimum is not None:
        return f"must be {column.minimum:g} or more{unit}"
    return f"must be at most {column.maximum:g}{unit}"


def _convert_number(column: Column, cells: _Cells, problems: _Problems):
    """Numbers parsed by ``pandas.to_numeric`` over the distinct texts; ranges on arrays."""
    blank = cells.blank
    bad = _required(column, blank, problems)
    distinct = pd.to_numeric(
        pd.Series(cells.distinct).where(cells.distinct != ""), errors="coerce"
    ).to_numpy(dtype=float)
    unreadable_distinct = (cells.distinct != "") & ~np.isfinite(distinct)
    whole = column.kind == "int"
    if whole:
        with np.errstate(invalid="ignore"):
            unreadable_distinct |= (cells.distinct != "") & (distinct != np.floor(distinct))
    unreadable = cells.rows(unreadable_distinct)
    what = "a whole number" if whole else "a number"
    problems.add(unreadable, column.name, cells.quoted("'{}' is not " + what))
    bad = bad | unreadable
    numbers = cells.rows(distinct).astype(float)
    if column.kind == "decimal":
        places = np.array([_decimal_places(t) if t else 0 for t in cells.distinct])
        too_precise = ~bad & cells.rows(places > column.decimal_places)
        problems.add(
            too_precise,
            column.name,
            cells.quoted("'{}' has more than " + f"{column.decimal_places} decimal places"),
        )
        negative = ~bad & ~too_precise & (np.nan_to_num(numbers) < 0)
        problems.add(negative, column.name, cells.quoted("'{}' must be 0 or more"))
        bad |= too_precise | negative
    if column.study and (column.minimum is not None or column.maximum is not None):
        low = -np.inf if column.minimum is None else column.minimum
        high = np.inf if column.maximum is None else column.maximum
        with np.errstate(invalid="ignore"):
            outside = ~bad & ~blank & ((numbers < low) | (numbers > high))
        problems.add(outside, column.name, _range_message(column))
        bad |= outside
    numbers[bad] = np.nan
    return numbers, bad


def _convert_date(column: Column, cells: _Cells, problems: _Problems):
    blank = cells.blank
    bad = _required(column, blank, problems)
    dates = pd.to_datetime(
        pd.Series(cells.distinct).where(cells.distinct != ""), format="%Y-%m-%d", errors="coerce"
    )
    unreadable = cells.rows((cells.distinct != "") & dates.isna().to_numpy())
    problems.add(unreadable, column.name, cells.quoted("'{}' is not a date (YYYY-MM-DD)"))
    iso = dates.dt.strftime("%Y-%m-%d").fillna("").to_numpy(dtype=object)
    return cells.rows(iso), bad | unreadable


def _convert_choice(column: Column, cells: _Cells, problems: _Problems):
    blank = cells.blank
    bad = _required(column, blank, problems)
    codes = np.array([_code(t) for t in cells.distinct], dtype=object)
    known = np.array([c in column.allowed or c == "" for c in codes], dtype=bool)
    unknown = ~cells.rows(known)
    allowed = ", ".join(column.allowed)
    problems.add(unknown, column.name, cells.quoted("'{}' is not one of: " + allowed))
    codes[~known] = ""
    return cells.rows(codes), bad | unknown


def _sites(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    chosen = tuple(_code(part) for part in re.split(r"[;,|]", text) if part.strip())
    return chosen, tuple(c for c in chosen if c not in v.METASTASIS_SITES)


def _convert_sites(column: Column, cells: _Cells, problems: _Problems):
    parsed = [_sites(t) for t in cells.distinct]
    wrong = np.array([bool(item[1]) for item in parsed], dtype=bool)
    bad = cells.rows(wrong)
    allowed = ", ".join(column.allowed)
    problems.add(
        bad,
        column.name,
        lambda position: (
            f"unknown site(s) {', '.join(parsed[cells.codes[position]][1])}; allowed: {allowed}"
        ),
    )
    values = {
        field: cells.rows(
            np.array(
                [
                    not w and field.removeprefix("site_") in item[0]
                    for item, w in zip(parsed, wrong, strict=True)
                ],
                dtype=bool,
            )
        )
        for field in SITE_FIELDS
    }
    return values, bad


CONVERTERS: dict[str, Converter] = {
    "text": _convert_text,
    "int": _convert_number,
    "decimal": _convert_number,
    "number": _convert_number,
    "date": _convert_date,
    "choice": _convert_choice,
    "sites": _convert_sites,
}
