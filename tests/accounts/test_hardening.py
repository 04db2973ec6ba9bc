"""Issue 9, items 11, 12, 13 and 15: no cohort-name oracle, NUL bytes and deep JSON refused
with 400, security headers and a closed API schema, idle and absolute session timeouts."""

from __future__ import annotations

import json
import time

import pytest
from factories import make_patient
from rest_framework.test import APIClient

from pmpd_web.accounts.middleware import LAST_SEEN, LOGIN_AT
from pmpd_web.cohorts.models import Cohort
from pmpd_web.jobs.models import Job

pytestmark = pytest.mark.django_db


# Item 11: the permission first, then the name.
@pytest.mark.parametrize("username", ["clinician", "statistician", "nobody"])
def test_creating_a_cohort_without_the_permission_reveals_no_names(members, cohort, username):
    api = APIClient()
    api.force_login(members[username])
    for name in (cohort.name, "A name nobody uses"):
        answer = api.post("/api/cohorts/", {"name": name, "role": "development"})
        assert answer.status_code == 403, (name, answer.content)
        assert b"already exists" not in answer.content
    page = APIClient()
    page.force_login(members[username])
    answer = page.post("/cohorts/new/", {"name": cohort.name, "role": "development"})
    assert answer.status_code == 403 and b"already exists" not in answer.content
    assert Cohort.objects.count() == 2


# Item 12: NUL bytes and deep JSON.
@pytest.fixture
def nul_urls(cohort):
    return [
        f"/api/cohorts/{cohort.pk}/image-series/?study_id=P%00",
        f"/api/cohorts/{cohort.pk}/patients/?centre=Madrid%00",
        "/dicomweb/studies?PatientID=P%00",
        "/dicomweb/studies?Modality=CT%00",
        f"/cohorts/{cohort.pk}/?centre=%00",
        f"/cohorts/{cohort.pk}/patients/P%00/",
    ]


def test_nul_bytes_in_the_query_or_address_are_refused(client_for, members, nul_urls):
    client = client_for(members["coordinator"])
    for url in nul_urls:
        answer = client.get(url)
        assert answer.status_code == 400, url
        message = answer.json()["detail"] if "json" in answer["Content-Type"] else answer.text
        assert "NUL character" in message, url
    assert "Query parameter 'study_id'" in client.get(nul_urls[0]).json()["detail"]


def test_nul_bytes_in_a_form_or_json_change_nothing(client_for, members, cohort):
    make_patient(cohort, "P-1", centre="Madrid")
    client = client_for(members["coordinator"])
    form = client.post(
        "/cohorts/new/",
        "name=Evil%00&role=development",
        content_type="application/x-www-form-urlencoded",
    )
    assert form.status_code == 400 and "Form field 'name'" in form.text
    # A multipart form's text fields meet Django's own refusal of NUL characters.
    multipart = client.post("/cohorts/new/", {"name": "Evil\x00", "role": "development"})
    assert "Null characters are not allowed" in multipart.text
    api = APIClient()
    api.force_login(members["coordinator"])
    answer = api.patch(
        f"/api/cohorts/{cohort.pk}/patients/P-1/", {"centre": "Ma\x00drid"}, format="json"
    )
    assert answer.status_code == 400
    assert "$['centre'] contains a NUL character" in answer.json()["detail"]
    assert cohort.patients.get().centre == "Madrid"
    assert not Cohort.objects.filter(name__startswith="Evil").exists()


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_json_is_refused(members, cohort, depth):
    api = APIClient()
    api.force_login(members["coordinator"])
    body = '{"description": ' + "[" * depth + "]" * depth + "}"
    answer = api.patch(f"/api/cohorts/{cohort.pk}/", body, content_type="application/json")
    assert answer.status_code == 400
    assert "nested deeper than 64 levels" in answer.json()["detail"]
    fine = api.patch(
        f"/api/cohorts/{cohort.pk}/",
        json.dumps({"description": "ok"}),
        content_type="application/json",
    )
    assert fine.status_code == 200


