"""The API's rate limits (settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]).

DRF's own classes read the rates once, at import; these read them when a request is counted,
so a changed setting (and a test's override) takes effect.
"""

from __future__ import annotations

from rest_framework.exceptions import Throttled
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle, UserRateThrottle


class _LiveRates:
    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES[self.scope]


class PerUserRateThrottle(_LiveRates, UserRateThrottle):
    """Requests of one logged-in user (session or token)."""


class WrongTokenThrottle(_LiveRates, SimpleRateThrottle):
    """Wrong API keys per client address: beyond the rate, every token request from that address
    is answered 429 until the window has passed, so keys cannot be guessed at speed."""

    scope = "token_failure"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def refuse_if_over(self, request) -> None:
        self.key = self.get_cache_key(request, None)
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        if len(self.history) >= self.num_requests:
            raise Throttled(
                wait=self.wait(),
                detail="Too many wrong API tokens from this address: wait before trying again.",
            )

    def count_failure(self) -> None:
        self.history.insert(0, self.now)
        self.cache.set(self.key, self.history, self.duration)
