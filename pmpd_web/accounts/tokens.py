"""API tokens: made, looked up by digest, expired, revoked; wrong keys are rate-limited.

``ApiTokenAuthentication`` serves the REST API (settings.REST_FRAMEWORK) and DICOMweb
(pmpd_web.imaging.dicomweb) alike, with the header ``Authorization: Token <key>``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from .models import ApiToken
from .throttles import WrongTokenThrottle

KEY_PREFIX = "pmpd_"
# last_used_at is written at most this often per token: one write per request would be many.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    key: str  # shown once, never stored


def create_token(user, *, name: str, days: int) -> NewToken:
    """A new token for ``user``, valid ``days`` days (1..PMPD_API_TOKEN_MAX_DAYS)."""
    if not 1 <= days <= settings.PMPD_API_TOKEN_MAX_DAYS:
        raise ValueError(
            f"A token is valid 1 to {settings.PMPD_API_TOKEN_MAX_DAYS} days, not {days}."
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        key_digest=digest(key),
        key_prefix=key[: len(KEY_PREFIX) + 4],
        expires_at=timezone.now() + timedelta(days=days),
    )
    return NewToken(token=token, key=key)


def revoke_all(user) -> int:
    """Delete every token of ``user`` (on a password change); returns how many."""
    deleted, _ = ApiToken.objects.filter(user=user).delete()
    return deleted


class ApiTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>`` against the stored digests; expired keys are refused."""

    def authenticate(self, request):
        self._request = request
        return super().authenticate(request)

    def authenticate_credentials(self, key):
        throttle = WrongTokenThrottle()
        throttle.refuse_if_over(self._request)
        token = (
            ApiToken.objects.select_related("user")
            .filter(key_digest=digest(key), expires_at__gt=timezone.now())
            .first()
        )
        if token is None or not token.user.is_active:
            throttle.count_failure()
            raise AuthenticationFailed("Invalid or expired token.")
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token
