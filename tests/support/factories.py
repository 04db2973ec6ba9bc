"""Factories for the Django models used by the tests."""

from __future__ import annotations

from django.contrib.auth.models import Permission, User

from pmpd_web.cohorts.models import Cohort, Patient


def make_user(username: str, *, can_create_cohorts: bool = False, **extra) -> User:
    user = User.objects.create_user(username, password="pw-" + username, **extra)
    if can_create_cohorts:
        user.user_permissions.add(Permission.objects.get(codename="add_cohort"))
    return user


def make_cohort(name: str = "PanGenEU-like", **extra) -> Cohort:
    return Cohort.objects.create(name=name, centres="Madrid, Barcelona", **extra)


def make_patient(cohort: Cohort, study_id: str, **extra) -> Patient:
    values = {
        "age_at_diagnosis_years": 66,
        "sex": "female",
        "centre": "Madrid",
        "tumour_location": "head",
        "metastasis_at_diagnosis": "no",
        "overall_survival_days": 400,
        "vital_status": "dead",
    }
    values.update(extra)
    return Patient.objects.create(cohort=cohort, study_id=study_id, **values)


def make_token_key(user: User, *, days: int = 30) -> str:
    """A new API token of ``user``; returns the key (as the "API tokens" page shows it once)."""
    from pmpd_web.accounts.tokens import create_token

    return create_token(user, name="test", days=days).key
