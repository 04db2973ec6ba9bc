"""Queries the cohort pages and the API share: filtering, sorting, counts and completeness."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models import Count, Q, QuerySet

from .models import Patient
from .table import COLUMNS

SORTABLE = (
    "study_id",
    "age_at_diagnosis_years",
    "sex",
    "centre",
    "tumour_location",
    "tumour_size_mm",
    "ca19_9_u_per_ml",
    "nccn_resectability",
    "metastasis_at_diagnosis",
    "overall_survival_days",
    "vital_status",
)
FILTERABLE_CHOICES = (
    "sex",
    "tumour_location",
    "nccn_resectability",
    "metastasis_at_diagnosis",
    "vital_status",
    "centre",
)


def filter_patients(queryset: QuerySet[Patient], params: Mapping[str, str]) -> QuerySet[Patient]:
    for name in FILTERABLE_CHOICES:
        value = params.get(name)
        if value:
            queryset = queryset.filter(**{name: value})
    if params.get("q"):
        queryset = queryset.filter(study_id__icontains=params["q"].strip())
    site = params.get("site")
    if site in {"liver", "lung", "peritoneum", "other", "unknown"}:
        queryset = queryset.filter(**{f"site_{site}": True})
    sort = params.get("sort", "study_id")
    if sort.lstrip("-") in SORTABLE:
        queryset = queryset.order_by(sort, "study_id")
    return queryset


# Variables recorded only for some patients (the consistency rules of rules.py): their
# completeness counts those patients only.
APPLIES_WHEN = {
    "metastasis_sites": Q(metastasis_at_diagnosis="yes"),
    "metastasis_detection": Q(metastasis_at_diagnosis="yes"),
    "developed_metastasis": Q(metastasis_at_diagnosis="no"),
    "days_to_metastasis": Q(developed_metastasis="yes"),
}


def completeness(queryset: QuerySet[Patient]) -> tuple[int, list[dict[str, Any]]]:
    """How many patients, and for each template variable how many of the patients it applies
    to have a value (one query)."""
    aggregates: dict[str, Any] = {"n": Count("id")}
    for column in COLUMNS:
        if column.name == "study_id":
            continue
        if column.kind == "sites":
            condition = (
                Q(site_liver=True)
                | Q(site_lung=True)
                | Q(site_peritoneum=True)
                | Q(site_other=True)
                | Q(site_unknown=True)
            )
        elif column.kind in {"int", "decimal"}:
            condition = Q(**{f"{column.name}__isnull": False})
        else:
            condition = ~Q(**{column.name: ""})
        applies = APPLIES_WHEN.get(column.name)
        if applies is not None:
            condition &= applies
            aggregates[f"eligible_{column.name}"] = Count("id", filter=applies)
        # Aliases never equal a field name: a filter naming the field would read the alias.
        aggregates[f"filled_{column.name}"] = Count("id", filter=condition)
    counts = queryset.aggregate(**aggregates)
    total = counts.pop("n")
    rows = []
    for alias, filled in counts.items():
        if not alias.startswith("filled_"):
            continue
        name = alias.removeprefix("filled_")
        eligible = counts.get(f"eligible_{name}", total)
        rows.append(
            {
                "column": name,
                "filled": filled,
                "eligible": eligible,
                "applies_to_some": name in APPLIES_WHEN,
                "percent": round(100 * filled / eligible, 1) if eligible else 0.0,
            }
        )
    return total, rows


def counts_by(queryset: QuerySet[Patient], field: str) -> list[dict[str, Any]]:
    return list(queryset.order_by().values(field).annotate(n=Count("id")).order_by(field))
