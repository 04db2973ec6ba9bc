"""Issue 9 item 6: a Grad-CAM overlay is the CT slice under the heat map, so it is an image:
roles that may view images (coordinator, clinician) get the overlays on the patient page, in
the API's ``gradcam_urls`` and from both PNG endpoints; the statistician gets the scores
without any overlay, and 403 from the PNG endpoints."""

from __future__ import annotations

import pytest
from engine_fixtures import make_prediction, make_ready_version
from factories import make_patient
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

SEES_IMAGES = {"coordinator": True, "clinician": True, "statistician": False, "admin": True}


@pytest.mark.parametrize(("username", "sees"), SEES_IMAGES.items())
def test_overlays_only_for_roles_that_view_images(cohort, members, username, sees):
    patient = make_patient(cohort, "P-1")
    version = make_ready_version(cohort, name="pmpd-gradcam", is_active=True)
    prediction = make_prediction(patient, version)
    client = APIClient()
    client.force_login(members[username])
    png = f"/cohorts/{cohort.pk}/patients/P-1/predictions/{prediction.pk}/gradcam/0.png"
    api_png = f"/api/cohorts/{cohort.pk}/predictions/{prediction.pk}/gradcam/0/"

    page = client.get(f"/cohorts/{cohort.pk}/patients/P-1/")
    assert page.status_code == 200 and b"pmpd-gradcam" in page.content
    assert (png.encode() in page.content) is sees
    assert (b"shown only to roles that may view images" in page.content) is not sees

    rows = client.get(f"/api/cohorts/{cohort.pk}/predictions/").json()["results"]
    assert rows[0]["metastasis_risk_score"] == pytest.approx(0.62)
    assert len(rows[0]["gradcam_urls"]) == (4 if sees else 0)

    for url in (png, api_png):
        response = client.get(url)
        assert response.status_code == (200 if sees else 403), url
        if sees:
            assert response["Content-Type"] == "image/png"
