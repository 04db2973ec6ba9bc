"""Who asks: the user of a DICOMweb request, from the session cookie or an API token.

A viewer fetches frames by the hundred, each its own request, and Django's own lookup of the
session's user (the session row, then the user row, through the ORM) costs more than the rest
of a frame request. Here the session, its user and the user's cohort roles are read in one
plain SQL query, with the same checks as ``django.contrib.auth.get_user``; where those checks
cannot decide, Django's own path does.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import connection
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from rest_framework.exceptions import AuthenticationFailed

from pmpd_web.accounts.middleware import session_end_reason
from pmpd_web.accounts.models import Membership
from pmpd_web.accounts.permissions import remember_roles
from pmpd_web.accounts.tokens import ApiTokenAuthentication

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
DB_SESSIONS = "django.contrib.sessions.backends.db"
SESSIONS_REMEMBERED = 10_000

# Session key -> the user id its data held when last decoded: lets one query read the session
# with its user. Only a guess, checked against the session's data at every request.
_user_of_session: dict[str, object] = {}


def _session_rows(key: str, user_id) -> list[tuple]:
    """The unexpired session ``key`` joined with the user ``user_id`` (the user's columns
    null when there is no such user, or ``user_id`` is None) and each of its cohort roles."""
    User = get_user_model()  # noqa: N806 - a class
    quote = connection.ops.quote_name
    columns = ", ".join(f"u.{quote(field.column)}" for field in User._meta.concrete_fields)
    sql = (
        f"SELECT s.session_data, {columns}, m.cohort_id, m.role "  # noqa: S608 - model names
        f"FROM {quote(Session._meta.db_table)} s "
        f"LEFT JOIN {quote(User._meta.db_table)} u ON u.id = %s "
        f"LEFT JOIN {quote(Membership._meta.db_table)} m ON m.user_id = u.id "
        "WHERE s.session_key = %s AND s.expire_date > %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [user_id, key, timezone.now()])
        return cursor.fetchall()


def _session_user(request):
    """The user of the request's session as ``django.contrib.auth.get_user`` finds it (the
    session unexpired, the backend ModelBackend, the user active, the session's hash that of
    the user's password), its cohort roles given to ``can`` so that it asks no more. None
    where Django's own path must decide: no session cookie, another session engine or
    backend, a hash the current secret does not verify (a fallback secret may, and then
    Django rotates the session), a user gone."""
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    User = get_user_model()  # noqa: N806 - a class
    if not key or settings.SESSION_ENGINE != DB_SESSIONS or User._meta.label != "auth.User":
        return None
    guess = _user_of_session.get(key)
    rows = _session_rows(key, guess)
    if not rows:
        return None
    session = SessionStore().decode(rows[0][0])
    if session.get(BACKEND_SESSION_KEY) != MODEL_BACKEND or SESSION_KEY not in session:
        return None
    if session_end_reason(session) is not None:
        raise SessionEnded
    user_id = User._meta.pk.to_python(session[SESSION_KEY])
    if user_id != guess:
        if len(_user_of_session) >= SESSIONS_REMEMBERED:
            _user_of_session.clear()
        _user_of_session[key] = user_id
        rows = _session_rows(key, user_id)
        if not rows or SessionStore().decode(rows[0][0]).get(SESSION_KEY) != session[SESSION_KEY]:
            return None
    fields = User._meta.concrete_fields
    if rows[0][1] is None:  # the user is gone
        return None
    user = User.from_db(connection.alias, [f.attname for f in fields], rows[0][1:-2])
    verified = constant_time_compare(
        session.get(HASH_SESSION_KEY) or "", user.get_session_auth_hash()
    )
    if not verified or not user.is_active:
        return None
    remember_roles(user, {row[-2]: row[-1] for row in rows if row[-2] is not None})
    return user


class SessionEnded(Exception):
    """The session's idle or absolute timeout has passed."""


def authenticated_user(request):
    """The request's user (session or ``Authorization: Token ...``), or None. A session past
    its timeouts counts as none (the site's middleware leaves DICOMweb to this check)."""
    try:
        user = _session_user(request)
    except SessionEnded:
        return None
    if user is not None:
        return user
    if request.user.is_authenticated:
        return None if session_end_reason(request.session) else request.user
    if request.headers.get("Authorization", "").startswith("Token "):
        try:
            result = ApiTokenAuthentication().authenticate(request)
        except AuthenticationFailed:
            return None
        if result is not None:
            return result[0]
    return None
