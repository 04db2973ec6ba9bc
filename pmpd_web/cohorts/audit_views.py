"""A cohort's audit trail for its coordinators: who viewed, imported, uploaded, trained and
exported what, filtered by user, action and date, and exported as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time

from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone

from pmpd_web.accounts.models import AuditAction, AuditEvent
from pmpd_web.accounts.permissions import Action

from .decorators import cohort_page

PAGE_SIZE = 100


def _day(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def filtered_events(cohort, params) -> tuple[QuerySet[AuditEvent], list[str]]:
    """The cohort's events matching the filters, and a message for each filter not understood."""
    events = AuditEvent.objects.filter(cohort=cohort)
    problems = []
    if params.get("user"):
        events = events.filter(username=params["user"])
    action = params.get("action")
    if action:
        if action in AuditAction.values:
            events = events.filter(action=action)
        else:
            problems.append(f"Unknown action \u201c{action}\u201d: showing every action.")
    for name, lookup, clock in (("from", "at__gte", time.min), ("to", "at__lte", time.max)):
        text = params.get(name)
        day = _day(text)
        if text and day is None:
            problems.append(
                f"{name.capitalize()} date \u201c{text}\u201d is not a date (YYYY-MM-DD)."
            )
        elif day is not None:
            moment = timezone.make_aware(datetime.combine(day, clock))
            events = events.filter(**{lookup: moment})
    return events.order_by("-at", "-id"), problems


@cohort_page(Action.VIEW_AUDIT)
def cohort_audit(request, cohort):
    events, problems = filtered_events(cohort, request.GET)
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "accounts/audit.html",
        {
            "cohort": cohort,
            "page": page,
            "problems": problems,
            "params": request.GET,
            "query": query.urlencode(),
            "actions": AuditAction.choices,
            "usernames": AuditEvent.objects.filter(cohort=cohort)
            .order_by("username")
            .values_list("username", flat=True)
            .distinct(),
        },
    )


@cohort_page(Action.VIEW_AUDIT)
def cohort_audit_csv(request, cohort):
    events, _ = filtered_events(cohort, request.GET)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["time_utc", "user", "action", "object", "detail"])
    for event in events.iterator():
        writer.writerow(
            [
                event.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                event.username,
                event.get_action_display(),
                event.object_label,
                "; ".join(f"{k}={v}" for k, v in sorted(event.detail.items())),
            ]
        )
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="audit-cohort-{cohort.pk}-{stamp}.csv"'
    return response
