"""The clinician's view of one patient: ``patient_risk_context`` and the include the patient
page renders (``analytics/_patient_risk.html``)."""

from __future__ import annotations

import json
import re

import pytest
from django.template.loader import render_to_string
from factories import make_patient
from rest_framework.test import APIClient
from scored import make_model_version

from analytics.services import patient_risk_context
from inference.models import PatientPrediction
from pmpd_web.accounts.models import AuditEvent

pytestmark = pytest.mark.django_db


def cutpoint_of(scored, user) -> float:
    api = APIClient()
    api.force_login(user)
    body = api.get("/api/analytics/survival/", scored.query).json()
    return body["mrs_cutpoint"]["cutpoint"]


def expected_risk(mrs_group, ca_group) -> str:
    if mrs_group is None or ca_group is None:
        return "unknown"
    if mrs_group == ca_group:
        return mrs_group
    return "mid"


@pytest.mark.slow
def test_context_places_the_patient_against_the_dashboards_cut(scored, members):
    cut = cutpoint_of(scored, members["statistician"])
    seen_groups = set()
    for patient in scored.patients[:25]:
        risk = patient_risk_context(members["clinician"], patient, scored.version)["patient_risk"]
        prediction = PatientPrediction.objects.get(patient=patient)
        assert risk.allowed and not risk.message
        assert risk.metastasis_risk_score == prediction.metastasis_risk_score
        assert risk.cutpoint == cut and "maximally selected log-rank" in risk.cutpoint_method
        mrs_group = "high" if prediction.metastasis_risk_score > cut else "low"
        assert risk.mrs_group == mrs_group
        ca = patient.ca19_9_u_per_ml
        ca_group = None if ca is None else ("high" if ca > 500 else "low")
        assert risk.ca19_9_group == ca_group
        assert risk.risk_group == expected_risk(mrs_group, ca_group)
        if ca is None:
            assert "CA19-9 is not recorded" in risk.risk_group_reason
        assert risk.n_scored == 80 and 0 < risk.mrs_percentile <= 100
        figure = json.loads(risk.figure_json)
        widths = {
            trace["name"].split(" ")[0]: trace.get("line", {}).get("width")
            for trace in figure["data"]
            if "(n=" in trace.get("name", "")
        }
        if risk.risk_group != "unknown":
            assert widths[risk.risk_group] == 4  # the patient's group is highlighted
        seen_groups.add(risk.risk_group)
    assert {"low", "high"} <= seen_groups
    assert risk.to_dict()["model_version"]["name"] == scored.version.name


def test_include_renders_for_the_patient_page(scored, members):
    patient = next(p for p in scored.patients if p.ca19_9_u_per_ml is not None)
    context = patient_risk_context(members["clinician"], patient, scored.version)
    html = render_to_string("analytics/_patient_risk.html", context)
    risk = context["patient_risk"]
    assert 'id="patient-risk"' in html and "Research use only" in html
    assert scored.version.name in html and "(chosen)" in html
    assert f"{risk.metastasis_risk_score:.3f}" in html and f"{risk.cutpoint:.3f}" in html
    assert f'class="group {risk.risk_group}"' in html
    match = re.search(r'id="patient-risk-figure-json">(.*?)</script>', html, re.S)
    assert json.loads(match.group(1))["layout"]["title"]["text"].startswith("Overall survival")
    assert "vendor/plotly.min.js" in html and "analytics/figures.js" in html
    assert "Synthetic data" not in html


def test_default_model_version_and_unscored_patients(scored, members, cohort):
    patient = scored.patients[0]
    risk = patient_risk_context(members["clinician"], patient)["patient_risk"]
    assert risk.model_version == scored.version
    assert risk.model_version_source == "the latest model version that scored this patient"
    active = make_model_version("pmpd-active", is_active=True, is_synthetic=True)
    risk = patient_risk_context(members["clinician"], patient)["patient_risk"]
    assert risk.model_version == active and risk.synthetic
    assert "has not scored this patient" in risk.message
    html = render_to_string("analytics/_patient_risk.html", {"patient_risk": risk})
    assert "has not scored this patient" in html and "Synthetic data" in html
    unscored = make_patient(cohort, "NEW-1")
    risk = patient_risk_context(members["clinician"], unscored, scored.version)["patient_risk"]
    assert "has not scored this patient" in risk.message


def test_no_model_version_at_all(cohort, members):
    patient = make_patient(cohort, "ONLY-1")
    risk = patient_risk_context(members["clinician"], patient)["patient_risk"]
    assert risk.allowed and risk.message == "No model version has scored this patient yet."


def test_include_shows_nothing_without_view_results(scored, members):
    patient = scored.patients[0]
    for username in ("outsider", "nobody"):
        context = patient_risk_context(members[username], patient, scored.version)
        assert context["patient_risk"].allowed is False
        assert render_to_string("analytics/_patient_risk.html", context).strip() == ""


@pytest.mark.slow
def test_risk_page_and_api(scored, members, client_for):
    patient = scored.patients[3]
    page = client_for(members["clinician"]).get(
        f"/cohorts/{scored.cohort.pk}/patients/{patient.study_id}/risk/",
        {"model_version": scored.version.pk},
    )
    assert page.status_code == 200 and b'id="patient-risk"' in page.content
    event = AuditEvent.objects.filter(action="view_patient", patient=patient).get()
    assert event.detail == {"view": "risk"}
    api = APIClient()
    api.force_login(members["clinician"])
    body = api.get(
        f"/api/analytics/cohorts/{scored.cohort.pk}/patients/{patient.study_id}/risk/"
    ).json()
    assert (
        body["metastasis_risk_score"]
        == PatientPrediction.objects.get(patient=patient).metastasis_risk_score
    )
    assert body["research_use_only"].startswith("Research use only")
    assert body["risk_group"] in {"low", "mid", "high", "unknown"}
    assert "figure_json" not in body
