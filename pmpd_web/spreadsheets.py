"""Cells that spreadsheets open safely: the one formula escaping of every table the platform
writes (the clinical export and template, the analytics tables and figure data, CSV and XLSX).

Pure Python (pandas optional, no Django): a spreadsheet runs a cell that starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return as a formula (CSV injection: a DICOM
Manufacturer header ``=HYPERLINK(...)`` would become a live link). Such text gets a leading
``'``, which spreadsheets show as text and the clinical import removes again. Numbers stay
numbers: ``-0.25`` is a value, not a formula, and a statistician's reader must see a number.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A plain decimal number, nothing around it: "-0.25", "+3", "1e-05".
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _is_number(text: str) -> bool:
    return PLAIN_NUMBER.fullmatch(text) is not None


def escape_formula(value: Any) -> Any:
    """``value`` with a leading ``'`` if it is text a spreadsheet would run as a formula;
    anything else (numbers, dates, None, text that is a plain number) unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) and not _is_number(value):
        return "'" + value
    return value


def unescape_formula(text: str) -> str:
    """Undo :func:`escape_formula` (the clinical import: export then import is the identity)."""
    if text.startswith("'") and text[1:2] and text[1] in FORMULA_PREFIXES:
        return text[1:]
    return text


def escape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with every text cell, and the column names, escaped."""
    escaped = frame.rename(columns=lambda name: escape_formula(str(name)))
    for column in escaped.select_dtypes(include=["object", "string"]).columns:
        escaped[column] = escaped[column].map(escape_formula)
    return escaped
