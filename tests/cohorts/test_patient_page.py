"""The patient page's reading (issue 12 items 1 and 2): one call with its rule in words, the MRS
against its cut with the fold models as a strip of dots, the risk group, and a plain statement
when the signals disagree; and its panels drawn by each app's own tag (issue 15 item 2)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from engine_fixtures import make_ready_version
from factories import make_patient
from scored import make_scored_cohort

from analytics.services import patient_risk
from inference.models import PatientPrediction

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]


def store_prediction(patient, version, *, per_fold, fold_slices, call, sites, source="ensemble"):
    """A prediction as scoring stores it, with explicit per-fold slice probabilities."""
    mrs = sum(per_fold) / len(per_fold)
    return PatientPrediction.objects.create(
        patient=patient,
        model_version=version,
        source=source,
        metastasis_risk_score=mrs,
        mrs_std=None,
        mrs_min=min(per_fold),
        mrs_max=max(per_fold),
        mrs_per_fold=per_fold,
        positive_fraction=0.75,
        predicted_metastasis=call,
        site_probabilities=sites,
        slice_indices=[20, 21, 22, 23],
        slice_probabilities=fold_slices,
        n_slices=4,
        input_hash="f" * 64,
    )


@pytest.fixture
def scored_version(cohort):
    version = make_ready_version(cohort, name="pmpd-reading", is_active=True)
    make_scored_cohort(cohort, version, 80)
    return version


def page(client, cohort, study_id) -> str:
    response = client.get(f"/cohorts/{cohort.pk}/patients/{study_id}/")
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.slow
def test_a_patient_whose_signals_disagree_gets_one_reading_in_words(
    cohort, members, client_for, scored_version
):
    patient = make_patient(cohort, "PHX-0004", ca19_9_u_per_ml=35.0)
    positive, negative = [0.7, 0.6, 0.55, 0.1], [0.3, 0.2, 0.1, 0.1]
    store_prediction(
        patient,
        scored_version,
        per_fold=[0.02, 0.03, 0.04, 0.05, 0.06],
        fold_slices=[positive, positive, positive, negative, negative],
        call=True,
        sites={"none": 0.84, "liver": 0.1, "lung": 0.03, "peritoneum": 0.03},
    )
    cut = patient_risk(members["clinician"], patient).cutpoint
    assert cut is not None and cut > 0.04
    html = page(client_for(members["clinician"]), cohort, "PHX-0004")
    # One call, with the rule that made it in words.
    assert "Metastasis predicted</strong>: 3 of 5 fold models above their thresholds" in html
    assert "the stored call of model version pmpd-reading" in html
    # No red "metastasis" beside green "low": the call is drawn neutral and the page says why.
    assert 'class="reading-call mixed"' in html and 'class="reading-call yes"' not in html
    assert "The signals disagree; read the call with care." in html
    assert "The fold models are split: 3 of 5 call metastasis." in html
    assert "rates \u201cNo metastasis\u201d most likely (0.84) while the call is metastasis" in html
    assert f"is at or below the cut ({cut:.3f}), in the low MRS group" in html
    assert "The risk group is low while the call is metastasis." in html
    # The fold strip: five dots on the 0-1 scale, the cut marked, a text alternative.
    strip = re.search(r'<figure class="fold-strip">.*?</figure>', html, re.S).group(0)
    assert strip.count("<circle") == 5 and strip.count('class="dot above"') == 3
    assert 'class="cut"' in strip and f"cut {cut:.3f}" in strip
    assert 'role="img"' in strip and "fold 1 0.020, fold 2 0.030" in strip
    assert "The fold models disagree: 3 of 5 call metastasis" in html


@pytest.mark.slow
def test_an_agreeing_patient_and_an_out_of_fold_patient(
    cohort, members, client_for, scored_version
):
    agreeing = make_patient(cohort, "PHX-0001", ca19_9_u_per_ml=900.0)
    high = [0.9, 0.9, 0.8, 0.7]
    store_prediction(
        agreeing,
        scored_version,
        per_fold=[0.97, 0.98, 0.99, 0.96, 0.95],
        fold_slices=[high] * 5,
        call=True,
        sites={"none": 0.1, "liver": 0.8, "lung": 0.05, "peritoneum": 0.05},
    )
    client = client_for(members["clinician"])
    html = page(client, cohort, "PHX-0001")
    assert 'class="reading-call yes"' in html and "The signals disagree" not in html
    assert "All 5 fold models agree on metastasis" in html
    assert "±" not in html

    held_out = make_patient(cohort, "PHX-0002")
    version = make_ready_version(cohort, name="pmpd-oof", test_ids=["PHX-0002"])
    store_prediction(
        held_out,
        version,
        per_fold=[0.4],
        fold_slices=[[0.2, 0.1, 0.1, 0.1]],
        call=False,
        sites={"none": 0.7, "liver": 0.2},
        source="out_of_fold",
    )
    html = page(client, cohort, "PHX-0002")
    assert "Out-of-fold score: fold model 1 never saw this patient" in html
    strip = re.search(r'<figure class="fold-strip">.*?</figure>', html, re.S).group(0)
    assert strip.count("<circle") == 1 and "Out-of-fold MRS" in strip


@pytest.mark.slow
def test_the_predictions_table_says_the_rule(cohort, members, client_for, scored_version):
    html = client_for(members["clinician"]).get(f"/cohorts/{cohort.pk}/predictions/").content
    assert b"of 5 fold models above their thresholds" in html
    assert b"the same positive fraction can give different calls" in html


def test_outsiders_get_no_patient_page(cohort, members, client_for, scored_version):
    patient = scored_version.predictions.first().patient
    url = f"/cohorts/{cohort.pk}/patients/{patient.study_id}/"
    assert client_for(members["outsider"]).get(url).status_code == 404


def test_the_patient_page_view_imports_no_app_above_cohorts():
    tree = ast.parse((REPO / "pmpd_web/cohorts/views.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    above = {"inference", "analytics", "pmpd_web.imaging"}
    assert not {m for m in imported if any(m == a or m.startswith(a + ".") for a in above)}


@pytest.mark.slow
def test_the_patients_table_shows_results_sorts_and_filters_them(
    cohort, members, client_for, scored_version
):
    client = client_for(members["clinician"])
    html = client.get(f"/cohorts/{cohort.pk}/?sort=-metastasis_risk_score").content.decode()
    assert ">MRS</a>" in html and ">PMPD call</a>" in html and ">Risk group</a>" in html
    scores = [float(v) for v in re.findall(r'<td class="num">(0\.\d{3})</td><td>', html)]
    assert len(scores) == 80 and scores == sorted(scores, reverse=True)
    assert "call: the stored call of model version pmpd-reading" in html
    # The overview: every scored patient counted once, by call and risk group.
    overview = re.search(r'id="risk-overview".*?</section>', html, re.S).group(0)
    totals = re.findall(r'<td class="num">(\d+)</td></tr>', overview)
    assert sum(int(n) for n in totals) == 80
    low_only = client.get(f"/cohorts/{cohort.pk}/?risk_group=low&call=metastasis").content
    shown = int(re.search(rb"(\d+) of 80 patients shown", low_only).group(1))
    expected = int(re.findall(r"<td class=\"num\">(\d+)</td>", overview)[0])
    assert shown == expected
    # Roles whose table has no results see no result column.
    from pmpd_web.accounts.permissions import ROLE_ACTIONS, Action

    assert Action.VIEW_RESULTS not in ROLE_ACTIONS["reader"]
    reader_view = client_for(members["reader"]).get(f"/cohorts/{cohort.pk}/").content.decode()
    assert ">MRS</a>" not in reader_view and 'id="risk-overview"' not in reader_view
    assert "P-" in reader_view or "patients shown" in reader_view  # the table itself is there
    outsider_view = client_for(members["outsider"]).get(f"/cohorts/{cohort.pk}/")
    assert outsider_view.status_code == 404
