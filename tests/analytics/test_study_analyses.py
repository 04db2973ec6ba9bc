"""Issue 11 (items 6-8, end to end): a coordinator defines two study variables, imports a
table with them, and a statistician runs Kaplan-Meier, a cut-point and a Cox model on them
without a model version, through the API and the pages; every export reads back with pandas
and openpyxl. Synthetic data (a seeded generator), made for this test."""

from __future__ import annotations

import html
import io
import re

import numpy as np
import openpyxl
import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient
from tablemaker import NON_METASTATIC_ROW, to_csv

from analytics.analyses import OVERALL, cutpoint_for, prepare_frame
from analytics.stats import AnalysisOptions, maxstat_cutpoint
from pmpd_web.cohorts.models import table_columns

pytestmark = pytest.mark.django_db
N = 120


def api_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def study_rows(n: int = N, seed: int = 3) -> list[dict[str, str]]:
    """Patients whose survival shortens with ECOG and with weight loss above 10 %."""
    rng = np.random.default_rng(seed)
    ecog = rng.integers(0, 3, n)
    weight_loss = np.round(rng.uniform(0, 25, n), 1)
    hazard = 0.002 * np.exp(0.5 * ecog + 0.9 * (weight_loss > 10))
    days = np.minimum(rng.exponential(1 / hazard), 1500).astype(int) + 1
    dead = days < 1500
    rows = []
    for i in range(n):
        rows.append(
            {
                **NON_METASTATIC_ROW,
                "study_id": f"S-{i:04d}",
                "ca19_9_u_per_ml": "",
                "nccn_resectability": "",
                "developed_metastasis": "",
                "days_to_metastasis": "",
                "overall_survival_days": str(days[i]),
                "vital_status": "dead" if dead[i] else "alive",
                "ecog": str(ecog[i]),
                "weight_loss_pct": f"{weight_loss[i]:.1f}",
            }
        )
    return rows


@pytest.fixture
def study(cohort, members, django_capture_on_commit_callbacks):
    coordinator = api_for(members["coordinator"])
    url = f"/api/cohorts/{cohort.pk}/variables/"
    for body in (
        {
            "name": "ecog",
            "label": "ECOG performance status",
            "kind": "choice",
            "choices": ["0", "1", "2"],
        },
        {
            "name": "weight_loss_pct",
            "label": "Weight loss",
            "kind": "number",
            "unit": "%",
            "minimum": 0,
            "maximum": 60,
        },
    ):
        assert coordinator.post(url, body, format="json").status_code == 201
    data = to_csv(study_rows(), columns=[c.name for c in table_columns(cohort)])
    preview = coordinator.post(
        f"/api/cohorts/{cohort.pk}/imports/", {"file": SimpleUploadedFile("study.csv", data)}
    ).json()
    assert preview["status"] == "previewed", preview["problems"]
    with django_capture_on_commit_callbacks(execute=True):
        job = coordinator.post(f"/api/cohorts/{cohort.pk}/imports/{preview['id']}/commit/").json()
    assert coordinator.get(f"/api/jobs/{job['id']}/").json()["status"] == "succeeded"
    return api_for(members["statistician"])


