"""Writing the audit trail: one function, called by views, the API and jobs."""

from __future__ import annotations

from typing import Any

from .models import AuditEvent, acting_user


def record(
    user,
    action: str,
    *,
    cohort=None,
    patient=None,
    label: str = "",
    username: str = "",
    **detail: Any,
) -> None:
    """``username`` names who it was when there is no user (a failed login's typed name)."""
    AuditEvent.objects.create(
        user=acting_user(user),
        username=(username or getattr(user, "username", "") or "system")[:150],
        action=action,
        cohort=cohort if cohort is not None else getattr(patient, "cohort", None),
        patient=patient,
        object_label=label or (str(patient) if patient is not None else str(cohort or "")),
        detail=detail,
    )
