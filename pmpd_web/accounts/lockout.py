"""The login lockout (django-axes): the client's address, the lockout page, unlocking."""

from __future__ import annotations

import math

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from axes.utils import reset
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Max, Q, Sum
from django.shortcuts import render
from django.utils import timezone

from .audit import record
from .models import AuditAction


def client_address(request) -> str:
    """The client's address: REMOTE_ADDR, or, behind PMPD_TRUSTED_PROXIES reverse proxies, the
    address the outermost of them put in X-Forwarded-For (the same rule as the API's limits)."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.PMPD_TRUSTED_PROXIES
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies <= 0 or not forwarded:
        return remote
    addresses = [part.strip() for part in forwarded.split(",") if part.strip()]
    return addresses[-min(proxies, len(addresses))] if addresses else remote


class AccountAndAddressHandler(AxesDatabaseHandler):
    """django-axes' database handler with two limits: an account locks after AXES_FAILURE_LIMIT
    failures, an address after PMPD_LOGIN_ADDRESS_FAILURE_LIMIT failures of any usernames (set
    higher: a hospital's users often share one address, and one user's typos must not lock
    everyone there)."""

    def get_failures(self, request, credentials=None) -> int:
        # One queryset per AXES_LOCKOUT_PARAMETERS entry: username, then ip_address.
        by_username, by_address = (
            attempts.aggregate(n=Sum("failures_since_start"))["n"] or 0
            for attempts in self.get_user_attempts(request, credentials)
        )
        if by_address >= settings.PMPD_LOGIN_ADDRESS_FAILURE_LIMIT:
            return max(by_username, settings.AXES_FAILURE_LIMIT)
        return by_username


def minutes_left(*, username: str, address: str) -> int:
    """Whole minutes until the lockout of ``username`` or ``address`` ends (at least 1)."""
    cool_off = get_cool_off()
    last_failure = AccessAttempt.objects.filter(
        Q(username=username) | Q(ip_address=address),
        attempt_time__gte=timezone.now() - cool_off,
    ).aggregate(last=Max("attempt_time"))["last"]
    if last_failure is None:
        return 1
    seconds = (last_failure + cool_off - timezone.now()).total_seconds()
    return max(1, math.ceil(seconds / 60))


def lockout_response(request, original_response=None, credentials=None):
    """The login page again, status 429, saying why and for how long."""
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    wait = minutes_left(username=username, address=client_address(request))
    message = (
        f"Too many failed logins: logging in as this user or from this address is locked for "
        f"{wait} more minute{'s' if wait != 1 else ''}. A site administrator can unlock it "
        f"sooner."
    )
    form = AuthenticationForm(request, initial={"username": username})
    return render(
        request,
        "registration/login.html",
        {"form": form, "lockout_message": message, "next": request.POST.get("next", "")},
        status=429,
    )


def unlock(*, by, usernames: list[str]) -> int:
    """Clear the failed logins of ``usernames`` and of the addresses they failed from; audited.
    Returns how many records were cleared."""
    addresses = set(
        AccessAttempt.objects.filter(username__in=usernames).values_list("ip_address", flat=True)
    )
    cleared = sum(reset(username=name) for name in usernames)
    cleared += sum(reset(ip=address) for address in addresses if address)
    for name in usernames:
        record(by, AuditAction.LOGIN_UNLOCKED, label=name, unlocked=name)
    return cleared
