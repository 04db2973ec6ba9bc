"""The DICOMweb permission table: every route under /dicomweb, tried by every kind of user.

DICOMweb answers differ from the pages' (tests/support/permission_table.py): clients such as
OHIF cannot show a 403, and a refusal must not tell which studies exist. So users who may view
the cohort's images (coordinators, clinicians, the site admin) get the answer; everyone else
gets an empty search or 404, whatever the reason; anonymous requests get 401.
"""

from __future__ import annotations

import pytest
from dicom_fixtures import add_imaged_patient
from django.urls import reverse
from factories import make_patient
from permission_table import USERS, C, K

from pmpd_web.imaging import dicomweb, dicomweb_auth, dicomweb_urls

pytestmark = pytest.mark.django_db

SEARCH = "search"
RETRIEVE = "retrieve"
FRAME = "multipart/related; type=application/octet-stream; transfer-syntax=*"

# (route name, what it does, the path's parts, Accept)
ROUTES = [
    ("dicomweb-studies", SEARCH, (), None),
    ("dicomweb-all-series", SEARCH, (), None),
    ("dicomweb-all-instances", SEARCH, (), None),
    ("dicomweb-study-series", SEARCH, ("study",), None),
    ("dicomweb-study-instances", SEARCH, ("study",), None),
    ("dicomweb-series-instances", SEARCH, ("study", "series"), None),
    ("dicomweb-study", RETRIEVE, ("study",), None),
    ("dicomweb-series", RETRIEVE, ("study", "series"), None),
    ("dicomweb-instance", RETRIEVE, ("study", "series", "sop"), None),
    ("dicomweb-study-metadata", RETRIEVE, ("study",), None),
    ("dicomweb-series-metadata", RETRIEVE, ("study", "series"), None),
    ("dicomweb-instance-metadata", RETRIEVE, ("study", "series", "sop"), None),
    ("dicomweb-frames", RETRIEVE, ("study", "series", "sop", "frame"), FRAME),
    ("dicomweb-bulkdata", RETRIEVE, ("study", "series", "sop", "pixel_data"), None),
    ("dicomweb-study-rendered", RETRIEVE, ("study",), "image/png"),
    ("dicomweb-study-thumbnail", RETRIEVE, ("study",), "image/jpeg"),
    ("dicomweb-series-rendered", RETRIEVE, ("study", "series"), "image/png"),
    ("dicomweb-series-thumbnail", RETRIEVE, ("study", "series"), "image/jpeg"),
    ("dicomweb-instance-rendered", RETRIEVE, ("study", "series", "sop"), "image/png"),
    ("dicomweb-instance-thumbnail", RETRIEVE, ("study", "series", "sop"), "image/jpeg"),
    ("dicomweb-frame-rendered", RETRIEVE, ("study", "series", "sop", "frame"), "image/png"),
]


@pytest.fixture(autouse=True)
def _fresh_index():
    dicomweb._series_files.clear()
    dicomweb_auth._user_of_session.clear()


@pytest.fixture
def world(cohort, tmp_path) -> dict[str, str]:
    imaged = add_imaged_patient(
        make_patient(cohort, "SECRET-42"), folder=tmp_path / "p", index=1, n_slices=4
    )
    return {
        "study": imaged.study.study_instance_uid,
        "series": imaged.ct.series_instance_uid,
        "sop": imaged.ct.instances.first().sop_instance_uid,
        "frame": "1",
        "pixel_data": "7FE00010",
    }


def url_of(name: str, parts: tuple[str, ...], world: dict[str, str]) -> str:
    return reverse(name, args=[world[part] for part in parts])


def test_the_table_covers_every_dicomweb_route():
    assert {pattern.name for pattern in dicomweb_urls.urlpatterns} == {r[0] for r in ROUTES}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kind", "parts", "accept"), ROUTES, ids=[r[0] for r in ROUTES])
def test_dicomweb_permission_table(world, client, members, name, kind, parts, accept):
    url = url_of(name, parts, world)
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    for username in USERS:
        client.force_login(members[username])
        response = client.get(url, **headers)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        if username == "admin" or username in {C, K}:
            assert response.status_code == 200, (username, url, response.status_code)
            if kind == SEARCH:
                assert response.json(), (username, url)
        elif kind == SEARCH:
            assert response.status_code == 200 and response.json() == [], (username, url)
        else:
            assert response.status_code == 404, (username, url, response.status_code)
            assert b"SECRET-42" not in body and world["series"].encode() not in body


def test_anonymous_gets_401_everywhere(world, client):
    for name, _, parts, _ in ROUTES:
        response = client.get(url_of(name, parts, world))
        assert response.status_code == 401, name
        assert b"SECRET-42" not in response.content


def test_nothing_is_stored_or_changed_over_dicomweb(world, client, members):
    client.force_login(members["coordinator"])
    for name, _, parts, _ in ROUTES:
        for method in (client.post, client.put, client.delete):
            response = method(url_of(name, parts, world))
            if method == client.post and name == "dicomweb-studies":
                # STOW-RS of SEGs only (tests/imaging/test_stow.py); this empty POST without
                # the platform's Origin is refused.
                assert response.status_code == 403, name
                continue
            assert response.status_code == 405 and response["Allow"] == "GET, HEAD", name