@pytest.mark.slow
def test_kaplan_meier_cutpoint_and_cox_of_study_variables_through_the_api(study, cohort):
    base = f"cohort={cohort.pk}"
    km = study.get(f"/api/analytics/kaplan-meier/?{base}&group=ecog").json()
    medians = km["kaplan_meier"]["medians"]
    assert [m["group"] for m in medians] == ["0", "1", "2"]
    assert sum(m["n"] for m in medians) == N
    assert km["kaplan_meier"]["logrank"]["p_value"] < 0.05

    survival = study.get(f"/api/analytics/survival/?{base}&cutpoint_variable=weight_loss_pct")
    assert survival.status_code == 200, survival.json()
    cut = survival.json()["cutpoint"]["cutpoint"]
    frame = pd.DataFrame(study_rows())
    reference = maxstat_cutpoint(
        frame["overall_survival_days"].astype(float),
        (frame["vital_status"] == "dead").astype(float),
        frame["weight_loss_pct"].astype(float),
        minprop=0.1,
    )
    assert cut["cutpoint"] == pytest.approx(reference.cutpoint)
    groups = survival.json()["cutpoint"]["kaplan_meier"]["groups"]
    assert groups == [
        f"low (<= {reference.cutpoint:g})",
        f"high (> {reference.cutpoint:g})",
    ]
    overall = survival.json()["kaplan_meier"]["overall"]
    assert overall["groups"] == [OVERALL]

    cox = study.get(
        f"/api/analytics/cox/?{base}&variables=ecog,weight_loss_pct&adjust_for=&univariable=ecog"
    ).json()
    terms = {t["term"]: t for t in cox["multivariable"]["terms"]}
    assert set(terms) == {"ecog[1]", "ecog[2]", "weight_loss_pct"}
    assert terms["ecog[2]"]["hazard_ratio"] > 1 and terms["weight_loss_pct"]["hazard_ratio"] > 1
    assert cox["multivariable"]["n"] == N

    everything = study.get(f"/api/analytics/analysis/?{base}&cutpoint_variable=weight_loss_pct")
    body = everything.json()["analysis"]
    assert everything.status_code == 200 and body["model_version"] is None
    assert body["kaplan_meier"]["overall"]["groups"] == [OVERALL]
    assert body["cutpoint"]["cutpoint"]["cutpoint"] == pytest.approx(reference.cutpoint)
    # Issue 11 item 8: the default clinical model (CA19-9 group, resectability) is empty in
    # this study: the reason says so, not "no patient has a follow-up time and vital status".
    default_cox = body["cox"]["multivariable"]
    assert default_cox["computable"] is False
    assert default_cox["reason"].startswith(
        f"ca19_9_group, nccn_resectability are empty for all {N} patients with a follow-up "
        "time and vital status"
    ), default_cox["reason"]


def test_unknown_variable_names_the_study_variables(study, cohort):
    answer = study.get(f"/api/analytics/cox/?cohort={cohort.pk}&variables=karnofsky")
    assert answer.status_code == 400
    assert "ecog" in answer.json()["variables"] and "weight_loss_pct" in answer.json()["variables"]
    categorical = study.get(f"/api/analytics/survival/?cohort={cohort.pk}&cutpoint_variable=ecog")
    assert "is not a continuous variable" in categorical.json()["cutpoint_variable"]


def _links(page: str) -> list[str]:
    return sorted(
        set(
            html.unescape(link)
            for link in re.findall(r'href="(/analytics/[a-z-]+/(?:tables|figures)/[^"]+)"', page)
            if not link.split("?")[0].endswith("provenance.txt")  # text beside a table
        )
    )


def _csv_frame(data: bytes) -> pd.DataFrame:
    lines = data.decode("utf-8").splitlines()
    provenance = {i for i, line in enumerate(lines) if line.startswith("#")}
    return pd.read_csv(io.BytesIO(data), skiprows=lambda i: i in provenance)


@pytest.mark.slow
def test_pages_show_the_analyses_and_every_export_reads_back(study, cohort):
    query = f"cohort={cohort.pk}&group=ecog&cutpoint_variable=weight_loss_pct"
    survival = study.get(f"/analytics/survival/?{query}")
    assert survival.status_code == 200
    page = survival.content.decode()
    assert "Cut-point of weight_loss_pct" in page and "Overall survival by ecog" in page
    assert 'option value="weight_loss_pct" selected' in page
    cox = study.get(
        f"/analytics/cox/?cohort={cohort.pk}&variables=ecog&variables=weight_loss_pct&adjust_for="
    )
    assert cox.status_code == 200 and "weight_loss_pct" in cox.content.decode()
    links = _links(page) + _links(cox.content.decode())
    assert any("cutpoint-weight-loss-pct" in link for link in links)
    for link in links:
        response = study.get(link)
        assert response.status_code == 200, link
        if link.split("?")[0].endswith(".xlsx"):
            book = openpyxl.load_workbook(io.BytesIO(response.content))
            assert book.worksheets[0].max_row >= 1, link
            frame = pd.read_excel(io.BytesIO(response.content), sheet_name=0)
        else:
            frame = _csv_frame(response.content)
        assert isinstance(frame, pd.DataFrame), link
    cut_table = _csv_frame(
        study.get(f"/analytics/survival/tables/cutpoint-weight-loss-pct.csv?{query}").content
    )
    assert "weight_loss_pct" in cut_table.astype(str).to_numpy().ravel().tolist()
    # The clinical table itself, with the study variables, as the statistician exports it.
    for fmt in ("csv", "xlsx"):
        exported = study.get(f"/cohorts/{cohort.pk}/export.{fmt}")
        assert exported.status_code == 200
        if fmt == "xlsx":
            book = openpyxl.load_workbook(io.BytesIO(exported.content))
            assert [c.value for c in book["patients"][1]][-2:] == ["ecog", "weight_loss_pct"]
            table = pd.read_excel(io.BytesIO(exported.content), sheet_name="patients", dtype=str)
        else:
            table = pd.read_csv(io.BytesIO(exported.content), dtype=str, keep_default_na=False)
        assert len(table) == N
        assert sorted(table["ecog"].unique()) == ["0", "1", "2"]


