"""Request guards of the whole site: session timeouts and NUL bytes (security headers:
``security_headers``)."""

from __future__ import annotations

import json
import time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpResponse
from django.shortcuts import resolve_url
from django.urls import Resolver404, resolve
from django.utils.http import urlencode

LOGIN_AT = "pmpd_login_at"
LAST_SEEN = "pmpd_last_seen"
# How often the last-seen time is written back: often enough for the idle timeout, rarely
# enough that a page's burst of requests does not save the session each time.
LAST_SEEN_RESOLUTION_SECONDS = 60
# What pages poll by themselves (htmx "every Ns"): not the user's activity.
POLLED_URL_NAMES = frozenset({"job-progress", "image-upload-status"})
# Answers of these paths are read by programs: their refusals are JSON.
MACHINE_PATHS = ("/api/", "/dicomweb/")


def session_end_reason(session, now: int | None = None) -> str | None:
    """Why a session has ended (its absolute or idle timeout passed), or None while it lasts.
    A session without a clock has not ended (the middleware starts one)."""
    now = int(time.time()) if now is None else now
    login_at, last_seen = session.get(LOGIN_AT), session.get(LAST_SEEN)
    if login_at is None or last_seen is None:
        return None
    idle = settings.PMPD_SESSION_IDLE_SECONDS
    if now - login_at > settings.SESSION_COOKIE_AGE:
        return f"Your session ended {settings.SESSION_COOKIE_AGE // 60} minutes after login"
    if now - last_seen > idle:
        return f"Your session ended after {idle // 60} minutes without activity"
    return None


def start_session_clock(session) -> None:
    now = int(time.time())
    session[LOGIN_AT] = now
    session[LAST_SEEN] = now


class SessionTimeoutMiddleware:
    """Logs out a session PMPD_SESSION_IDLE_SECONDS after its last request (the idle timeout)
    or SESSION_COOKIE_AGE after its login (the absolute timeout; saving the session would
    otherwise push the cookie's own expiry forward)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/dicomweb/"):
            # DICOMweb reads the session with its user in one query and applies the same
            # timeouts there (imaging.dicomweb_auth); a viewer's frame requests are no activity.
            return self.get_response(request)
        ended = request.user.is_authenticated and self._ended(request)
        if ended and request.headers.get("HX-Request") == "true":
            # A page's background request: send the whole page to the login, rather than the
            # login form into the part of the page being refreshed.
            page = request.headers.get("HX-Current-URL", "/")
            login = f"{resolve_url(settings.LOGIN_URL)}?{urlencode({'next': page})}"
            return HttpResponse(status=204, headers={"HX-Redirect": login})
        return self.get_response(request)

    def _ended(self, request) -> bool:
        session = request.session
        now = int(time.time())
        if session.get(LOGIN_AT) is None or session.get(LAST_SEEN) is None:
            start_session_clock(session)
            return False
        reason = session_end_reason(session, now)
        if reason is None:
            idle = settings.PMPD_SESSION_IDLE_SECONDS
            resolution = min(LAST_SEEN_RESOLUTION_SECONDS, max(1, idle // 10))
            if now - session[LAST_SEEN] >= resolution and not _is_poll(request):
                session[LAST_SEEN] = now
            return False
        logout(request)
        messages.info(request, f"{reason}: please log in again.")
        return True


def _is_poll(request) -> bool:
    """A page's own periodic refresh (htmx polling a job's progress), which is no activity of
    the user: a page left open on a long job would otherwise keep its session forever."""
    if request.method != "GET" or request.headers.get("HX-Request") != "true":
        return False
    try:
        return resolve(request.path_info).url_name in POLLED_URL_NAMES
    except Resolver404:
        return False


def _first_nul(pairs) -> str | None:
    for name, values in pairs:
        if "\x00" in name or any("\x00" in value for value in values):
            return name.replace("\x00", "\\0")
    return None


class RefuseNulBytesMiddleware:
    """A NUL character in the address, a query parameter or a form field is refused with 400
    before any view runs (PostgreSQL cannot store or compare it: it ended in a server error)."""

    FORM = "application/x-www-form-urlencoded"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "\x00" in request.path:
            return self._refuse(request, "The address contains a NUL character (%00).")
        name = _first_nul(request.GET.lists())
        if name is not None:
            return self._refuse(
                request, f"Query parameter '{name}' contains a NUL character (%00)."
            )
        if request.method == "POST" and request.content_type == self.FORM:
            name = _first_nul(request.POST.lists())
            if name is not None:
                return self._refuse(request, f"Form field '{name}' contains a NUL character.")
        return self.get_response(request)

    @staticmethod
    def _refuse(request, message: str) -> HttpResponse:
        if request.path.startswith(MACHINE_PATHS):
            return HttpResponse(
                json.dumps({"detail": message}), status=400, content_type="application/json"
            )
        return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
