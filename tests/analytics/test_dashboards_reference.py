"""R's reference results through the whole platform: the NCCTG lung data imported as a cohort
with the clinical table import, analysed through the REST API with a token, no model version.

R (survival package):

    coxph(Surv(time, status) ~ age + sex, lung)
        age  coef 0.017045  se 0.009223  p 0.0646
        sex  coef -0.513219 se 0.167458  HR 0.5986 (0.4311-0.8311)  p 0.00218
        Concordance= 0.603
    survdiff(Surv(time, status) ~ sex, lung): Chisq= 10.3 on 1 df, p= 0.00131 (10.3267)
    survfit(Surv(time, status) ~ sex, lung): medians 270 (212-310), 426 (348-550)

R codes sex numerically (1 male, 2 female), so its coefficient is that of female vs male: the
platform's default reference level of sex is male.
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from factories import make_cohort, make_token_key
from lifelines.datasets import load_lung
from rest_framework.test import APIClient
from tablemaker import to_csv

from pmpd_web.accounts.models import Membership, Role

pytestmark = pytest.mark.django_db


def lung_rows() -> list[dict[str, str]]:
    data = load_lung()
    return [
        {
            "study_id": f"LUNG-{index:03d}",
            "overall_survival_days": str(int(row.time)),
            "vital_status": "dead" if row.status == 1 else "alive",
            "age_at_diagnosis_years": str(int(row.age)),
            "sex": "male" if row.sex == 1 else "female",
            "metastasis_at_diagnosis": "unknown",
        }
        for index, row in enumerate(data.itertuples(index=False), start=1)
    ]


@pytest.fixture
def lung_cohort(members, django_capture_on_commit_callbacks):
    cohort = make_cohort("NCCTG lung")
    for role in (Role.COORDINATOR, Role.STATISTICIAN):
        Membership.objects.create(user=members[role.value], cohort=cohort, role=role)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {make_token_key(members['coordinator'])}")
    url = f"/api/cohorts/{cohort.pk}/imports/"
    preview = api.post(url, {"file": SimpleUploadedFile("lung.csv", to_csv(lung_rows()))}).json()
    assert preview["status"] == "previewed", preview["problems"][:3]
    with django_capture_on_commit_callbacks(execute=True):  # the job is published on commit
        job = api.post(f"{url}{preview['id']}/commit/").json()
    assert api.get(f"/api/jobs/{job['id']}/").json()["status"] == "succeeded"
    assert cohort.patients.count() == 228
    return cohort


@pytest.fixture
def statistician_api(members):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {make_token_key(members['statistician'])}")
    return api


@pytest.mark.slow
def test_cox_age_sex_matches_r_coxph(lung_cohort, statistician_api):
    response = statistician_api.get(
        "/api/analytics/cox/",
        {
            "cohort": lung_cohort.pk,
            "variables": "age_at_diagnosis_years,sex",
            "adjust_for": "",
            "univariable": "",
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["synthetic"] is False and body["provenance"]["model_version"] is None
    model = body["multivariable"]
    assert model["computable"] is True
    assert (model["n"], model["n_events"], model["n_dropped_missing"]) == (228, 165, 0)
    assert model["adjusted_for"] == [] and model["reference_levels"] == {"sex": "male"}
    terms = {term["term"]: term for term in model["terms"]}
    age, sex = terms["age_at_diagnosis_years"], terms["sex[female]"]
    assert round(age["coef"], 6) == 0.017045
    assert round(age["se"], 6) == 0.009223
    assert round(age["p_value"], 4) == 0.0646
    assert round(sex["coef"], 6) == -0.513219
    assert round(sex["se"], 6) == 0.167458
    assert round(sex["hazard_ratio"], 4) == 0.5986
    assert round(sex["hr_lower"], 4) == 0.4311
    assert round(sex["hr_upper"], 4) == 0.8311
    assert round(sex["p_value"], 5) == 0.00218
    assert round(model["concordance"], 3) == 0.603
    assert round(body["c_index"]["c_index"], 3) == 0.603


@pytest.mark.slow
def test_the_statistician_picks_the_reference_level(lung_cohort, statistician_api):
    body = statistician_api.get(
        "/api/analytics/cox/",
        {"cohort": lung_cohort.pk, "variables": "sex", "adjust_for": "", "reference": "sex:female"},
    ).json()
    (term,) = body["multivariable"]["terms"]
    assert term["term"] == "sex[male]" and round(term["coef"], 4) == 0.5310
    # The univariable table lists each chosen variable on its own.
    assert list(body["univariable"]["models"]) == ["sex"]


def test_survdiff_and_survfit_by_sex_match_r(lung_cohort, statistician_api):
    response = statistician_api.get(
        "/api/analytics/kaplan-meier/", {"cohort": lung_cohort.pk, "group": "sex"}
    )
    assert response.status_code == 200, response.content
    result = response.json()["kaplan_meier"]
    medians = {row["group"]: row for row in result["medians"]}
    male, female = medians["male"], medians["female"]
    assert (male["median"], male["ci_lower"], male["ci_upper"]) == (270, 212, 310)
    assert (female["median"], female["ci_lower"], female["ci_upper"]) == (426, 348, 550)
    assert (male["n"], female["n"]) == (138, 90)
    logrank = result["logrank"]
    assert round(logrank["chi_square"], 4) == 10.3267
    assert logrank["df"] == 1
    assert round(logrank["p_value"], 5) == 0.00131


@pytest.mark.slow
def test_clinical_survival_needs_no_model_version(lung_cohort, statistician_api, client):
    survival = statistician_api.get(
        "/api/analytics/survival/", {"cohort": lung_cohort.pk, "group": "sex"}
    ).json()
    assert survival["mrs_cutpoint"]["computable"] is False
    assert "model version" in survival["mrs_cutpoint"]["reason"]
    assert survival["custom"]["computable"] is True
    # No CA19-9 in the lung data: the curves say so instead of failing.
    assert survival["kaplan_meier"]["ca19_9_group"]["computable"] is False
    evaluation = statistician_api.get("/api/analytics/evaluation/", {"cohort": lung_cohort.pk})
    assert evaluation.json()["evaluation"]["computable"] is False
    client.force_login(lung_cohort.memberships.get(role=Role.STATISTICIAN).user)
    page = client.get("/analytics/survival/", {"cohort": lung_cohort.pk, "group": "sex"})
    assert page.status_code == 200
    assert b"figure-survival-km-sex" in page.content
    assert b"no model version was chosen" in page.content
