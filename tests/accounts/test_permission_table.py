"""The permission table: every page and API endpoint, tried by every kind of user.

Expectations are written out by hand (not derived from ROLE_ACTIONS), so a change of the role
map that is not also made here fails.
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from factories import make_patient
from permission_table import EVERY_ROLE, USERS, C, K, S, assert_answer_for
from rest_framework.test import APIClient
from tablemaker import NON_METASTATIC_ROW, to_csv

from pmpd_web.cohorts.importer import upload_table
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
    return {"cohort": cohort.pk, "import": table_import.pk, "job": job.pk}


def payload(name: str):
    if name in ("import upload", "api import upload"):
        key = "table" if name == "import upload" else "file"
        return {key: SimpleUploadedFile("t.csv", to_csv([NON_METASTATIC_ROW]))}, "multipart"
    if name == "api cohort edit":
        return {"description": "changed"}, "json"
    if name == "api patient edit":
        return {"centre": "Changed"}, "json"
    return None, None


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
    from rest_framework.authtoken.models import Token

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + Token.objects.create(user=members[K]).key)
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
