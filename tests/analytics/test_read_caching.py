"""What a repeated read costs: the API answers and the clinician's risk figure are stored whole
(a second request computes and draws nothing), a data change still invalidates them, and the
cache rows' hit counts are written back in batches rather than once per read."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from analytics import figures, services
from analytics.models import AnalysisCache
from analytics.services import patient_risk

pytestmark = pytest.mark.django_db


@pytest.fixture
def counted(monkeypatch):
    """Counts the section computations and the risk figures drawn."""
    counts = {"results": 0, "figures": 0}
    results_for, risk_figure = services.results_for, figures.risk_group_figure

    def counting_results(*args, **kwargs):
        counts["results"] += 1
        return results_for(*args, **kwargs)

    def counting_figure(*args, **kwargs):
        counts["figures"] += 1
        return risk_figure(*args, **kwargs)

    monkeypatch.setattr(services, "results_for", counting_results)
    monkeypatch.setattr(services.fig, "risk_group_figure", counting_figure)
    return counts


@pytest.mark.slow
def test_a_repeated_api_read_is_one_stored_answer_until_the_data_change(scored, members, counted):
    api = APIClient()
    api.force_login(members["statistician"])
    first = api.get("/api/analytics/survival/", scored.query)
    second = api.get("/api/analytics/survival/", scored.query)
    assert first.status_code == second.status_code == 200
    assert counted["results"] == 1
    first_body, second_body = first.json(), second.json()
    # the provenance says where each answer came from (computed, then the cache)
    first_body.pop("provenance"), second_body.pop("provenance")
    assert first_body == second_body
    assert AnalysisCache.objects.filter(kind="api").count() == 1

    other = api.get("/api/analytics/evaluation/", scored.query)
    assert other.status_code == 200 and counted["results"] == 2  # another answer, stored apart

    patient = scored.patients[0]
    patient.overall_survival_days = (patient.overall_survival_days or 100) + 400
    patient.save()
    changed = api.get("/api/analytics/survival/", scored.query)
    assert changed.status_code == 200 and counted["results"] == 3  # recomputed, not stale


def test_the_risk_figure_is_drawn_once_per_group_not_per_patient(scored, members, counted):
    seen: dict[str, str] = {}
    for patient in scored.patients[:30]:
        risk = patient_risk(members["clinician"], patient, scored.version)
        assert risk.allowed and risk.figure_json
        group = risk.risk_group
        if group in seen:
            assert risk.figure_json == seen[group]
        seen[group] = risk.figure_json
        highlighted = {
            trace["name"].split(" ")[0]
            for trace in json.loads(risk.figure_json)["data"]
            if "(n=" in trace.get("name", "") and trace.get("line", {}).get("width", 0) >= 3
        }
        assert group == "unknown" or highlighted <= {group}
    assert len(seen) >= 2
    assert counted["figures"] == len(seen)


def test_hit_counts_are_written_back_in_batches(scored, members, monkeypatch):
    monkeypatch.setattr(services, "_pending_hits", {})
    monkeypatch.setattr(services, "_hits_flushed_at", {})
    clock = {"now": 1000.0}
    monkeypatch.setattr(services, "_clock", lambda: clock["now"])
    api = APIClient()
    api.force_login(members["statistician"])
    api.get("/api/analytics/survival/", scored.query)  # computes and stores
    row = AnalysisCache.objects.get(kind="api")
    assert row.hits == 0

    api.get("/api/analytics/survival/", scored.query)  # the first hit is written at once
    row.refresh_from_db()
    assert row.hits == 1
    for _ in range(3):  # within the flush interval: counted, not written
        api.get("/api/analytics/survival/", scored.query)
    row.refresh_from_db()
    assert row.hits == 1

    clock["now"] += services.HIT_FLUSH_SECONDS + 1
    api.get("/api/analytics/survival/", scored.query)
    row.refresh_from_db()
    assert row.hits == 5
