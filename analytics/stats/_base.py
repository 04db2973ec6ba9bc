"""Shared plumbing for the result objects of ``analytics.stats``.

Every analysis returns either a result dataclass (a subclass of :class:`StatResult`) or a
:class:`NotComputable` that says what is missing and why. Both share the same small interface:

- ``computable``: ``True`` for a result, ``False`` for :class:`NotComputable`;
- ``to_dict()``: plain JSON-serialisable values (NaN and infinities become ``None``, numpy
  arrays become lists), for the API and for storing in the database;
- ``to_frame()``: a :class:`pandas.DataFrame`, for CSV exports;
- ``str(result)``: the table a statistician expects to read.

Programming errors (arrays of different lengths, an unknown option) raise ``ValueError``; data
that make an analysis undefined (one class only, no events, an empty group) never raise: they
give a :class:`NotComputable`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd

__all__ = ["NotComputable", "StatResult", "jsonable"]


def jsonable(value: Any) -> Any:
    """Convert ``value`` into plain Python values that ``json.dumps`` accepts.

    Non-finite floats become ``None`` (JSON has no NaN), numpy scalars and arrays become Python
    numbers and lists, tuples become lists, mapping keys become strings, and nested results are
    converted with their own ``to_dict()``.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, StatResult | NotComputable):
        return value.to_dict()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.ndarray):
        return [jsonable(item) for item in value.tolist()]
    if isinstance(value, pd.DataFrame):
        return [jsonable(dict(row)) for row in value.to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return jsonable(value.to_dict())
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def format_number(value: float | None, digits: int = 4) -> str:
    """Format a number for printed tables: ``NA`` for missing, ``digits`` significant digits."""
    if value is None:
        return "NA"
    number = float(value)
    if not math.isfinite(number):
        return "NA"
    return f"{number:.{digits}g}"


def format_p_value(p_value: float | None) -> str:
    """Format a p-value the way clinical journals print them (``<0.001`` below 0.001)."""
    if p_value is None or not math.isfinite(float(p_value)):
        return "NA"
    if p_value < 0.001:
        return "<0.001"
    return f"{p_value:.3f}"


def p_text(p_value: float | None) -> str:
    """``"p < 0.001"`` or ``"p = 0.012"``: a p-value as a phrase for annotations."""
    formatted = format_p_value(p_value)
    return f"p {formatted[0]} {formatted[1:]}" if formatted.startswith("<") else f"p = {formatted}"


@dataclasses.dataclass(frozen=True)
class NotComputable:
    """An analysis that could not be computed, with the reason in words a user understands.

    ``analysis`` names the analysis (e.g. ``"AUROC"``), ``reason`` says why it is undefined
    (e.g. ``"only one class present: 12 positives, 0 negatives"``), ``missing`` lists what would
    be needed (e.g. ``("negative cases",)``).
    """

    analysis: str
    reason: str
    missing: tuple[str, ...] = ()

    computable: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "computable": False,
            "analysis": self.analysis,
            "reason": self.reason,
            "missing": list(self.missing),
        }

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"analysis": self.analysis, "computable": False, "reason": self.reason}]
        )

    def __str__(self) -> str:
        return f"{self.analysis}: not computable: {self.reason}"


class StatResult:
    """Base class of every computed result dataclass.

    Subclasses are frozen dataclasses; they implement :meth:`to_frame` (one row per line of the
    printed table) and set ``title``. ``to_dict`` serialises every field.
    """

    computable: ClassVar[bool] = True
    title: ClassVar[str] = "Result"

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        payload = {field.name: jsonable(getattr(self, field.name)) for field in fields}
        return {"computable": True, "analysis": self.title, **payload}

    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError

    def __str__(self) -> str:
        frame = self.to_frame()
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            table = frame.to_string(index=False, float_format=lambda v: format_number(v))
        return f"{self.title}\n{table}"


def as_float_array(values: Any, *, name: str) -> np.ndarray:
    """Return ``values`` as a one-dimensional float array (missing values become NaN)."""
    if isinstance(values, pd.Series | pd.Index):
        array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    else:
        array = np.asarray(values)
        if array.dtype == object:
            array = pd.to_numeric(pd.Series(array), errors="coerce").to_numpy(
                dtype=float, na_value=np.nan
            )
        else:
            array = array.astype(float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def check_same_length(**arrays: np.ndarray) -> None:
    """Raise ``ValueError`` when arrays that describe the same patients differ in length."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"inputs must have the same length: {described}")


def binary_labels(values: Any, *, name: str = "labels") -> tuple[np.ndarray, list[str]]:
    """Return 0/1 labels as floats (NaN for missing) and the values that were neither 0 nor 1.

    Invalid values (``2``, ``"yes"``) are set to NaN in the array and reported in the second
    element so that the caller can explain why the analysis is not computable.
    """
    raw = values.to_numpy() if isinstance(values, pd.Series | pd.Index) else np.asarray(values)
    if raw.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {raw.shape}")
    if raw.dtype.kind in "biuf":
        array = raw.astype(float)
        bad_mask = ~np.isnan(array) & (array != 0) & (array != 1)
    else:
        series = pd.Series(raw, dtype=object)
        numeric = pd.to_numeric(series, errors="coerce")
        bad_mask = (series.notna() & ~numeric.isin([0, 1])).to_numpy()
        array = numeric.to_numpy(dtype=float, na_value=np.nan)
    bad = sorted({str(value) for value in raw[bad_mask].tolist()})
    if bad:
        array = array.copy()
        array[bad_mask] = np.nan
    return array, bad