def test_cutpoint_groups_follow_survminer_low_is_at_or_below_the_cut():
    """Issue 11 item 7: a value equal to the cut is low (surv_categorize)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "study_id": [f"P{i}" for i in range(60)],
            "overall_survival_days": rng.integers(10, 900, 60).astype(float),
            "death": rng.integers(0, 2, 60).astype(float),
            "metastasis_label": 0.0,
            "metastasis_risk_score": np.nan,
            "weight": np.repeat([50.0, 60.0, 70.0], 20),
        }
    )
    options = AnalysisOptions()
    result = cutpoint_for(prepare_frame(frame, options), "weight", options)
    cut = result.cutpoint.cutpoint
    low = result.kaplan_meier.curves[f"low (<= {cut:g})"]
    assert low.n == int((frame["weight"] <= cut).sum())


@pytest.mark.slow
def test_subgroups_take_a_study_variable_with_a_model_version(scored, members):
    from pmpd_web.cohorts.models import Patient, StudyVariable

    StudyVariable.objects.create(
        cohort=scored.cohort,
        name="treatment",
        label="Treatment",
        kind="choice",
        choices=["adjuvant", "none"],
    )
    patients = list(Patient.objects.filter(cohort=scored.cohort).order_by("study_id"))
    for index, patient in enumerate(patients):
        patient.study_values = {"treatment": "adjuvant" if index % 2 else "none"}
    Patient.objects.bulk_update(patients, ["study_values"])
    scored.cohort.bump_data_version()
    client = api_for(members["statistician"])
    query = f"cohort={scored.cohort.pk}&model_version={scored.version.pk}&subgroups=treatment"
    answer = client.get(f"/api/analytics/subgroups/?{query}")
    assert answer.status_code == 200, answer.json()
    rows = answer.json()["chosen"]["rows"]
    assert [(row["variable"], row["level"]) for row in rows] == [
        ("treatment", "adjuvant"),
        ("treatment", "none"),
    ]
    assert sum(row["n"] for row in rows) == len(patients)
    page = client.get(f"/analytics/subgroups/?{query}")
    assert "AUROC by the chosen subgroups (treatment)" in page.content.decode()


@pytest.mark.slow
def test_a_large_selection_is_analysed_by_a_job_that_knows_the_study_variables(
    study, cohort, settings
):
    from analytics import tasks
    from pmpd_web.jobs.models import Job

    settings.PMPD_ANALYTICS_INLINE_MAX = 50
    query = f"cohort={cohort.pk}&group=ecog&cutpoint_variable=weight_loss_pct"
    waiting = study.get(f"/analytics/survival/?{query}")
    # The test's transaction never commits: the job waits in its row, as for a busy worker.
    queued = list(
        Job.objects.filter(kind=Job.Kind.ANALYSIS, status="queued").values_list("pk", flat=True)
    )
    assert waiting.status_code == 200 and queued
    tasks.compute_dashboards(queued[0])  # what the cpu worker does
    job = Job.objects.get(pk=queued[0])
    assert job.status == "succeeded", job.error
    done = study.get(f"/analytics/survival/?{query}").content.decode()
    assert "Cut-point of weight_loss_pct" in done
