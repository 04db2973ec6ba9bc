"""The one permission check: every page and endpoint asks ``can(user, cohort, action)``.

A user sees a cohort only through a membership; the role decides what they may do there. Site
administrators (superusers) may do everything.
"""

from __future__ import annotations

import enum

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from .models import Membership, Role


class Action(enum.StrEnum):
    VIEW_COHORT = "view_cohort"
    VIEW_PATIENTS = "view_patients"
    VIEW_RESULTS = "view_results"
    VIEW_IMAGES = "view_images"
    VIEW_ANALYTICS = "view_analytics"
    EDIT_DATA = "edit_data"
    EXPORT_TABLE = "export_table"
    RUN_JOBS = "run_jobs"
    VIEW_AUDIT = "view_audit"
    # Correct and approve pancreas and tumour masks (coordinators and readers).
    ANNOTATE = "annotate"


ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    Role.COORDINATOR: frozenset(
        {
            Action.VIEW_COHORT,
            Action.VIEW_PATIENTS,
            Action.VIEW_RESULTS,
            Action.VIEW_IMAGES,
            Action.EDIT_DATA,
            Action.EXPORT_TABLE,
            Action.RUN_JOBS,
            Action.VIEW_AUDIT,
            Action.ANNOTATE,
        }
    ),
    Role.CLINICIAN: frozenset(
        {Action.VIEW_COHORT, Action.VIEW_PATIENTS, Action.VIEW_RESULTS, Action.VIEW_IMAGES}
    ),
    Role.STATISTICIAN: frozenset(
        {
            Action.VIEW_COHORT,
            Action.VIEW_PATIENTS,
            Action.VIEW_RESULTS,
            Action.VIEW_ANALYTICS,
            Action.EXPORT_TABLE,
        }
    ),
    Role.READER: frozenset(
        {Action.VIEW_COHORT, Action.VIEW_PATIENTS, Action.VIEW_IMAGES, Action.ANNOTATE}
    ),
}


def role_of(user: AbstractBaseUser | AnonymousUser, cohort_id: int) -> str | None:
    if not user.is_authenticated:
        return None
    cache = user.__dict__.setdefault("_pmpd_roles", {})
    if cohort_id not in cache:
        cache[cohort_id] = (
            Membership.objects.filter(user_id=user.pk, cohort_id=cohort_id)
            .values_list("role", flat=True)
            .first()
        )
    return cache[cohort_id]


def remember_roles(user: AbstractBaseUser, roles: dict[int, str]) -> None:
    """Give ``user`` its roles (cohort id -> role) read together with it, so that ``can`` needs
    no query of its own for those cohorts in this request."""
    user.__dict__.setdefault("_pmpd_roles", {}).update(roles)


def can(user: AbstractBaseUser | AnonymousUser, cohort, action: Action) -> bool:
    """Whether ``user`` may do ``action`` in ``cohort`` (a Cohort or its primary key)."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    cohort_id = cohort if isinstance(cohort, int) else cohort.pk
    role = role_of(user, cohort_id)
    return role is not None and action in ROLE_ACTIONS[role]


def require(user, cohort, action: Action) -> None:
    """Pages: 404 for outsiders (the cohort's existence is not revealed); PermissionDenied (403)
    for members whose role lacks the action (they know the cohort exists)."""
    from django.core.exceptions import PermissionDenied

    if can(user, cohort, action):
        return
    cohort_id = cohort if isinstance(cohort, int) else cohort.pk
    if user.is_authenticated and role_of(user, cohort_id) is not None:
        raise PermissionDenied(f"Your role in this cohort does not allow: {action.value}.")
    raise Http404("No such cohort.")


def visible_cohorts(user, queryset: QuerySet, action: Action = Action.VIEW_COHORT) -> QuerySet:
    """The cohorts of ``queryset`` in which ``user`` may do ``action``."""
    if not user.is_authenticated:
        return queryset.none()
    if user.is_superuser:
        return queryset
    roles = [role for role, actions in ROLE_ACTIONS.items() if action in actions]
    return queryset.filter(memberships__user=user, memberships__role__in=roles).distinct()


def api_check(user, cohort_id: int, action: Action) -> None:
    """The API face of the same check: 404 for outsiders, 403 for a member lacking the role."""
    from rest_framework.exceptions import NotFound
    from rest_framework.exceptions import PermissionDenied as ApiPermissionDenied

    if can(user, cohort_id, action):
        return
    if role_of(user, cohort_id) is not None:
        raise ApiPermissionDenied(f"Your role in this cohort does not allow: {action.value}.")
    raise NotFound("No such cohort.")