# Item 13: headers, and the API's schema and documentation behind the login.
def test_every_page_has_a_content_security_policy(client_for, members, cohort):
    client = client_for(members["coordinator"])
    for url in ("/", f"/cohorts/{cohort.pk}/", "/accounts/tokens/", "/api/docs/", "/api/redoc/"):
        answer = client.get(url)
        policy = answer["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy, url
        assert "camera=()" in answer["Permissions-Policy"], url
    login = APIClient().get("/accounts/login/")
    assert "default-src 'self'" in login["Content-Security-Policy"]


def test_the_viewer_has_its_own_policy(client_for, members, settings, tmp_path):
    settings.PMPD_OHIF_ROOT = tmp_path
    (tmp_path / "index.html").write_text(
        '<html><head><script>window.PUBLIC_URL="/ohif/"</script>'
        '<script src="/ohif/app.js"></script></head></html>'
    )
    answer = client_for(members["clinician"]).get("/ohif/viewer")
    policy = answer["Content-Security-Policy"]
    assert "'wasm-unsafe-eval'" in policy and "worker-src 'self' blob:" in policy
    assert "frame-ancestors 'self'" in policy
    # The inline script is allowed by its hash, nothing else inline.
    assert "'sha256-" in policy and policy.count("'sha256-") == 1
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]


@pytest.mark.slow
def test_schema_and_docs_need_a_login(client, members):
    assert APIClient().get("/api/schema/").status_code == 401
    for url in ("/api/docs/", "/api/redoc/", "/api/docs/?script="):
        answer = client.get(url)
        assert answer.status_code == 302 and "/accounts/login/" in answer["Location"], url
    client.force_login(members["nobody"])
    assert client.get("/api/schema/?format=json").status_code == 200
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and "javascript" in script["Content-Type"]


# Item 15: sessions.
def set_clock(client, **seconds_ago: int) -> None:
    session = client.session
    now = int(time.time())
    for key, ago in seconds_ago.items():
        session[{"login": LOGIN_AT, "seen": LAST_SEEN}[key]] = now - ago
    session.save()


def test_an_idle_session_is_logged_out(client, members, settings):
    settings.PMPD_SESSION_IDLE_SECONDS = 600
    client.force_login(members["clinician"])
    assert client.get("/").status_code == 200
    set_clock(client, login=700, seen=601)
    answer = client.get("/", follow=True)
    assert answer.redirect_chain[0][1] == 302 and "/accounts/login/" in answer.redirect_chain[0][0]
    assert "10 minutes without activity" in answer.content.decode()
    assert client.get("/").status_code == 302


def test_an_active_session_stays_and_its_clock_moves(client, members, settings):
    settings.PMPD_SESSION_IDLE_SECONDS = 600
    client.force_login(members["clinician"])
    set_clock(client, login=3000, seen=590)
    assert client.get("/").status_code == 200
    assert int(time.time()) - client.session[LAST_SEEN] < 5
    set_clock(client, login=3000, seen=590)
    assert client.get("/").status_code == 200


def test_a_session_ends_at_the_absolute_timeout_even_when_active(client, members, settings):
    settings.SESSION_COOKIE_AGE = 3600
    client.force_login(members["clinician"])
    set_clock(client, login=3601, seen=10)
    answer = client.get("/", follow=True)
    assert "60 minutes after login" in answer.content.decode()
    assert client.get("/").status_code == 302


def test_the_idle_timeout_applies_to_the_api_session_too(members, settings):
    settings.PMPD_SESSION_IDLE_SECONDS = 600
    api = APIClient()
    api.force_login(members["clinician"])
    set_clock(api, login=700, seen=601)
    assert api.get("/api/cohorts/").status_code in (401, 403)


def test_a_pages_own_polling_is_no_activity(client, members, cohort, settings):
    settings.PMPD_SESSION_IDLE_SECONDS = 600
    job = Job.objects.create(kind=Job.Kind.TABLE_IMPORT, cohort=cohort)
    client.force_login(members["clinician"])
    poll = {"HTTP_HX_REQUEST": "true", "HTTP_HX_CURRENT_URL": "http://testserver/cohorts/1/"}
    set_clock(client, login=900, seen=590)
    seen_before = client.session[LAST_SEEN]
    assert client.get(f"/jobs/{job.pk}/progress/", **poll).status_code == 200
    assert client.session[LAST_SEEN] == seen_before
    set_clock(client, login=900, seen=601)
    ended = client.get(f"/jobs/{job.pk}/progress/", **poll)
    assert ended.status_code == 204
    assert ended["HX-Redirect"] == "/accounts/login/?next=http%3A%2F%2Ftestserver%2Fcohorts%2F1%2F"
    assert client.get("/").status_code == 302
