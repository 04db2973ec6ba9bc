"""Brute force (issue 9, item 1): the login lockout, its audit rows, unlocking, API rate limits."""

from __future__ import annotations

import pytest
from django.test import Client
from factories import make_token_key
from rest_framework.test import APIClient

from pmpd_web.accounts.models import AuditEvent

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


@pytest.fixture
def limit(settings):
    settings.AXES_FAILURE_LIMIT = 3
    settings.PMPD_LOGIN_ADDRESS_FAILURE_LIMIT = 5
    return 3


def log_in(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_wrong_passwords_lock_the_account_with_the_wait_time(client, members, limit):
    answers = [log_in(client, "clinician", "guess").status_code for _ in range(limit)]
    assert answers == [200] * (limit - 1) + [429]
    refused = log_in(client, "clinician", "pw-clinician")
    assert refused.status_code == 429
    html = refused.content.decode()
    assert "Too many failed logins" in html and "locked for 15 more minutes" in html
    assert "_auth_user_id" not in client.session
    # The lock holds for the account from another address too.
    other = Client()
    assert log_in(other, "clinician", "pw-clinician", address="10.9.9.9").status_code == 429


@pytest.mark.slow
def test_one_address_is_locked_whatever_the_usernames(client, members, limit):
    # The address's own, higher limit: users behind one address do not lock each other out
    # at the first few typos.
    for name in ("coordinator", "statistician", "admin", "outsider"):
        assert log_in(client, name, "guess", address="10.1.1.1").status_code == 200
    assert log_in(client, "clinician", "guess", address="10.1.1.1").status_code == 429
    assert log_in(client, "nobody", "pw-nobody", address="10.1.1.1").status_code == 429
    assert log_in(Client(), "nobody", "pw-nobody", address="10.2.2.2").status_code == 302


def test_failed_and_locked_logins_are_audited(client, members, limit):
    for _ in range(limit):
        log_in(client, "clinician", "guess")
    log_in(client, "clinician", "pw-clinician")
    events = AuditEvent.objects.filter(username="clinician")
    assert events.filter(action="login_failed").count() == limit + 1
    assert events.filter(action="login_locked_out").exists()
    assert not events.filter(action="login").exists()
    assert events.filter(action="login_failed").first().detail == {"address": "10.0.0.1"}


def test_a_success_before_the_limit_clears_the_count(client, members, limit):
    for _ in range(limit - 1):
        log_in(client, "clinician", "guess")
    assert log_in(client, "clinician", "pw-clinician").status_code == 302
    client.post("/accounts/logout/")
    for _ in range(limit - 1):
        log_in(client, "clinician", "guess")
    assert log_in(client, "clinician", "pw-clinician").status_code == 302


def test_logging_in_to_ones_own_account_does_not_reset_anothers_count(client, members, limit):
    for _ in range(limit - 1):
        log_in(client, "clinician", "guess")
        assert log_in(Client(), "nobody", "pw-nobody").status_code == 302
    assert log_in(client, "clinician", "guess").status_code == 429
    assert log_in(client, "clinician", "pw-clinician", address="10.7.7.7").status_code == 429


@pytest.mark.slow
def test_admin_unlocks_a_locked_user(client, members, limit):
    for _ in range(limit):
        log_in(client, "clinician", "guess")
    assert log_in(client, "clinician", "pw-clinician").status_code == 429
    admin = Client()
    admin.force_login(members["admin"])
    done = admin.post(
        "/admin/auth/user/",
        {"action": "unlock_logins", "_selected_action": [members["clinician"].pk]},
        follow=True,
    )
    assert "Unlocked: clinician." in done.content.decode()
    assert AuditEvent.objects.filter(action="login_unlocked", object_label="clinician").exists()
    assert log_in(client, "clinician", "pw-clinician").status_code == 302


def test_wrong_api_tokens_are_slowed_down(members, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
            "token_failure": "5/minute",
        },
    }
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token pmpd_guess")
    answers = [api.get("/api/cohorts/").status_code for _ in range(6)]
    assert answers == [401] * 5 + [429]
    # The right key from the same address waits too: guessing cannot go on at speed.
    api.credentials(HTTP_AUTHORIZATION="Token " + make_token_key(members["clinician"]))
    throttled = api.get("/api/cohorts/")
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) > 0
    assert "Too many wrong API tokens" in throttled.json()["detail"]
    # DICOMweb reads the same key, and the same counter.
    dicomweb = Client().get("/dicomweb/studies", HTTP_AUTHORIZATION="Token pmpd_guess")
    assert dicomweb.status_code == 429
    # Another address is not held up.
    other = APIClient(REMOTE_ADDR="10.3.3.3")
    other.credentials(HTTP_AUTHORIZATION="Token " + make_token_key(members["clinician"]))
    assert other.get("/api/cohorts/").status_code == 200


def test_per_user_api_rate(members, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {
            **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
            "user": "3/minute",
        },
    }
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token " + make_token_key(members["clinician"]))
    assert [api.get("/api/cohorts/").status_code for _ in range(4)] == [200, 200, 200, 429]
    # The session of the same user shares the count.
    browser = APIClient()
    browser.force_login(members["clinician"])
    assert browser.get("/api/cohorts/").status_code == 429
    other = APIClient()
    other.force_login(members["statistician"])
    assert other.get("/api/cohorts/").status_code == 200
