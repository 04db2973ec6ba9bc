"""The DICOMweb permission table: every /dicomweb/ route, tried by every kind of user (the style
of tests/accounts/test_permission_table.py).

Expectations are written out by hand: coordinators and clinicians of the cohort read its
images; statisticians, outsiders and users of no cohort search and find nothing (an empty
answer, so a search does not tell which studies exist) and retrieve nothing (404); anonymous
requests get 401.
"""

from __future__ import annotations

import pytest
from dicom_fixtures import add_imaged_patient
from django.core.cache import cache
from factories import make_patient
from permission_table import USERS, C, K
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

STUDY = "/dicomweb/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{sop}"

# (name, kind, path template, roles allowed); kind "search" answers empty, "retrieve" 404.
ENDPOINTS = [
    ("search studies", "search", "/dicomweb/studies?PatientID=SECRET-42"),
    ("search all series", "search", "/dicomweb/series?Modality=CT"),
    ("search all instances", "search", "/dicomweb/instances?SeriesInstanceUID={series}"),
    ("study", "retrieve", STUDY),
    ("study metadata", "retrieve", STUDY + "/metadata"),
    ("study series", "search", STUDY + "/series"),
    ("study instances", "search", STUDY + "/instances"),
    ("series", "retrieve", SERIES),
    ("series metadata", "retrieve", SERIES + "/metadata"),
    ("series instances", "search", SERIES + "/instances"),
    ("instance", "retrieve", INSTANCE),
    ("instance metadata", "retrieve", INSTANCE + "/metadata"),
    ("frames", "retrieve", INSTANCE + "/frames/1"),
    ("bulkdata", "retrieve", INSTANCE + "/bulkdata/7FE00010"),
]
ALLOWED = {C, K}
ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture
def world(cohort, tmp_path):
    cache.clear()
    imaged = add_imaged_patient(make_patient(cohort, "SECRET-42"), folder=tmp_path, index=1)
    return {
        "study": imaged.study.study_instance_uid,
        "series": imaged.ct.series_instance_uid,
        "sop": imaged.ct.instances.first().sop_instance_uid,
    }


def get(client: APIClient, name: str, url: str):
    accept = ACCEPT if name in ("frames", "bulkdata") else "*/*"
    return client.get(url, HTTP_ACCEPT=accept)


@pytest.mark.parametrize("username", USERS)
def test_dicomweb_permission_table(world, members, username):
    client = APIClient()
    client.force_login(members[username])
    may = username == "admin" or username in ALLOWED
    wrong = []
    for name, kind, path in ENDPOINTS:
        response = get(client, name, path.format(**world))
        body = b"".join(response.streaming_content) if response.streaming else response.content
        if may:
            ok = response.status_code == 200 and len(body) > 2
        elif kind == "search":
            ok = response.status_code in (200, 204) and body.strip() in (b"", b"[]")
        else:
            ok = response.status_code == 404
        if not may and (b"SECRET-42" in body or world["series"].encode() in body):
            ok = False
        if not ok:
            wrong.append((name, response.status_code, body[:80]))
    assert not wrong, wrong


def test_anonymous_gets_401_everywhere(world):
    client = APIClient()
    for name, _kind, path in ENDPOINTS:
        response = get(client, name, path.format(**world))
        assert response.status_code == 401, name
        assert b"SECRET-42" not in response.content
