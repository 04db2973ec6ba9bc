"""The patient page's PMPD section (the include and its context function) and the engine's
pages, rendered on stored predictions."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.template.loader import render_to_string
from engine_fixtures import make_prediction, make_ready_version
from factories import make_patient
from workers import REPO

from inference.services import prediction_context

pytestmark = pytest.mark.django_db

INCLUDE = "inference/_patient_prediction.html"


def render_for(user, patient, **kwargs) -> str:
    return render_to_string(INCLUDE, prediction_context(user, patient, **kwargs))


def test_the_section_shows_the_ensemble_score_with_its_spread(cohort, members):
    patient = make_patient(cohort, "P-1")
    version = make_ready_version(cohort, name="pmpd-v1", is_active=True, is_synthetic=True)
    prediction = make_prediction(patient, version, mrs=0.62)
    html = render_for(members["clinician"], patient)
    assert "How PMPD scored this patient" in html and "Research use only" in html
    assert "pmpd-v1" in html and "the active model version" in html
    assert "Synthetic data" in html
    # The fold scores one by one, never a mean ± SD that reads as a range beyond 0-1.
    assert "±" not in html
    for score in prediction.mrs_per_fold:
        assert f'<td class="num">{score:.3f}</td>' in html
    # Slice probabilities 0.7, 0.6, 0.55, 0.4 against 0.5: 3 of 4 positive in every fold.
    assert "Metastasis predicted</strong>: 5 of 5 fold models above their thresholds" in html
    assert html.count("above: metastasis") == 5 and "0.75" in html
    assert "All 5 fold models agree on metastasis" in html
    assert "Liver" in html and "Peritoneum" in html
    for position in range(4):
        assert (
            f"/cohorts/{cohort.pk}/patients/P-1/predictions/{prediction.pk}/gradcam/{position}.png"
            in html
        )
    assert "slice 40 (2 mm grid)" in html and "Fewer than 4" not in html


def test_the_section_for_a_training_patient_and_a_thin_tumour(cohort, members):
    patient = make_patient(cohort, "P-2")
    version = make_ready_version(cohort, name="pmpd-v2", test_ids=["P-2"])
    make_prediction(patient, version, source="out_of_fold", n_slices=2)
    html = render_for(members["clinician"], patient)
    assert "fold 1 held this patient out, so the score is out-of-fold" in html and "±" not in html
    assert "fold model 1, which never saw this patient, is above its threshold" in html
    assert "Out-of-fold score: fold model 1 never saw this patient" in html
    assert "the latest model version that scored this patient" in html
    assert "Synthetic data" not in html
    assert "Fewer than 4 tumour slices" in html and "Scored from 2 tumour slices" in html
    assert html.count("<img") == 2


def test_the_section_picks_the_version_and_says_when_nothing_scored(cohort, members):
    patient = make_patient(cohort, "P-3")
    assert "No PMPD model version has scored this patient yet." in render_for(
        members["clinician"], patient
    )
    older = make_ready_version(cohort, name="older")
    newer = make_ready_version(cohort, name="newer")
    make_prediction(patient, older, mrs=0.2)
    make_prediction(patient, newer, mrs=0.9)
    assert "newer" in render_for(members["clinician"], patient)
    assert "0.200" in render_for(members["clinician"], patient, model_version=older)


def test_the_section_is_empty_for_users_who_may_not_see_results(cohort, members):
    patient = make_patient(cohort, "P-4")
    make_prediction(patient, make_ready_version(cohort, name="v"))
    for username in ("outsider", "nobody"):
        assert render_for(members[username], patient).strip() == ""
        assert prediction_context(members[username], patient) == {
            "pmpd_prediction": {"allowed": False}
        }


@pytest.mark.slow
def test_the_predictions_page_and_the_api(cohort, members, client_for):
    version = make_ready_version(cohort, name="pmpd-v3", is_synthetic=True)
    for index, mrs in enumerate((0.3, 0.8)):
        make_prediction(make_patient(cohort, f"P-{index}"), version, mrs=mrs)
    client = client_for(members["clinician"])
    page = client.get(f"/cohorts/{cohort.pk}/predictions/")
    assert page.status_code == 200
    assert b"pmpd-v3" in page.content and b"0.800" in page.content
    assert b"trained on synthetic data" in page.content and b"Research use only" in page.content
    rows = client.get(f"/api/cohorts/{cohort.pk}/predictions/?study_id=P-1").json()["results"]
    assert [(row["study_id"], row["metastasis_risk_score"]) for row in rows] == [("P-1", 0.8)]
    row = rows[0]
    assert row["model_version_name"] == "pmpd-v3" and row["trained_on_synthetic_data"]
    assert len(row["mrs_per_fold"]) == 5 and len(row["gradcam_urls"]) == 4
    assert "Research use only" in row["intended_use"]
    image = client.get(row["gradcam_urls"][0])
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    one = client.get(f"/api/cohorts/{cohort.pk}/patients/P-0/predictions/").json()
    assert one["count"] == 1 and one["results"][0]["metastasis_risk_score"] == 0.3
    assert client.get(f"/api/cohorts/{cohort.pk}/patients/NOPE/predictions/").status_code == 404


def test_the_cohort_page_links_the_engine_for_coordinators_only(cohort, members, client_for):
    link = f"/cohorts/{cohort.pk}/engine/".encode()
    assert link in client_for(members["coordinator"]).get(f"/cohorts/{cohort.pk}/").content
    assert link not in client_for(members["clinician"]).get(f"/cohorts/{cohort.pk}/").content


@pytest.mark.slow
def test_the_engine_pages_and_tasks_load_without_torch():
    # Web processes import the pages and queue tasks; only workers need torch.
    code = (
        "import os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'pmpd_web.settings'); "
        "import django; django.setup(); "
        "import inference.urls, inference.services, inference.tasks, inference.demo; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
