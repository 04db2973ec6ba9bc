"""The analytics dashboards with predictions: every section renders, downloads carry their
provenance, the cache serves the second call and a data change invalidates it, synthetic data
say so, and analyses that cannot be computed say why instead of failing."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import openpyxl
import pandas as pd
import pytest
from factories import make_cohort, make_patient
from rest_framework.test import APIClient
from scored import make_model_version

from analytics import services
from analytics.loaders import load_frame
from analytics.models import AnalysisCache
from inference.models import PatientPrediction
from pmpd_web.accounts.models import AuditEvent, Membership, Role

pytestmark = pytest.mark.django_db

EXPECTED = {
    "evaluation": {
        "figures": ["roc-patient-mrs", "roc-patient-fraction", "roc-slice", "sites-roc"],
        "tables": ["classification", "confusion-matrices", "folds", "sites", "missed-at-imaging"],
    },
    "survival": {
        "figures": [
            "mrs-cutpoint",
            "km-mrs-group",
            "km-ca19-9-group",
            "km-nccn-resectability",
            "km-risk-group",
            "km-mrs-within-resectable",
            "km-mrs-within-metastatic",
        ],
        "tables": ["mrs-cutpoint", "kaplan-meier-medians", "logrank", "numbers-at-risk"],
    },
    "cox": {
        "figures": ["cox-univariable", "cox-multivariable", "cox-risk-groups"],
        "tables": ["cox-univariable", "cox-multivariable", "cox-risk-groups", "c-index"],
    },
    "development": {
        "figures": ["development", "development-roc-lt-3-vs-ge-3-months"],
        "tables": ["development-groups", "development-tests", "development-roc"],
    },
    "subgroups": {"figures": ["subgroups"], "tables": ["subgroups"]},
}


@pytest.fixture
def statistician(client_for, members):
    return client_for(members["statistician"])


@pytest.fixture
def calls(monkeypatch):
    """Counts the full analyses computed and the patient frames loaded."""
    counts = {"analyses": 0, "loads": 0}
    run, load = services.run_full_analysis, services.load_frame

    def counting_run(*args, **kwargs):
        counts["analyses"] += 1
        return run(*args, **kwargs)

    def counting_load(*args, **kwargs):
        counts["loads"] += 1
        return load(*args, **kwargs)

    monkeypatch.setattr(services, "run_full_analysis", counting_run)
    monkeypatch.setattr(services, "load_frame", counting_load)
    return counts


def api_for(user) -> APIClient:
    api = APIClient()
    api.force_login(user)
    return api


def figure_json(html: bytes, element: str) -> dict:
    match = re.search(
        rf'<script type="application/json" id="{re.escape(element)}-json">(.*?)</script>',
        html.decode(),
        re.S,
    )
    assert match, element
    return json.loads(match.group(1))


def read_csv(content: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(content))


@pytest.mark.slow
def test_every_section_renders_its_figures_and_tables(scored, statistician, calls):
    development_names = set()
    for section, expected in EXPECTED.items():
        response = statistician.get(f"/analytics/{section}/", scored.query)
        assert response.status_code == 200, section
        html = response.content
        assert scored.version.name.encode() in html and b"Research use only" in html
        assert b"vendor/plotly.min.js" in html and b"Synthetic data" not in html
        for name in expected["figures"]:
            if section == "development" and name.startswith("development-roc"):
                continue
            assert f'id="figure-{section}-{name}"'.encode() in html, (section, name)
            assert f"/analytics/{section}/figures/{name}.csv?".encode() in html
        for name in expected["tables"]:
            assert f'id="table-{section}-{name}"'.encode() in html, (section, name)
            assert f"/analytics/{section}/tables/{name}.xlsx?".encode() in html
        if section == "development":
            development_names = set(re.findall(rb'id="figure-development-([a-z0-9-]+)"', html))
    assert {b"development-roc-lt-3-vs-ge-3-months", b"development-roc-lt-6-vs-ge-6-months"} <= (
        development_names
    )
    # One full analysis serves the five sections (same data, same options).
    assert calls["analyses"] == 1
    risk = figure_json(
        statistician.get("/analytics/survival/", scored.query).content,
        "figure-survival-km-risk-group",
    )
    assert {trace["name"].split(" ")[0] for trace in risk["data"]} >= {"low", "mid", "high"}


@pytest.mark.slow
def test_second_call_comes_from_the_cache_and_a_data_change_invalidates_it(
    scored, statistician, calls, members
):
    url = "/analytics/survival/"
    first = statistician.get(url, scored.query)
    assert first["X-Analytics-Cache"] == "miss" and calls == {"analyses": 1, "loads": 1}
    rows = AnalysisCache.objects.count()
    second = statistician.get(url, scored.query)
    assert second["X-Analytics-Cache"] == "hit"
    assert calls == {"analyses": 1, "loads": 1}  # no patient row was read again
    assert b"From the cache" in second.content
    assert AnalysisCache.objects.filter(hits__gt=0).exists()

    # A change made outside the import and the API (no data_version bump) still counts.
    patient = scored.patients[0]
    patient.overall_survival_days += 30
    patient.save()
    assert statistician.get(url, scored.query)["X-Analytics-Cache"] == "miss"
    assert calls["analyses"] == 2
    assert AnalysisCache.objects.count() == rows  # replaced, not added

    # An API edit bumps the cohort's data version.
    coordinator = api_for(members["coordinator"])
    edit = coordinator.patch(
        f"/api/cohorts/{scored.cohort.pk}/patients/{scored.patients[1].study_id}/",
        {"centre": "Leiden"},
        format="json",
    )
    assert edit.status_code == 200
    assert statistician.get(url, scored.query)["X-Analytics-Cache"] == "miss"
    assert calls["analyses"] == 3

    # New scores under the model version count too.
    prediction = PatientPrediction.objects.filter(model_version=scored.version).first()
    prediction.metastasis_risk_score = 0.99
    prediction.save()
    assert statistician.get(url, scored.query)["X-Analytics-Cache"] == "miss"
    assert statistician.get(url, scored.query)["X-Analytics-Cache"] == "hit"
    assert calls["analyses"] == 4


@pytest.mark.slow
def test_downloads_carry_the_numbers_and_their_provenance(scored, statistician, members):
    api = api_for(members["statistician"]).get("/api/analytics/evaluation/", scored.query).json()
    about = api["provenance"]
    assert len(about["data_hash"]) == 64 and about["n_patients"] == 80
    assert about["packages"]["lifelines"] and about["model_version"]["name"] == scored.version.name

    figure = statistician.get("/analytics/survival/figures/km-risk-group.csv", scored.query)
    assert figure.status_code == 200 and figure["Content-Type"].startswith("text/csv")
    assert 'filename="pmpd-' in figure["Content-Disposition"]
    beside = statistician.get(
        "/analytics/survival/figures/km-risk-group/provenance.txt", scored.query
    )
    text = beside.content.decode()
    assert text.startswith("PMPD analytics: Overall survival by risk group")
    assert "Research use only" in text and f"Model version: {scored.version.name}" in text
    assert about["data_hash"] in text and "SYNTHETIC" not in text
    curves = read_csv(figure.content)
    assert {"group", "time (days)", "number at risk", "survival", "CI lower", "CI upper"} <= set(
        curves.columns
    )
    assert set(curves["group"]) <= {"low", "mid", "high"}

    table = statistician.get("/analytics/evaluation/tables/classification.csv", scored.query)
    rows = read_csv(table.content).set_index("analysis")
    auroc = api["classification"]["patient_mrs"]["auroc"]["auroc"]
    assert rows.loc["metastasis by MRS", "AUROC"] == pytest.approx(auroc, abs=1e-12)

    workbook = openpyxl.load_workbook(
        io.BytesIO(
            statistician.get("/analytics/cox/tables/cox-univariable.xlsx", scored.query).content
        )
    )
    assert workbook.sheetnames == ["table", "Provenance"]
    header = [cell.value for cell in workbook["table"][1]]
    assert {"model", "term", "log hazard ratio", "hazard ratio", "p-value"} <= set(header)
    about_text = " ".join(str(cell.value) for cell in workbook["Provenance"]["A"])
    assert "Research use only" in about_text and about["data_hash"] in about_text

    report = statistician.get("/analytics/report.html", scored.query)
    assert report.status_code == 200
    assert report["Content-Disposition"].endswith('.html"')
    html = report.content.decode()
    assert "<script src=" not in html and "<link" not in html  # self-contained
    assert "Plotly" in html and len(html) > 1_000_000  # plotly.js inlined
    assert about["data_hash"] in html and scored.version.name in html
    assert "Research use only" in html and "lifelines" in html
    for title in ("Evaluation", "Survival and prognosis", "Cox regression", "Subgroups"):
        assert f"<h2>{title}</h2>" in html
    assert html.count('type="application/json"') >= 20

    exports = AuditEvent.objects.filter(action="export_table", cohort=scored.cohort)
    assert exports.count() == 4
    assert {event.detail["kind"] for event in exports} == {"analytics"}
    assert {event.detail["format"] for event in exports} == {"csv", "xlsx", "html"}


@pytest.mark.slow
def test_synthetic_data_say_so_everywhere(scored, statistician, members):
    scored.cohort.is_synthetic = True
    scored.cohort.save()
    page = statistician.get("/analytics/survival/", scored.query)
    assert b"Synthetic data: these analyses were computed on synthetic data" in page.content
    figure = figure_json(page.content, "figure-survival-km-mrs-group")
    assert any(a.get("name") == "synthetic-data" for a in figure["layout"]["annotations"])
    download = statistician.get("/analytics/survival/tables/logrank.csv", scored.query)
    beside = statistician.get("/analytics/survival/tables/logrank/provenance.txt", scored.query)
    assert b"SYNTHETIC DATA" in beside.content
    assert "SYNTHETIC" in download["Content-Disposition"]
    report = statistician.get("/analytics/report.html", scored.query).content
    assert b"synthetic-banner" in report
    assert (
        api_for(members["statistician"])
        .get("/api/analytics/subgroups/", scored.query)
        .json()["synthetic"]
    )

    # A model version trained on synthetic data marks a real cohort's analyses too.
    scored.cohort.is_synthetic = False
    scored.cohort.save()
    scored.version.is_synthetic = True
    scored.version.save()
    body = api_for(members["statistician"]).get("/api/analytics/cox/", scored.query).json()
    assert body["synthetic"] is True
    page = statistician.get("/analytics/cox/", scored.query).content
    assert b"was trained on synthetic data" in page


@pytest.fixture
def hopeless(members):
    """Patients that defeat every analysis: one class, nobody died, no CA19-9."""
    cohort = make_cohort("Hopeless")
    Membership.objects.create(user=members["statistician"], cohort=cohort, role=Role.STATISTICIAN)
    version = make_model_version("pmpd-hopeless")
    for index in range(12):
        patient = make_patient(
            cohort, f"H-{index:02d}", vital_status="alive", overall_survival_days=100 + index
        )
        PatientPrediction.objects.create(
            patient=patient,
            model_version=version,
            source=PatientPrediction.Source.ENSEMBLE,
            metastasis_risk_score=0.1 + index / 20,
            positive_fraction=0.25,
            predicted_metastasis=False,
            n_slices=4,
            input_hash="h",
        )
    return {"cohort": cohort.pk, "model_version": version.pk}


@pytest.mark.slow
def test_what_cannot_be_computed_is_explained(hopeless, statistician, members):
    reasons = {
        "evaluation": b"only one class present",
        "survival": b"all patients are censored",
        "cox": b"death(s) among",
        "development": b"Not computable",
        "subgroups": b"only one class present",
    }
    for section, reason in reasons.items():
        response = statistician.get(f"/analytics/{section}/", hopeless)
        assert response.status_code == 200, section
        assert reason in response.content, section
        assert b'class="not-computable"' in response.content
    figure = figure_json(
        statistician.get("/analytics/evaluation/", hopeless).content,
        "figure-evaluation-roc-patient-mrs",
    )
    assert any(a.get("name") == "not-computable" for a in figure["layout"]["annotations"])
    data = read_csv(
        statistician.get("/analytics/survival/figures/mrs-cutpoint.csv", hopeless).content
    )
    assert list(data.columns) == ["analysis", "computable", "reason"]
    assert "censored" in data.loc[0, "reason"]
    api = api_for(members["statistician"])
    survival = api.get("/api/analytics/survival/", hopeless).json()
    assert survival["mrs_cutpoint"]["computable"] is False
    assert survival["kaplan_meier"]["ca19_9_group"]["computable"] is False
    cox = api.get("/api/analytics/cox/", {**hopeless, "variables": "metastasis_risk_score"})
    assert cox.json()["multivariable"]["reason"].startswith("0 death(s)")
    report = statistician.get("/analytics/report.html", hopeless)
    assert report.status_code == 200 and b"Not computable" in report.content


@pytest.mark.slow
def test_one_death_is_too_few_for_a_cox_model(hopeless, members):
    from pmpd_web.cohorts.models import Patient

    Patient.objects.filter(cohort_id=hopeless["cohort"], study_id="H-00").update(
        vital_status="dead"
    )
    body = (
        api_for(members["statistician"])
        .get("/api/analytics/cox/", {**hopeless, "variables": "age_at_diagnosis_years"})
        .json()
    )
    assert body["multivariable"]["computable"] is False
    assert "1 death(s) among 12 patients; at least 2 needed" in body["multivariable"]["reason"]


@pytest.mark.slow
def test_parameters_change_the_analysis(scored, members):
    api = api_for(members["statistician"])
    fixed = api.get("/api/analytics/survival/", {**scored.query, "mrs_cutpoint": "0.5"}).json()
    assert "fixed cut-point of 0.5" in fixed["mrs_cutpoint"]["reason"]
    curves = fixed["kaplan_meier"]["mrs_group"]["curves"]
    mrs = np.array([p.metastasis_risk_score for p in PatientPrediction.objects.all()])
    assert curves["high"]["n"] == int((mrs > 0.5).sum())
    cox = api.get(
        "/api/analytics/cox/",
        {
            **scored.query,
            "variables": "mrs_per_0_1",
            "adjust_for": "age_at_diagnosis_years",
            "univariable": "sex",
        },
    ).json()
    terms = [term["term"] for term in cox["multivariable"]["terms"]]
    assert terms == ["mrs_per_0_1", "age_at_diagnosis_years"]
    assert list(cox["univariable"]["models"]) == ["sex"]
    assert cox["univariable"]["models"]["sex"]["terms"][0]["term"] == "sex[female]"
    assert cox["risk_groups"]["computable"] is True
    assert set(cox["c_index_paper"]) == {"metastasis_risk_score", "mrs_ca19_9_resectability"}
    group = api.get("/api/analytics/kaplan-meier/", {**scored.query, "group": "centre"}).json()
    assert {row["group"] for row in group["kaplan_meier"]["medians"]} <= {
        "Barcelona",
        "Madrid",
        "Zhengzhou",
        "Nijmegen",
    }
    assert "curves" not in group
    ca = api.get("/api/analytics/survival/", {**scored.query, "ca19_9_threshold": "100"}).json()
    assert ca["provenance"]["parameters"]["ca19_9_threshold"] == 100.0


def test_bad_parameters_are_explained(scored, statistician, members):
    page = statistician.get("/analytics/cox/", {**scored.query, "variables": "shoe_size"})
    assert page.status_code == 400 and b"unknown variable(s) shoe_size" in page.content
    api = api_for(members["statistician"])
    response = api.get("/api/analytics/cox/", {"cohort": scored.cohort.pk, "group": "mrs_group"})
    assert response.status_code == 400
    assert "needs a model version" in response.json()["group"]
    assert api.get("/api/analytics/kaplan-meier/", scored.query).status_code == 400
    assert api.get("/api/analytics/cox/").status_code == 400
    # Permission comes first: an outsider learns nothing from a malformed request.
    outsider = api_for(members["outsider"])
    malformed = {**scored.query, "confidence_level": "2"}
    assert outsider.get("/api/analytics/cox/", malformed).status_code == 404
    assert statistician.get("/analytics/cox/", malformed).status_code == 400


@pytest.mark.slow
def test_sections_without_a_model_version(scored, statistician):
    query = {"cohort": scored.cohort.pk}
    evaluation = statistician.get("/analytics/evaluation/", query)
    assert evaluation.status_code == 200
    assert b"choose a model version" in evaluation.content
    survival = statistician.get("/analytics/survival/", query)
    html = survival.content
    assert b"figure-survival-km-nccn-resectability" in html
    assert b"no model version was chosen" in html
    assert b"none: clinical data only" in html
    cox = statistician.get("/analytics/cox/", query)
    assert b"figure-cox-cox-multivariable" in cox.content


@pytest.mark.slow
def test_home_and_cohort_link(scored, client_for, members):
    statistician = client_for(members["statistician"])
    home = statistician.get("/analytics/", {"cohort": scored.cohort.pk})
    assert scored.cohort.name.encode() in home.content
    assert scored.version.name.encode() in home.content
    assert b"80 predictions" in home.content
    cohort_page = statistician.get(f"/cohorts/{scored.cohort.pk}/").content
    assert f'href="/analytics/?cohort={scored.cohort.pk}"'.encode() in cohort_page
    clinician = client_for(members["clinician"])
    assert b"/analytics/?cohort=" not in clinician.get(f"/cohorts/{scored.cohort.pk}/").content
    assert scored.cohort.name.encode() not in clinician.get("/analytics/").content


def test_loader_maps_the_clinical_fields_and_predictions(cohort):
    version = make_model_version("pmpd-loader")
    metastatic = make_patient(
        cohort,
        "L-1",
        metastasis_at_diagnosis="yes",
        site_liver=True,
        nccn_resectability="borderline_resectable",
        ca19_9_u_per_ml="812.50",
        metastasis_detection="laparoscopy",
    )
    free = make_patient(
        cohort,
        "L-2",
        vital_status="alive",
        developed_metastasis="yes",
        days_to_metastasis=120,
        sex="male",
    )
    unknown = make_patient(cohort, "L-3", metastasis_at_diagnosis="unknown", vital_status="")
    make_patient(cohort, "L-4")  # never scored
    slices = [[0.2, 0.4, 0.6, 0.8]] * 4 + [[0.3, 0.5, 0.7, 0.9]]
    for patient, mrs in ((metastatic, 0.55), (free, 0.2), (unknown, 0.4)):
        PatientPrediction.objects.create(
            patient=patient,
            model_version=version,
            source=PatientPrediction.Source.ENSEMBLE,
            metastasis_risk_score=mrs,
            mrs_per_fold=[mrs, mrs, mrs, mrs, mrs + 0.05],
            positive_fraction=0.5,
            predicted_metastasis=mrs > 0.5,
            site_probabilities={"liver": 0.7, "lung": 0.1, "peritoneum": 0.2},
            slice_probabilities=slices if patient is metastatic else [],
            n_slices=4,
            input_hash="h",
        )
    loaded = load_frame([cohort], version)
    frame = loaded.frame.set_index("study_id")
    assert list(frame.index) == ["L-1", "L-2", "L-3"]
    assert frame.loc["L-1", "metastasis_label"] == 1 and frame.loc["L-2", "metastasis_label"] == 0
    assert np.isnan(frame.loc["L-3", "metastasis_label"])
    assert frame.loc["L-1", "death"] == 1 and frame.loc["L-2", "death"] == 0
    assert np.isnan(frame.loc["L-3", "death"])
    assert frame.loc["L-1", "site_liver"] == 1 and frame.loc["L-1", "site_lung"] == 0
    assert frame.loc["L-2", "site_liver"] == 0 and np.isnan(frame.loc["L-3", "site_liver"])
    assert frame.loc["L-1", "nccn_resectability"] == "borderline resectable"
    assert frame.loc["L-1", "ca19_9_u_per_ml"] == 812.5
    assert frame.loc["L-1", "prob_liver"] == 0.7
    assert frame.loc["L-1", "mrs_fold_5"] == pytest.approx(0.6)
    assert frame.loc["L-2", "developed_metastasis"] == 1
    assert frame.loc["L-2", "days_to_metastasis"] == 120
    assert frame.loc["L-1", "predicted_positive_fraction"] == 0.5
    assert pd.isna(frame.loc["L-2", "nccn_resectability"])
    assert loaded.slices is not None and len(loaded.slices) == 4
    np.testing.assert_allclose(loaded.slices["slice_probability"], [0.22, 0.42, 0.62, 0.82])
    assert set(loaded.slices["metastasis_label"]) == {1.0}
    assert any("1 of 4 patients" in note for note in loaded.notes)
    assert any("unknown are left out" in note for note in loaded.notes)
    clinical = load_frame([cohort], None)
    assert len(clinical.frame) == 4 and clinical.frame["metastasis_risk_score"].isna().all()


@pytest.mark.slow
def test_pooled_cohorts_and_an_empty_cohort(scored, statistician, members, other_cohort):
    Membership.objects.create(
        user=members["statistician"], cohort=other_cohort, role=Role.STATISTICIAN
    )
    make_patient(other_cohort, scored.patients[0].study_id, vital_status="dead")
    api = api_for(members["statistician"])
    pooled = {**scored.query, "cohort": f"{scored.cohort.pk},{other_cohort.pk}"}
    body = api.get("/api/analytics/survival/", pooled).json()
    about = body["provenance"]
    assert [c["name"] for c in about["cohorts"]] == [scored.cohort.name, other_cohort.name]
    assert about["n_patients"] == 80 and about["n_patients_in_cohorts"] == 81
    assert any("1 of 81 patients" in note for note in about["notes"])
    page = statistician.get("/analytics/survival/", pooled)
    assert page.status_code == 200 and b"1 of 81 patients" in page.content

    empty = make_cohort("Empty")
    Membership.objects.create(user=members["statistician"], cohort=empty, role=Role.STATISTICIAN)
    for query in ({"cohort": empty.pk}, {"cohort": empty.pk, "model_version": scored.version.pk}):
        for section in EXPECTED:
            assert statistician.get(f"/analytics/{section}/", query).status_code == 200
        assert api.get("/api/analytics/cox/", query).json()["multivariable"]["computable"] is False


@pytest.mark.slow
def test_cox_section_shows_the_models_of_the_full_analysis(scored, members):
    api = api_for(members["statistician"])
    cox = api.get("/api/analytics/cox/", scored.query).json()
    full = api.get("/api/analytics/analysis/", scored.query).json()["analysis"]
    assert cox["variables"] == ["mrs_group", "ca19_9_group", "nccn_resectability"]
    assert cox["multivariable"] == full["cox_multivariable"]
    assert cox["univariable"]["models"] == full["cox_univariable"]["models"]
    assert cox["risk_groups"] == full["cox_risk_groups"]
    # The chosen model's C is that of the adjusted model; the paper's C (unadjusted MRS group +
    # CA19-9 group + resectability) comes with it.
    assert cox["c_index"]["c_index"] == full["cox_multivariable"]["concordance"]
    assert cox["c_index_paper"] == full["c_index"]


@pytest.mark.slow
def test_large_selections_are_computed_by_a_job(
    scored, statistician, settings, monkeypatch, django_capture_on_commit_callbacks
):
    from analytics import tasks
    from pmpd_web.jobs.models import Job

    settings.PMPD_ANALYTICS_INLINE_MAX = 50
    queued = []
    monkeypatch.setattr(
        tasks.compute_dashboards, "apply_async", lambda args, **options: queued.append(args[0])
    )
    with django_capture_on_commit_callbacks(execute=True):
        waiting = statistician.get("/analytics/survival/", scored.query)
    assert waiting.status_code == 200 and b"data-reload-when-done" in waiting.content
    job = Job.objects.get(kind=Job.Kind.ANALYSIS)
    assert queued == [job.pk] and job.parameters["section"] == "survival"
    assert f'hx-get="/jobs/{job.pk}/progress/"'.encode() in waiting.content
    # A second visit while it runs waits for the same job.
    statistician.get("/analytics/survival/", scored.query)
    assert Job.objects.filter(kind=Job.Kind.ANALYSIS).count() == 1 and len(queued) == 1

    tasks.compute_dashboards(job.pk)  # what the cpu worker does
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.result["sections"][0] == "survival" and len(job.result["sections"]) == 5
    assert b"succeeded" in statistician.get(f"/jobs/{job.pk}/progress/").content
    done = statistician.get("/analytics/survival/", scored.query)
    assert done["X-Analytics-Cache"] == "hit" and b"figure-survival-km-risk-group" in done.content
    assert statistician.get("/analytics/subgroups/", scored.query)["X-Analytics-Cache"] == "hit"
