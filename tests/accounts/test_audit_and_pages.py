"""The audit trail (append-only), login, pages that render, the API schema and local assets."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connection, transaction
from factories import make_patient
from rest_framework.test import APIClient

from pmpd_web.accounts.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.mark.slow
def test_viewing_and_changing_a_patient_is_audited(client_for, cohort, members):
    patient = make_patient(cohort, "P-7")
    client_for(members["clinician"]).get(f"/cohorts/{cohort.pk}/patients/P-7/")
    api = APIClient()
    api.force_login(members["coordinator"])
    response = api.patch(
        f"/api/cohorts/{cohort.pk}/patients/P-7/", {"centre": "Leiden"}, format="json"
    )
    assert response.status_code == 200
    events = list(AuditEvent.objects.filter(patient=patient).order_by("at", "id"))
    assert [(e.username, e.action) for e in events] == [
        ("clinician", "view_patient"),
        ("coordinator", "change_patient"),
    ]
    assert events[1].detail == {"via": "api", "fields": ["centre"]}


def test_api_edits_obey_the_consistency_rules(cohort, members):
    make_patient(cohort, "P-8")
    api = APIClient()
    api.force_login(members["coordinator"])
    response = api.patch(
        f"/api/cohorts/{cohort.pk}/patients/P-8/", {"site_liver": True}, format="json"
    )
    assert response.status_code == 400
    assert "only when metastasis_at_diagnosis is yes" in str(response.json())


def test_nobody_can_edit_the_audit_trail(members):
    from pmpd_web.accounts.audit import record

    record(members["admin"], "login")
    event = AuditEvent.objects.get()
    event.action = "logout"
    with pytest.raises(PermissionDenied):
        event.save()
    with pytest.raises(PermissionDenied):
        event.delete()
    with pytest.raises(PermissionDenied):
        AuditEvent.objects.all().update(action="logout")
    with pytest.raises(PermissionDenied):
        AuditEvent.objects.all().delete()
    if connection.vendor == "postgresql":
        with (
            pytest.raises(DatabaseError, match="audit trail cannot be edited"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute("UPDATE accounts_auditevent SET action = 'x'")


def test_admin_reads_the_audit_trail_but_cannot_change_it(client_for, members):
    client = client_for(members["admin"])
    client.get("/")
    listing = client.get("/admin/accounts/auditevent/")
    assert listing.status_code == 200 and b"admin" in listing.content
    event = AuditEvent.objects.first()
    detail = client.get(f"/admin/accounts/auditevent/{event.pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
    assert client.get("/admin/accounts/auditevent/add/").status_code == 403


def test_login_and_logout(client, members):
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    response = client.post(
        "/accounts/login/", {"username": "clinician", "password": "pw-clinician"}
    )
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="login", username="clinician").exists()
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


def test_pages_render_with_sorting_filtering_and_completeness(client_for, cohort, members):
    for i, sex in enumerate(["female", "male", "male"]):
        make_patient(cohort, f"P-{i}", sex=sex, ca19_9_u_per_ml=None if i else 100)
    client = client_for(members["statistician"])
    page = client.get(f"/cohorts/{cohort.pk}/?sex=male&sort=-study_id")
    html = page.content.decode()
    assert html.index(">P-2<") < html.index(">P-1<") and ">P-0<" not in html
    assert "2 of 3 patients shown" in html
    assert re.search(r"ca19_9_u_per_ml</td><td class=\"num\">1</td>", html)
    assert "33.3%" in html


def test_every_asset_is_served_locally(client_for, cohort, members):
    client = client_for(members["coordinator"])
    for url in (
        "/",
        f"/cohorts/{cohort.pk}/",
        f"/cohorts/{cohort.pk}/import/",
        "/api/docs/",
        "/api/redoc/",
        "/roles/",
    ):
        html = client.get(url).content.decode()
        external = re.findall(r"(?:src|href)=[\"'](https?:)?//[^\"']+", html)
        assert not external, (url, external)


@pytest.mark.slow
def test_openapi_schema_lists_the_endpoints(client_for, members):
    schema = client_for(members["coordinator"]).get("/api/schema/?format=json").json()
    paths = set(schema["paths"])
    assert {
        "/api/cohorts/",
        "/api/cohorts/{cohort_pk}/patients/",
        "/api/cohorts/{cohort_pk}/imports/{id}/commit/",
        "/api/jobs/{id}/",
    } <= paths
    assert "tokenAuth" in schema["components"]["securitySchemes"]


def test_synthetic_cohorts_say_so(client_for, cohort, members):
    cohort.is_synthetic = True
    cohort.save()
    html = client_for(members["clinician"]).get(f"/cohorts/{cohort.pk}/").content
    assert b"Synthetic data" in html and b"Research use only" in html
