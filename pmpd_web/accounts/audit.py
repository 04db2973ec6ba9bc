"""Writing the audit trail: one function, called by views, the API and jobs."""

from __future__ import annotations

from typing import Any

from .models import AuditEvent


def record(user, action: str, *, cohort=None, patient=None, label: str = "", **detail: Any) -> None:
    AuditEvent.objects.create(
        user=user if getattr(user, "is_authenticated", False) else None,
        username=getattr(user, "username", "") or "system",
        action=action,
        cohort=cohort if cohort is not None else getattr(patient, "cohort", None),
        patient=patient,
        object_label=label or (str(patient) if patient is not None else str(cohort or "")),
        detail=detail,
    )
