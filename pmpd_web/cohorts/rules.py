"""The consistency rules of a patient's clinical record, in one place.

Both the model's ``clean()`` and the table import call :func:`check_patient`, so a rule written
here holds for a form, the API and a spreadsheet alike. The function is pure: it takes a mapping
of field values and returns the problems, each naming its field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .vocabulary import (
    AGE_RANGE_YEARS,
    CA19_9_RANGE_U_PER_ML,
    SURVIVAL_DAYS_MAX,
    TUMOUR_SIZE_RANGE_MM,
)

SITE_FIELDS = ("site_liver", "site_lung", "site_peritoneum", "site_other", "site_unknown")


@dataclass(frozen=True)
class Problem:
    field: str
    message: str


def _in_range(value: Any, bounds: tuple[float, float]) -> bool:
    return value is None or bounds[0] <= value <= bounds[1]


def check_patient(values: Mapping[str, Any]) -> list[Problem]:
    """Return every rule the record breaks (empty when it is consistent)."""
    problems: list[Problem] = []
    get = values.get

    if not _in_range(get("age_at_diagnosis_years"), AGE_RANGE_YEARS):
        problems.append(
            Problem(
                "age_at_diagnosis_years",
                f"must be between {AGE_RANGE_YEARS[0]} and {AGE_RANGE_YEARS[1]} years",
            )
        )
    if not _in_range(get("tumour_size_mm"), TUMOUR_SIZE_RANGE_MM):
        problems.append(
            Problem(
                "tumour_size_mm",
                f"must be between {TUMOUR_SIZE_RANGE_MM[0]} and {TUMOUR_SIZE_RANGE_MM[1]} mm",
            )
        )
    if not _in_range(get("ca19_9_u_per_ml"), CA19_9_RANGE_U_PER_ML):
        problems.append(Problem("ca19_9_u_per_ml", "must be 0 or more (U/mL)"))
    for field in ("overall_survival_days", "days_to_metastasis"):
        days = get(field)
        if days is not None and days < 0:
            problems.append(Problem(field, "must be 0 or more days"))
        elif days is not None and days > SURVIVAL_DAYS_MAX:
            problems.append(Problem(field, f"must be at most {SURVIVAL_DAYS_MAX} days"))

    metastatic = get("metastasis_at_diagnosis")
    has_sites = any(get(site) for site in SITE_FIELDS)
    if has_sites and metastatic != "yes":
        problems.append(
            Problem(
                "metastasis_sites", "sites are allowed only when metastasis_at_diagnosis is yes"
            )
        )
    if get("metastasis_detection") and metastatic != "yes":
        problems.append(
            Problem(
                "metastasis_detection",
                "how metastasis was found is allowed only when metastasis_at_diagnosis is yes",
            )
        )
    if get("nccn_resectability") == "metastatic" and metastatic == "no":
        problems.append(
            Problem(
                "nccn_resectability",
                "metastatic resectability contradicts metastasis_at_diagnosis = no",
            )
        )

    developed = get("developed_metastasis") or ""
    if developed and metastatic != "no":
        problems.append(
            Problem(
                "developed_metastasis",
                "is recorded only for patients without metastasis at diagnosis",
            )
        )
    days_to = get("days_to_metastasis")
    if days_to is not None and developed != "yes":
        problems.append(
            Problem("days_to_metastasis", "is allowed only when developed_metastasis is yes")
        )
    survival = get("overall_survival_days")
    if days_to is not None and survival is not None and days_to > survival:
        problems.append(Problem("days_to_metastasis", "cannot be later than overall_survival_days"))
    if survival is not None and not get("vital_status"):
        problems.append(Problem("vital_status", "is required when overall_survival_days is given"))
    if get("vital_status") and survival is None:
        problems.append(Problem("overall_survival_days", "is required when vital_status is given"))
    return problems
