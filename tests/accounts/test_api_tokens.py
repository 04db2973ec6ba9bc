"""API tokens and passwords (issue 9, item 8): hashed at rest, expiring, listed and revoked by
their owner only, revoked by a password change; the admins' command."""

from __future__ import annotations

import hashlib
import io
import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from factories import make_token_key
from rest_framework.test import APIClient

from pmpd_web.accounts.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db


def api_with(key: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api


def made_on_the_page(client, name: str = "notebook", days: int = 7) -> str:
    page = client.post("/accounts/tokens/", {"name": name, "days": days})
    assert page.status_code == 200
    return re.search(r'id="new-token-key">([^<]+)<', page.content.decode()).group(1)


@pytest.mark.slow
def test_a_token_made_on_the_page_is_shown_once_and_stored_as_a_digest(client_for, members):
    client = client_for(members["clinician"])
    key = made_on_the_page(client)
    token = ApiToken.objects.get(user=members["clinician"])
    assert token.key_digest == hashlib.sha256(key.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apitoken")
        assert not any(key in str(value) for row in cursor.fetchall() for value in row)
    assert timezone.now() + timedelta(days=6) < token.expires_at <= timezone.now() + timedelta(7)
    listing = client.get("/accounts/tokens/").content.decode()
    assert "notebook" in listing and token.key_prefix in listing and key not in listing
    assert api_with(key).get("/api/cohorts/").status_code == 200
    assert AuditEvent.objects.filter(action="create_api_token", username="clinician").exists()


def test_the_page_refuses_a_lifetime_beyond_the_limit(client_for, members, settings):
    settings.PMPD_API_TOKEN_MAX_DAYS = 30
    page = client_for(members["clinician"]).post("/accounts/tokens/", {"name": "x", "days": 31})
    assert "less than or equal to 30" in page.content.decode()
    assert not ApiToken.objects.exists()


def test_an_expired_token_is_refused(members):
    key = make_token_key(members["clinician"])
    api = api_with(key)
    assert api.get("/api/cohorts/").status_code == 200
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    refused = api.get("/api/cohorts/")
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]


@pytest.mark.slow
def test_the_owner_revokes_a_token(client_for, members):
    client = client_for(members["clinician"])
    key = made_on_the_page(client)
    token = ApiToken.objects.get()
    done = client.post(f"/accounts/tokens/{token.pk}/revoke/", follow=True)
    assert "revoked" in done.content.decode()
    assert api_with(key).get("/api/cohorts/").status_code == 401
    assert AuditEvent.objects.filter(action="revoke_api_token", username="clinician").exists()


@pytest.mark.parametrize("username", ["coordinator", "outsider", "nobody", "admin"])
def test_nobody_else_sees_or_revokes_a_users_token(client_for, members, username):
    key = make_token_key(members["clinician"])
    token = ApiToken.objects.get()
    client = client_for(members[username])
    assert token.name not in client.get("/accounts/tokens/").content.decode()
    assert client.post(f"/accounts/tokens/{token.pk}/revoke/").status_code == 404
    assert api_with(key).get("/api/cohorts/").status_code == 200


def test_account_pages_need_a_login(client, members):
    make_token_key(members["clinician"])
    token = ApiToken.objects.get()
    for method, url in (
        ("get", "/accounts/tokens/"),
        ("post", "/accounts/tokens/"),
        ("post", f"/accounts/tokens/{token.pk}/revoke/"),
        ("get", "/accounts/password/"),
    ):
        response = getattr(client, method)(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url
    assert client.get(f"/accounts/tokens/{token.pk}/revoke/").status_code == 302
    assert ApiToken.objects.exists()


def test_a_password_change_on_the_page_revokes_the_tokens(client, members):
    key = make_token_key(members["statistician"])
    client.force_login(members["statistician"])
    wrong = client.post(
        "/accounts/password/",
        {"old_password": "nope", "new_password1": "a-Long-new-pass-9", "new_password2": "x"},
    )
    assert wrong.status_code == 200 and api_with(key).get("/api/cohorts/").status_code == 200
    changed = client.post(
        "/accounts/password/",
        {
            "old_password": "pw-statistician",
            "new_password1": "a-Long-new-pass-9",
            "new_password2": "a-Long-new-pass-9",
        },
        follow=True,
    )
    assert "Password changed" in changed.content.decode()
    assert api_with(key).get("/api/cohorts/").status_code == 401
    assert not ApiToken.objects.exists()
    # This session stays logged in; the new password works.
    assert client.get("/").status_code == 200
    assert AuditEvent.objects.filter(action="password_change", username="statistician").exists()


def test_a_password_set_elsewhere_revokes_the_tokens_too(members):
    key = make_token_key(members["coordinator"])
    user = members["coordinator"]
    user.last_login = timezone.now()
    user.save(update_fields=["last_login"])
    user.first_name = "Ana"
    user.save()
    assert api_with(key).get("/api/cohorts/").status_code == 200
    user.set_password("another-Long-pass-3")
    user.save()
    assert api_with(key).get("/api/cohorts/").status_code == 401


def test_the_admins_command_makes_a_token(members):
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_token", "coordinator", "--days", "5", stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert key.startswith("pmpd_") and "valid until" in err.getvalue()
    assert api_with(key).get("/api/cohorts/").json()["count"] == 1
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        call_command("create_api_token", "ghost")
    with pytest.raises(CommandError, match="valid 1 to 90 days"):
        call_command("create_api_token", "coordinator", "--days", "400")
