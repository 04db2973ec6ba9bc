"""The consistency rules of a patient's clinical record, in one place.

The rules are written over columns: :func:`check_frame` tests a whole table at once (the
import checks 10,000 rows in a few vectorised operations), and :func:`check_patient` is the
same call on a one-row table, for the model's ``clean()`` and the API. So a rule written here
holds for a form, the API and a spreadsheet alike. Pure (pandas, no Django).

A frame holds numbers as floats (NaN when missing), coded and text values as strings ("" when
missing) and the metastasis sites as booleans.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where a record is checked: Django starts without pandas
    import pandas as pd

from .vocabulary import (
    AGE_RANGE_YEARS,
    CA19_9_RANGE_U_PER_ML,
    SURVIVAL_DAYS_MAX,
    TUMOUR_SIZE_RANGE_MM,
)

SITE_FIELDS = ("site_liver", "site_lung", "site_peritoneum", "site_other", "site_unknown")
NUMBER_FIELDS = (
    "age_at_diagnosis_years",
    "tumour_size_mm",
    "ca19_9_u_per_ml",
    "overall_survival_days",
    "days_to_metastasis",
)


@dataclass(frozen=True)
class Problem:
    field: str
    message: str


@dataclass(frozen=True)
class Rule:
    """``broken(frame)`` is True on the rows that break the rule; ``uses`` names the fields it
    reads (a row whose value of one of them could not be read is not judged by it)."""

    field: str
    message: str
    uses: tuple[str, ...]
    broken: Callable[[pd.DataFrame], np.ndarray]


def _outside(name: str, low: float, high: float) -> Callable[[pd.DataFrame], np.ndarray]:
    def broken(frame: pd.DataFrame) -> np.ndarray:
        values = frame[name].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            return ~np.isnan(values) & ((values < low) | (values > high))

    return broken


def _number(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].to_numpy(dtype=float)


def _text(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].to_numpy(dtype=object)


def _given(frame: pd.DataFrame, name: str) -> np.ndarray:
    return ~np.isnan(_number(frame, name))


def _any_site(frame: pd.DataFrame) -> np.ndarray:
    return frame[list(SITE_FIELDS)].to_numpy(dtype=bool).any(axis=1)


def _days_rules(name: str) -> list[Rule]:
    return [
        Rule(
            name,
            "must be 0 or more days",
            (name,),
            lambda f: _given(f, name) & (_number(f, name) < 0),
        ),
        Rule(
            name,
            f"must be at most {SURVIVAL_DAYS_MAX} days",
            (name,),
            lambda f: _given(f, name) & (_number(f, name) > SURVIVAL_DAYS_MAX),
        ),
    ]


RULES: tuple[Rule, ...] = (
    Rule(
        "age_at_diagnosis_years",
        f"must be between {AGE_RANGE_YEARS[0]} and {AGE_RANGE_YEARS[1]} years",
        ("age_at_diagnosis_years",),
        _outside("age_at_diagnosis_years", *AGE_RANGE_YEARS),
    ),
    Rule(
        "tumour_size_mm",
        f"must be between {TUMOUR_SIZE_RANGE_MM[0]} and {TUMOUR_SIZE_RANGE_MM[1]} mm",
        ("tumour_size_mm",),
        _outside("tumour_size_mm", *TUMOUR_SIZE_RANGE_MM),
    ),
    Rule(
        "ca19_9_u_per_ml",
        "must be 0 or more (U/mL)",
        ("ca19_9_u_per_ml",),
        _outside("ca19_9_u_per_ml", *CA19_9_RANGE_U_PER_ML),
    ),
    *_days_rules("overall_survival_days"),
    *_days_rules("days_to_metastasis"),
    Rule(
        "metastasis_sites",
        "sites are allowed only when metastasis_at_diagnosis is yes",
        ("metastasis_sites", "metastasis_at_diagnosis"),
        lambda f: _any_site(f) & (_text(f, "metastasis_at_diagnosis") != "yes"),
    ),
    Rule(
        "metastasis_detection",
        "how metastasis was found is allowed only when metastasis_at_diagnosis is yes",
        ("metastasis_detection", "metastasis_at_diagnosis"),
        lambda f: (
            (_text(f, "metastasis_detection") != "")
            & (_text(f, "metastasis_at_diagnosis") != "yes")
        ),
    ),
    Rule(
        "nccn_resectability",
        "metastatic resectability contradicts metastasis_at_diagnosis = no",
        ("nccn_resectability", "metastasis_at_diagnosis"),
        lambda f: (
            (_text(f, "nccn_resectability") == "metastatic")
            & (_text(f, "metastasis_at_diagnosis") == "no")
        ),
    ),
    Rule(
        "developed_metastasis",
        "is recorded only for patients without metastasis at diagnosis",
        ("developed_metastasis", "metastasis_at_diagnosis"),
        lambda f: (
            (_text(f, "developed_metastasis") != "") & (_text(f, "metastasis_at_diagnosis") != "no")
        ),
    ),
    Rule(
        "days_to_metastasis",
        "is allowed only when developed_metastasis is yes",
        ("days_to_metastasis", "developed_metastasis"),
        lambda f: _given(f, "days_to_metastasis") & (_text(f, "developed_metastasis") != "yes"),
    ),
    Rule(
        "days_to_metastasis",
        "cannot be later than overall_survival_days",
        ("days_to_metastasis", "overall_survival_days"),
        lambda f: (
            _given(f, "days_to_metastasis")
            & _given(f, "overall_survival_days")
            & (
                np.nan_to_num(_number(f, "days_to_metastasis"))
                > np.nan_to_num(_number(f, "overall_survival_days"))
            )
        ),
    ),
    Rule(
        "vital_status",
        "is required when overall_survival_days is given",
        ("vital_status", "overall_survival_days"),
        lambda f: _given(f, "overall_survival_days") & (_text(f, "vital_status") == ""),
    ),
    Rule(
        "overall_survival_days",
        "is required when vital_status is given",
        ("overall_survival_days", "vital_status"),
        lambda f: (_text(f, "vital_status") != "") & ~_given(f, "overall_survival_days"),
    ),
)


def check_frame(
    frame: pd.DataFrame, *, unreadable: Mapping[str, np.ndarray] | None = None
) -> list[tuple[np.ndarray, Rule]]:
    """Every rule broken in ``frame``: (positions of the rows that break it, the rule).

    ``unreadable`` maps a field to a mask of rows whose value could not be read (the import
    reports those cells already); a rule reading such a value is not applied to that row, and a
    rule reading a field absent from ``frame`` is not applied at all.
    """
    unreadable = unreadable or {}
    broken: list[tuple[np.ndarray, Rule]] = []
    for rule in RULES:
        needed = ["site_liver" if name == "metastasis_sites" else name for name in rule.uses]
        if any(name not in frame.columns for name in needed):
            continue
        mask = np.asarray(rule.broken(frame), dtype=bool)
        for name in rule.uses:
            if name in unreadable:
                mask &= ~unreadable[name]
        if mask.any():
            broken.append((np.flatnonzero(mask), rule))
    return broken


def _frame_value(name: str, value: Any) -> Any:
    if name in NUMBER_FIELDS:
        return np.nan if value is None else float(value) if isinstance(value, Decimal) else value
    if name in SITE_FIELDS:
        return bool(value)
    return "" if value is None else value


def check_patient(values: Mapping[str, Any]) -> list[Problem]:
    """Return every rule the record breaks (empty when it is consistent)."""
    import pandas as pd

    names = (*NUMBER_FIELDS, *SITE_FIELDS, *(name for rule in RULES for name in rule.uses))
    row = {
        name: [_frame_value(name, values.get(name))]
        for name in dict.fromkeys(names)
        if name != "metastasis_sites"
    }
    frame = pd.DataFrame(row).astype({name: float for name in NUMBER_FIELDS})
    return [Problem(rule.field, rule.message) for _, rule in check_frame(frame)]
