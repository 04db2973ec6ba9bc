"""Queries the cohort pages and the API share: filtering, sorting, counts and completeness."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models import Count, Q, QuerySet

from .filters import PatientFilter
from .models import Patient
from .results import CALLS, RISK_GROUPS, CohortResults
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
# Sorted and filtered by the results of the model version the table shows (not database columns).
RESULT_SORTABLE = ("metastasis_risk_score", "call", "risk_group")


def filter_patients(queryset: QuerySet[Patient], params: Mapping[str, str]) -> QuerySet[Patient]:
    """The cohort page's patients: the API's filter (``filters.PatientFilter``), then its sort."""
    queryset = PatientFilter(params, queryset=queryset).qs
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


def with_results(
    patients: QuerySet[Patient], results: CohortResults | None, params: Mapping[str, str]
) -> QuerySet[Patient] | list[Patient]:
    """``patients`` filtered by call and risk group and sorted by a result column when asked;
    patients without a result sort last."""
    if results is None:
        return patients
    call, group = params.get("call"), params.get("risk_group")
    if call in CALLS or group in RISK_GROUPS:
        patients = patients.filter(
            study_id__in=[
                study_id
                for study_id, result in results.by_study_id.items()
                if call in (None, "", result.call) and group in (None, "", result.risk_group)
            ]
        )
    sort = params.get("sort", "study_id")
    key = sort.lstrip("-")
    if key not in RESULT_SORTABLE:
        return patients
    order = {
        "metastasis_risk_score": lambda r: r.metastasis_risk_score,
        "call": lambda r: CALLS.index(r.call),
        "risk_group": lambda r: RISK_GROUPS.index(r.risk_group),
    }[key]
    rows = list(patients.order_by("study_id"))
    scored = [p for p in rows if p.study_id in results.by_study_id]
    scored.sort(key=lambda p: order(results.by_study_id[p.study_id]), reverse=sort != key)
    return scored + [p for p in rows if p.study_id not in results.by_study_id]


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
