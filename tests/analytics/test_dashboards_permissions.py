"""The permission table of the analytics: every page and endpoint, tried by every kind of user.

Expectations are written out by hand (not derived from ROLE_ACTIONS). Dashboards, downloads and
the analytics API need VIEW_ANALYTICS (statisticians); the patient risk view needs VIEW_RESULTS
(every role). Outsiders get 404 and learn nothing. One test per user walks the whole table, so
the analyses computed for the first page serve the others from the cache.
"""

from __future__ import annotations

import pytest
from factories import make_token_key
from rest_framework.test import APIClient
from scored import make_model_version, make_scored_cohort

pytestmark = pytest.mark.django_db

C, K, S = "coordinator", "clinician", "statistician"
EVERY_ROLE = {C, K, S}
Q = "cohort={cohort}&model_version={version}"

# (name, path template, roles allowed)
ENDPOINTS = [
    ("analytics home", "/analytics/?cohort={cohort}", {S}),
    ("evaluation page", "/analytics/evaluation/?" + Q, {S}),
    ("survival page", "/analytics/survival/?" + Q, {S}),
    ("cox page", "/analytics/cox/?" + Q, {S}),
    ("development page", "/analytics/development/?" + Q, {S}),
    ("subgroups page", "/analytics/subgroups/?" + Q, {S}),
    ("clinical survival page", "/analytics/survival/?cohort={cohort}&group=sex", {S}),
    ("figure data", "/analytics/survival/figures/km-risk-group.csv?" + Q, {S}),
    ("table csv", "/analytics/cox/tables/c-index.csv?" + Q, {S}),
    ("table xlsx", "/analytics/evaluation/tables/classification.xlsx?" + Q, {S}),
    ("provenance", "/analytics/survival/figures/km-risk-group/provenance.txt?" + Q, {S}),
    ("report", "/analytics/report.html?" + Q, {S}),
    ("tripod report", "/analytics/tripod.html?" + Q, {S}),
    ("tripod download", "/analytics/tripod.html?download=1&" + Q, {S}),
    ("patient risk page", "/cohorts/{cohort}/patients/SECRET-00001/risk/", EVERY_ROLE),
    ("api evaluation", "/api/analytics/evaluation/?" + Q, {S}),
    ("api survival", "/api/analytics/survival/?" + Q, {S}),
    ("api kaplan-meier", "/api/analytics/kaplan-meier/?cohort={cohort}&group=sex", {S}),
    ("api cox", "/api/analytics/cox/?" + Q, {S}),
    ("api development", "/api/analytics/development/?" + Q, {S}),
    ("api subgroups", "/api/analytics/subgroups/?" + Q, {S}),
    ("api analysis", "/api/analytics/analysis/?" + Q, {S}),
    (
        "api patient risk",
        "/api/analytics/cohorts/{cohort}/patients/SECRET-00001/risk/",
        EVERY_ROLE,
    ),
]

USERS = [C, K, S, "outsider", "nobody", "admin"]


@pytest.fixture
def world(cohort, members):
    version = make_model_version("pmpd-permissions")
    make_scored_cohort(cohort, version, 40, prefix="SECRET")
    return {"cohort": cohort.pk, "version": version.pk}


# Every user asks every dashboard in one case (seconds each): the fast loop asks the outsider.
@pytest.mark.sample(keep={"username": ["outsider"]}, cover=False)
@pytest.mark.parametrize("username", USERS)
def test_permission_table(world, members, username, cohort):
    client = APIClient()
    client.force_login(members[username])
    wrong = []
    for name, path, allowed in ENDPOINTS:
        url = path.format(**world)
        response = client.get(url)
        may = username == "admin" or username in allowed
        expected = 200 if may else 403 if username in EVERY_ROLE else 404
        if response.status_code != expected:
            wrong.append((name, response.status_code, expected))
        if not may:
            body = response.content
            if b"SECRET-" in body or cohort.name.encode() in body or b"Barcelona" in body:
                wrong.append((name, "leaks data", None))
    assert not wrong, wrong


def test_anonymous_is_sent_to_login_or_refused(world):
    client = APIClient()
    for _name, path, _allowed in ENDPOINTS:
        url = path.format(**world)
        response = client.get(url)
        if url.startswith("/api/"):
            assert response.status_code == 401, url
        else:
            assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_token_authentication_and_pooled_cohorts(world, members, other_cohort):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + make_token_key(members[S]))
    url = "/api/analytics/kaplan-meier/?cohort={cohort}&group=sex".format(**world)
    assert client.get(url).status_code == 200
    # Pooling a cohort the statistician is no member of is refused as if it did not exist.
    assert client.get(f"{url}&cohort={other_cohort.pk}").status_code == 404
    assert client.get(url.replace(str(world["cohort"]), "999999")).status_code == 404
    client.credentials(HTTP_AUTHORIZATION="Token wrong")
    assert client.get(url).status_code == 401
