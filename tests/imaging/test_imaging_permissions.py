"""The imaging permission table: every page and API endpoint of uploads, ingest and image
series, tried by every kind of user (the style of tests/accounts/test_permission_table.py).

Expectations are written out by hand: coordinators upload and pick; clinicians view images;
statisticians do neither; outsiders learn nothing, not even that the cohort exists.
"""

from __future__ import annotations

import pytest
from factories import make_patient
from permission_table import USERS, C, K, assert_answer_for
from rest_framework.test import APIClient

from pmpd_web.imaging.models import ImageSeries, ImagingStudy, UploadFile
from pmpd_web.imaging.uploads import DeclaredFile, create_upload, declare_files

pytestmark = pytest.mark.django_db

API = "/api/cohorts/{cohort}"
UPLOAD = API + "/image-uploads/{upload}"

# (name, method, path template, roles allowed)
ENDPOINTS = [
    ("images page", "get", "/cohorts/{cohort}/images/", {C, K}),
    ("patient images", "get", "/cohorts/{cohort}/patients/SECRET-42/images/", {C, K}),
    ("patient pick", "post", "/cohorts/{cohort}/patients/SECRET-42/images/select/", {C}),
    ("upload page", "get", "/cohorts/{cohort}/images/uploads/{upload}/", {C}),
    ("upload status", "get", "/cohorts/{cohort}/images/uploads/{upload}/status/", {C}),
    ("api uploads", "get", API + "/image-uploads/", {C}),
    ("api upload create", "post", API + "/image-uploads/", {C}),
    ("api upload", "get", UPLOAD + "/", {C}),
    ("api upload files", "get", UPLOAD + "/files/", {C}),
    ("api upload declare", "post", UPLOAD + "/files/", {C}),
    ("api upload file", "get", UPLOAD + "/files/{file}/", {C}),
    ("api upload chunk", "put", UPLOAD + "/files/{file}/content/", {C}),
    ("api upload finish", "post", UPLOAD + "/finish/", {C}),
    ("api series", "get", API + "/image-series/", {C, K}),
    ("api series one", "get", API + "/image-series/{series}/", {C, K}),
    ("api series pick", "post", API + "/image-series/{series}/select/", {C}),
]


@pytest.fixture
def world(cohort, members):
    patient = make_patient(cohort, "SECRET-42", centre="Hidden centre")
    upload = create_upload(cohort=cohort, user=members[C], patient=patient)
    upload_file = declare_files(upload, [DeclaredFile(name="SECRET-42/scan.dcm", size=3)])[0]
    study = ImagingStudy.objects.create(patient=patient, study_instance_uid="2.25.1")
    series = ImageSeries.objects.create(
        study=study,
        series_instance_uid="2.25.2",
        modality="CT",
        description="CT of SECRET-42",
        is_selected=True,
        geometry={"size": [8, 8, 8], "spacing": [1, 1, 1], "origin": [0, 0, 0]},
    )
    return {
        "cohort": cohort.pk,
        "upload": upload.pk,
        "file": upload_file.pk,
        "series": series.pk,
    }


def send(client, name: str, method: str, url: str, world: dict):
    if name == "api upload chunk":
        return client.put(
            url, b"abc", content_type="application/octet-stream", HTTP_CONTENT_RANGE="bytes 0-2/3"
        )
    if name == "api upload create":
        return client.post(url, {"label_pancreas": 1, "label_tumour": 2}, format="json")
    if name == "api upload declare":
        return client.post(url, {"files": [{"name": "more.dcm", "size": 5}]}, format="json")
    if name == "patient pick":
        return client.post(url, {"series": world["series"]})
    return getattr(client, method)(url)


@pytest.mark.sample(keep={"username": ["outsider"]})
@pytest.mark.parametrize("username", USERS)
@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_imaging_permission_table(world, members, username, name, method, path, allowed):
    if name == "api upload finish":  # a complete file (its content is junk: the ingest fails)
        UploadFile.objects.filter(pk=world["file"]).update(received_bytes=3)
    client = APIClient()
    client.force_login(members[username])
    url = path.format(**world)
    response = send(client, name, method, url, world)
    may = assert_answer_for(username, allowed, response, url)
    if not may:
        body = response.content
        assert b"SECRET-42" not in body and b"Hidden centre" not in body and b"2.25.2" not in body


@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_anonymous_is_sent_to_login_or_refused(world, name, method, path, allowed):
    response = send(APIClient(), name, method, path.format(**world), world)
    if path.startswith("/api/"):
        assert response.status_code == 401
        assert b"SECRET-42" not in response.content
    else:
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_an_outsider_cannot_reach_another_cohorts_upload_through_their_own(
    world, members, other_cohort
):
    """IDs of another cohort's upload, file or series under one's own cohort: 404."""
    client = APIClient()
    client.force_login(members["outsider"])
    mine = f"/api/cohorts/{other_cohort.pk}"
    for url in (
        f"{mine}/image-uploads/{world['upload']}/",
        f"{mine}/image-uploads/{world['upload']}/files/{world['file']}/",
        f"{mine}/image-series/{world['series']}/",
        f"/cohorts/{other_cohort.pk}/images/uploads/{world['upload']}/",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"SECRET-42" not in response.content
    chunk = client.put(
        f"{mine}/image-uploads/{world['upload']}/files/{world['file']}/content/",
        b"abc",
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE="bytes 0-2/3",
    )
    assert chunk.status_code == 404
    assert client.post(f"{mine}/image-series/{world['series']}/select/").status_code == 404
