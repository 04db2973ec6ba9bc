"""The permission table: every page and API endpoint, tried by every kind of user.

Expectations are written out by hand (not derived from ROLE_ACTIONS), so a change of the role
map that is not also made here fails.
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from factories import make_patient, make_token_key
from permission_table import EVERY_ROLE, USERS, C, K, S, assert_answer_for
from rest_framework.test import APIClient
from tablemaker import NON_METASTATIC_ROW, to_csv

from pmpd_web.cohorts.importer import upload_table
from pmpd_web.cohorts.models import StudyVariable
from pmpd_web.jobs.models import Job

pytestmark = pytest.mark.django_db


# (name, method, path template, roles allowed)
ENDPOINTS = [
    ("cohort page", "get", "/cohorts/{cohort}/", EVERY_ROLE),
    ("patient page", "get", "/cohorts/{cohort}/patients/SECRET-42/", EVERY_ROLE),
    ("import page", "get", "/cohorts/{cohort}/import/", {C}),
    ("import upload", "post", "/cohorts/{cohort}/import/", {C}),
    ("import preview", "get", "/cohorts/{cohort}/import/{import}/", {C}),
    ("import commit", "post", "/cohorts/{cohort}/import/{import}/commit/", {C}),
    ("export csv", "get", "/cohorts/{cohort}/export.csv", {C, S}),
    ("export xlsx", "get", "/cohorts/{cohort}/export.xlsx", {C, S}),
    ("job progress", "get", "/jobs/{job}/progress/", EVERY_ROLE),
    ("api cohort", "get", "/api/cohorts/{cohort}/", EVERY_ROLE),
    ("api cohort edit", "patch", "/api/cohorts/{cohort}/", {C}),
    ("api export", "get", "/api/cohorts/{cohort}/export/", {C, S}),
    ("api patients", "get", "/api/cohorts/{cohort}/patients/", EVERY_ROLE),
    ("api patient", "get", "/api/cohorts/{cohort}/patients/SECRET-42/", EVERY_ROLE),
    ("api patient edit", "patch", "/api/cohorts/{cohort}/patients/SECRET-42/", {C}),
    ("api imports", "get", "/api/cohorts/{cohort}/imports/", {C}),
    ("api import upload", "post", "/api/cohorts/{cohort}/imports/", {C}),
    ("api import", "get", "/api/cohorts/{cohort}/imports/{import}/", {C}),
    ("api import commit", "post", "/api/cohorts/{cohort}/imports/{import}/commit/", {C}),
    ("api job", "get", "/api/jobs/{job}/", EVERY_ROLE),
    ("study variables", "get", "/cohorts/{cohort}/variables/", EVERY_ROLE),
    ("study variable define", "post", "/cohorts/{cohort}/variables/", {C}),
    ("study variable remove", "post", "/cohorts/{cohort}/variables/ecog/delete/", {C}),
    ("api study variables", "get", "/api/cohorts/{cohort}/variables/", EVERY_ROLE),
    ("api study variable define", "post", "/api/cohorts/{cohort}/variables/", {C}),
    ("api study variable", "get", "/api/cohorts/{cohort}/variables/ecog/", EVERY_ROLE),
    ("api study variable remove", "delete", "/api/cohorts/{cohort}/variables/ecog/", {C}),
    ("audit trail", "get", "/cohorts/{cohort}/audit/", {C}),
    ("audit trail csv", "get", "/cohorts/{cohort}/audit.csv", {C}),
]


@pytest.fixture
def world(cohort, members):
    make_patient(cohort, "SECRET-42", centre="Hidden centre")
    table_import = upload_table(
        cohort=cohort, user=members[C], data=to_csv([NON_METASTATIC_ROW]), filename="t.csv"
    )
    job = Job.objects.create(kind=Job.Kind.TABLE_IMPORT, cohort=cohort)
    StudyVariable.objects.create(
        cohort=cohort, name="ecog", label="ECOG", kind="choice", choices=["0", "1", "2"]
    )
    return {"cohort": cohort.pk, "import": table_import.pk, "job": job.pk}


def payload(name: str):
    if name in ("import upload", "api import upload"):
        key = "table" if name == "import upload" else "file"
        return {key: SimpleUploadedFile("t.csv", to_csv([NON_METASTATIC_ROW]))}, "multipart"
    if name == "api cohort edit":
        return {"description": "changed"}, "json"
    if name == "api patient edit":
        return {"centre": "Changed"}, "json"
    if name in ("study variable define", "api study variable define"):
        return {"name": "karnofsky", "label": "Karnofsky", "kind": "int"}, (
            "json" if name.startswith("api") else "multipart"
        )
    return None, None


@pytest.mark.sample(keep={"username": ["outsider"]})
@pytest.mark.parametrize("username", USERS)
@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_permission_table(world, members, username, name, method, path, allowed):
    client = APIClient()
    client.force_login(members[username])
    url = path.format(**world)
    data, fmt = payload(name)
    response = (
        getattr(client, method)(url, data, format=fmt) if data else getattr(client, method)(url)
    )
    may = assert_answer_for(username, allowed, response, url)
    if not may:
        body = response.content
        assert b"SECRET-42" not in body and b"Hidden centre" not in body


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_anonymous_is_sent_to_login_or_refused(world, name, method, path, allowed):
    client = APIClient()
    response = getattr(client, method)(path.format(**world))
    if path.startswith("/api/"):
        assert response.status_code == 401
    else:
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_lists_show_only_the_users_cohorts(world, members, other_cohort, cohort):
    client = APIClient()
    client.force_login(members["outsider"])
    names = [c["name"] for c in client.get("/api/cohorts/").json()["results"]]
    assert names == [other_cohort.name]
    page = client.get("/")
    assert other_cohort.name.encode() in page.content and cohort.name.encode() not in page.content
    jobs = client.get("/api/jobs/").json()
    assert jobs["count"] == 0


def test_token_authentication(world, members):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + make_token_key(members[K]))
    assert client.get(f"/api/cohorts/{world['cohort']}/patients/").json()["count"] == 1
    client.credentials(HTTP_AUTHORIZATION="Token wrong")
    assert client.get(f"/api/cohorts/{world['cohort']}/patients/").status_code == 401


def test_cohort_creation_needs_the_permission(members):
    client = APIClient()
    client.force_login(members[K])
    assert client.post("/api/cohorts/", {"name": "New"}).status_code == 403
    client.force_login(members[C])
    created = client.post("/api/cohorts/", {"name": "New", "role": "external_validation"})
    assert created.status_code == 201 and created.json()["my_role"] == "coordinator"


# Per-user account pages (never per cohort): every logged-in user reaches their own, anonymous
# visitors are sent to the login; another user's token is 404 (tests/accounts/test_api_tokens.py).
ACCOUNT_PAGES = [
    ("api tokens", "get", "/accounts/tokens/"),
    ("api token create", "post", "/accounts/tokens/"),
    ("api token revoke", "post", "/accounts/tokens/{token}/revoke/"),
    ("password change", "get", "/accounts/password/"),
]


@pytest.mark.sample(keep={"username": ["outsider"]})
@pytest.mark.parametrize("username", [*USERS, "anonymous"])
@pytest.mark.parametrize(
    ("name", "method", "path"), ACCOUNT_PAGES, ids=[p[0] for p in ACCOUNT_PAGES]
)
def test_account_pages_table(members, username, name, method, path):
    from pmpd_web.accounts.models import ApiToken

    client = APIClient()
    owner = members["nobody" if username == "anonymous" else username]
    make_token_key(owner)
    url = path.format(token=ApiToken.objects.get(user=owner).pk)
    if username != "anonymous":
        client.force_login(owner)
    data = {"name": "n", "days": 3} if name == "api token create" else None
    response = getattr(client, method)(url, data)
    if username == "anonymous":
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    else:
        assert response.status_code in (200, 302), (url, response.status_code)
        assert "/accounts/login" not in response.get("Location", "")


# Routes of no one cohort: what an anonymous visitor and a user of no cohort get. Lists answer
# 200 with only what the user may see (the tests above and the app tables check the content).
# Anonymous visitors: "login" (sent to the login page), or the status the API answers.
# (name, method, path, anonymous, user of no cohort)
SITE_ENDPOINTS = [
    ("cohort list", "get", "/", "login", 200),
    ("login page", "get", "/accounts/login/", 200, 200),
    ("logout", "post", "/accounts/logout/", 302, 302),
    ("roles help", "get", "/roles/", "login", 200),
    ("new cohort page", "get", "/cohorts/new/", "login", 403),
    ("template csv", "get", "/template.csv", "login", 200),
    ("template xlsx", "get", "/template.xlsx", "login", 200),
    ("model list", "get", "/models/", "login", 200),
    ("ohif viewer", "get", "/ohif/viewer", "login", 200),
    ("api root", "get", "/api/", 401, 200),
    ("api cohorts", "get", "/api/cohorts/", 401, 200),
    ("api cohort create", "post", "/api/cohorts/", 401, 403),
    ("api jobs", "get", "/api/jobs/", 401, 200),
    ("api model versions", "get", "/api/model-versions/", 401, 200),
    ("api schema", "get", "/api/schema/", 401, 200),
    ("api docs", "get", "/api/docs/", "login", 200),
    ("api redoc", "get", "/api/redoc/", "login", 200),
    ("api redoc bundle", "get", "/api/redoc/redoc.standalone.js", "login", 200),
]


@pytest.fixture
def ohif_build(settings, tmp_path):
    root = tmp_path / "ohif"
    root.mkdir()
    (root / "index.html").write_text("<html><body>OHIF</body></html>")
    settings.PMPD_OHIF_ROOT = root
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "method", "path", "anonymous", "nobody"),
    SITE_ENDPOINTS,
    ids=[e[0] for e in SITE_ENDPOINTS],
)
def test_site_permission_table(world, members, ohif_build, name, method, path, anonymous, nobody):
    for user, expected in ((None, anonymous), (members["nobody"], nobody)):
        client = APIClient()
        if user is not None:
            client.force_login(user)
        data = {"name": "New", "role": "external_validation"} if name.endswith("create") else None
        response = getattr(client, method)(path, data, format="json" if data else None)
        if expected == "login":
            assert response.status_code == 302, (name, response.status_code)
            assert "/accounts/login/" in response["Location"]
        elif expected is not None:
            assert response.status_code == expected, (name, user, response.status_code)
        body = response.content if not response.streaming else b""
        assert b"SECRET-42" not in body and b"Hidden centre" not in body
