"""Frame-by-frame retrieval (issue 10, item 10): a viewer scrolling asks for frames one request
at a time, so each request reads the database once (session, user and roles together), and the
permission is still checked at every request: a revoked membership, a logout or a changed
password stop the next frame, not one 30 seconds later."""

from __future__ import annotations

import time

import pytest
from dicom_fixtures import add_imaged_patient
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from factories import make_patient

from pmpd_web.accounts.middleware import LAST_SEEN, LOGIN_AT
from pmpd_web.accounts.models import Membership
from pmpd_web.imaging import dicomweb, dicomweb_auth

FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture(autouse=True)
def _fresh_index():
    dicomweb._series_files.clear()
    dicomweb_auth._user_of_session.clear()


@pytest.fixture
def imaged(cohort, tmp_path):
    return add_imaged_patient(make_patient(cohort, "PMPD-001"), folder=tmp_path / "p", index=1)


def frame_url(imaged, position: int = 0) -> str:
    sop = list(imaged.ct.instances.order_by("instance_number"))[position].sop_instance_uid
    return (
        f"/dicomweb/studies/{imaged.study.study_instance_uid}"
        f"/series/{imaged.ct.series_instance_uid}/instances/{sop}/frames/1"
    )


@pytest.mark.slow
def test_a_frame_request_reads_the_database_once(imaged, client_for, members):
    client = client_for(members["clinician"])
    assert client.get(frame_url(imaged, 0), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 200
    for url in [frame_url(imaged, position) for position in range(1, 4)]:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, HTTP_ACCEPT=FRAME_ACCEPT)
        assert response.status_code == 200
        assert len(queries) == 1, [query["sql"] for query in queries]


def test_an_instance_stored_since_the_series_was_indexed_is_served(imaged, client_for, members):
    """The kept index of a series' files (30 s) does not hide an instance stored after it
    was read (a SEG saved from the viewer into a known series, a series ingested again):
    it was 404 until the index expired (seen as a flaky STOW test of OHIF's two SEG kinds)."""
    from pmpd_web.imaging.models import DicomInstance

    client = client_for(members["clinician"])
    assert client.get(frame_url(imaged, 0), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 200
    first = imaged.ct.instances.order_by("instance_number").first()
    added = DicomInstance.objects.get(pk=first.pk)
    added.pk, added.sop_instance_uid = None, "1.2.826.0.1.3680043.8.498.99"
    added.save()
    url = (
        f"/dicomweb/studies/{imaged.study.study_instance_uid}"
        f"/series/{imaged.ct.series_instance_uid}/instances/{added.sop_instance_uid}/frames/1"
    )
    assert client.get(url, HTTP_ACCEPT=FRAME_ACCEPT).status_code == 200
    missing = url.replace(added.sop_instance_uid, "1.2.826.0.1.3680043.8.498.98")
    assert client.get(missing, HTTP_ACCEPT=FRAME_ACCEPT).status_code == 404


def test_a_revoked_membership_stops_the_next_frame(imaged, client_for, members, cohort):
    client = client_for(members["clinician"])
    assert client.get(frame_url(imaged, 0), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 200
    Membership.objects.filter(user=members["clinician"], cohort=cohort).delete()
    assert client.get(frame_url(imaged, 1), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 404


@pytest.mark.slow
def test_a_role_without_images_gets_no_frame(imaged, client_for, members):
    client = client_for(members["statistician"])
    assert client.get(frame_url(imaged), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 404


@pytest.mark.slow
def test_logout_and_a_new_password_stop_the_next_frame(imaged, client, members):
    user = members["clinician"]
    client.force_login(user)
    assert client.get(frame_url(imaged), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 200
    user.set_password("a-new-password")
    user.save()
    assert client.get(frame_url(imaged), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 401

    client.force_login(user)
    assert client.get(frame_url(imaged), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 200
    Session.objects.all().delete()
    assert client.get(frame_url(imaged), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 401


@pytest.mark.slow
def test_an_inactive_user_gets_no_frame(imaged, client, members):
    user = members["clinician"]
    client.force_login(user)
    assert client.get(frame_url(imaged), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 200
    user.is_active = False
    user.save()
    assert client.get(frame_url(imaged), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 401


def test_the_remembered_user_of_a_session_is_checked_against_the_session(imaged, client, members):
    """The session-to-user guess that lets one query read both is never trusted: a wrong
    guess (here a user without images) still answers for the session's own user."""
    client.force_login(members["clinician"])
    key = client.cookies["sessionid"].value
    dicomweb_auth._user_of_session[key] = members["statistician"].pk
    assert client.get(frame_url(imaged), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 200
    assert dicomweb_auth._user_of_session[key] == members["clinician"].pk
    client.force_login(members["statistician"])
    dicomweb_auth._user_of_session[client.cookies["sessionid"].value] = members["clinician"].pk
    assert client.get(frame_url(imaged), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize(("login", "seen"), [(700, 601), (9 * 3600, 10)])
def test_a_session_past_its_timeouts_gets_no_frame(
    imaged, client_for, members, settings, login, seen
):
    """DICOMweb applies the site's idle and absolute session timeouts itself (the middleware
    leaves it to the one-query session read)."""
    settings.PMPD_SESSION_IDLE_SECONDS = 600
    settings.SESSION_COOKIE_AGE = 8 * 3600
    client = client_for(members["clinician"])
    assert client.get("/").status_code == 200
    assert client.get(frame_url(imaged, 0), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 200
    session = client.session
    now = int(time.time())
    session[LOGIN_AT], session[LAST_SEEN] = now - login, now - seen
    session.save()
    assert client.get(frame_url(imaged, 1), HTTP_ACCEPT=FRAME_ACCEPT).status_code == 401
