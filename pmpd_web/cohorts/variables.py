"""Study-defined variables: defining and removing them, the same for the page and the API.

Defining or removing a variable changes the cohort's table (its template, its import, what the
analytics offer), so both bump the cohort's data version and are recorded in the audit trail.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction

from .models import Cohort, Patient, StudyVariable

FIELDS = ("name", "label", "kind", "unit", "minimum", "maximum", "choices", "required")


def parse_choices(text: str) -> list[str]:
    """Allowed values typed as 'a, b, c' (or one per line)."""
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def define_variable(*, cohort: Cohort, user: Any, values: dict[str, Any]) -> StudyVariable:
    """Check and store a new study variable; raises ``ValidationError`` naming each field."""
    variable = StudyVariable(cohort=cohort, **{k: v for k, v in values.items() if k in FIELDS})
    variable.full_clean()
    with transaction.atomic():
        variable.save()
        cohort.bump_data_version()
        audit(
            user,
            AuditAction.CHANGE_COHORT,
            cohort=cohort,
            label=f"defined study variable {variable.name}",
            variable=variable.name,
            kind=variable.kind,
        )
    return variable


def remove_variable(*, variable: StudyVariable, user: Any) -> int:
    """Remove a study variable and its values from every patient; returns how many patients
    had a value."""
    cohort = variable.cohort
    with transaction.atomic():
        holders = list(
            Patient.objects.select_for_update()
            .filter(cohort=cohort, study_values__has_key=variable.name)
            .only("pk", "study_values")
        )
        for patient in holders:
            patient.study_values.pop(variable.name, None)
        Patient.objects.bulk_update(holders, ["study_values"], batch_size=1000)
        variable.delete()
        cohort.bump_data_version()
        audit(
            user,
            AuditAction.CHANGE_COHORT,
            cohort=cohort,
            label=f"removed study variable {variable.name}",
            variable=variable.name,
            values_removed=len(holders),
        )
    return len(holders)


def errors_of(error: ValidationError) -> dict[str, list[str]]:
    return error.message_dict if hasattr(error, "error_dict") else {"__all__": error.messages}
