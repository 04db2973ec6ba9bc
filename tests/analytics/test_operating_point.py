"""The locked operating point (issue 11 items 1 and 2): a development cohort scored out of fold
and an external cohort scored by the ensemble, one model version.

- the card holds the locked point, its MRS cut is maxstat on the out-of-fold MRS;
- the external cohort's metrics at the locked point equal those computed by hand from the
  stored calls, and its MRS groups use the locked cut (no cut is re-estimated on it);
- the re-tuned analysis exists only on request and says "re-tuned on this cohort (optimistic)"
  in its tables and figures;
- the across-fold AUROC band of the development cohort is computed from the stored folds;
- ``reading_for`` gives the call, the rule in words and the MRS against the locked cut.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from factories import make_cohort, make_user
from rest_framework.test import APIClient
from scored import make_development_cohort, make_model_version, make_scored_cohort
from sklearn.metrics import roc_auc_score

from analytics.stats import RETUNED_LABEL, maxstat_cutpoint
from inference.models import PatientPrediction
from inference.operating_point import lock_operating_point, operating_point_of, reading_for
from pmpd_web.accounts.models import Membership, Role

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(cohort, members):
    version = make_model_version("pmpd-locked-1")
    make_development_cohort(cohort, version, 120)
    external = make_cohort("External validation")
    make_scored_cohort(external, version, 90, seed=23, prefix="EXT")
    Membership.objects.create(user=members["statistician"], cohort=external, role=Role.STATISTICIAN)
    point = lock_operating_point(version)
    api = APIClient()
    api.force_login(members["statistician"])
    return version, cohort, external, point, api


def _predictions(version, cohort):
    return list(
        PatientPrediction.objects.filter(model_version=version, patient__cohort=cohort)
        .select_related("patient")
        .order_by("patient__study_id")
    )


@pytest.mark.slow
def test_the_card_holds_the_locked_point_and_its_cut_is_maxstat_of_the_out_of_fold_mrs(study):
    version, cohort, _, point, _ = study
    version.refresh_from_db()
    assert version.card["operating_point"] == version.operating_point
    assert operating_point_of(version).label == point.label
    assert [f.patient_threshold for f in point.folds] == [0.25, 0.375, 0.5, 0.625, 0.75]
    rows = _predictions(version, cohort)
    by_hand = maxstat_cutpoint(
        [p.patient.overall_survival_days for p in rows],
        [1 if p.patient.vital_status == "dead" else 0 for p in rows],
        [p.metastasis_risk_score for p in rows],
    )
    assert point.mrs_cutpoint == by_hand.cutpoint
    assert point.mrs_cutpoint_p_corrected == pytest.approx(by_hand.p_value_lau94)
    assert point.development_cohort == cohort.name and "pmpd-locked-1" in point.label


@pytest.mark.slow
def test_external_metrics_at_the_locked_point_equal_the_stored_calls_by_hand(study):
    version, _, external, point, api = study
    rows = _predictions(version, external)
    label = np.array([p.patient.metastasis_at_diagnosis == "yes" for p in rows])
    call = np.array([p.predicted_metastasis for p in rows])
    tp, fp = int((call & label).sum()), int((call & ~label).sum())
    tn, fn = int((~call & ~label).sum()), int((~call & label).sum())

    query = {"cohort": external.pk, "model_version": version.pk}
    body = api.get("/api/analytics/evaluation/", query).json()
    fraction = body["classification"]["patient_fraction"]
    matrix = fraction["at_threshold"]
    assert (matrix["true_positive"], matrix["false_positive"]) == (tp, fp)
    assert (matrix["true_negative"], matrix["false_negative"]) == (tn, fn)
    assert matrix["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert matrix["specificity"] == pytest.approx(tn / (tn + fp))
    assert fraction["threshold_source"] == point.label
    assert "locked at training (pmpd-locked-1)" in body["provenance"]["operating_point"]
    # The MRS is read at the locked cut, not at a Youden cut of this cohort.
    mrs = body["classification"]["patient_mrs"]
    assert mrs["at_threshold"]["threshold"] == pytest.approx(point.mrs_cutpoint)
    scores = np.array([p.metastasis_risk_score for p in rows])
    assert mrs["at_threshold"]["true_positive"] == int(
        ((scores >= point.mrs_cutpoint) & label).sum()
    )

    whole = api.get("/api/analytics/analysis/", query).content.decode()
    assert point.label in whole and "PanGenEU-like" not in whole  # the development cohort

    survival = api.get("/api/analytics/survival/", query).json()
    assert survival["mrs_cutpoint"]["computable"] is False
    assert "locked cut-point" in survival["mrs_cutpoint"]["reason"]
    curves = survival["kaplan_meier"]["mrs_group"]["curves"]
    groups = {name: curve["n"] for name, curve in curves.items()}
    assert groups["low"] == int((scores <= point.mrs_cutpoint).sum())
    assert groups["high"] == int((scores > point.mrs_cutpoint).sum())


@pytest.mark.slow
def test_the_retuned_analysis_is_asked_for_and_labelled(study, client_for, members):
    version, _, external, point, api = study
    query = {"cohort": external.pk, "model_version": version.pk}
    retuned = api.get("/api/analytics/evaluation/", {**query, "retune": "1"}).json()
    source = retuned["classification"]["patient_fraction"]["threshold_source"]
    assert source.startswith(RETUNED_LABEL)
    assert retuned["provenance"]["operating_point"].startswith(RETUNED_LABEL)
    survival = api.get("/api/analytics/survival/", {**query, "retune": "1"}).json()
    assert survival["mrs_cutpoint"]["computable"] is True

    page = client_for(members["statistician"]).get("/analytics/evaluation/", {**query, "retune": 1})
    html = page.content.decode()
    assert "Operating point: " + RETUNED_LABEL in html
    assert f"Operating point: {point.name} ({version.name}), NOT USED" in html
    assert '<option value="1" selected>re-tuned on this cohort (optimistic)' in html
    locked_page = client_for(members["statistician"]).get("/analytics/survival/", query)
    text = locked_page.content.decode()
    assert "TRIPOD+AI report" in text and '<option value="1" selected>' not in text
    assert "Operating point: " + RETUNED_LABEL not in text
    assert "log-rank p UNCORRECTED" not in text  # the locked cut was not chosen on these data
    retuned_survival = client_for(members["statistician"]).get(
        "/analytics/survival/", {**query, "retune": 1}
    )
    assert "log-rank p UNCORRECTED" in retuned_survival.content.decode()
    report = client_for(members["statistician"]).get("/analytics/report.html", query)
    assert f"<dt>Operating point</dt><dd>{point.label}</dd>" in report.content.decode()
    assert f"Operating point: {point.label}" in text
    figure = json.loads(
        re.search(
            r'<script type="application/json" id="figure-survival-km-mrs-group-json">'
            r"(.*?)</script>",
            text,
            re.S,
        ).group(1)
    )
    drawn_title = re.sub(r"</sup><br><sup>", " ", figure["layout"]["title"]["text"])
    assert f"Operating point: {point.label}</sup>" in drawn_title  # the figure says it too
    assert api.get("/api/analytics/evaluation/", {**query, "retune": "maybe"}).status_code == 400


@pytest.mark.slow
def test_the_development_cohort_has_its_fold_band(study):
    version, cohort, _, _, api = study
    body = api.get(
        "/api/analytics/evaluation/", {"cohort": cohort.pk, "model_version": version.pk}
    ).json()
    folds = body["folds"]
    assert folds["computable"] is True
    rows = _predictions(version, cohort)
    by_fold = [
        roc_auc_score(
            [p.patient.metastasis_at_diagnosis == "yes" for p in rows if p.fold == k],
            [p.metastasis_risk_score for p in rows if p.fold == k],
        )
        for k in range(5)
    ]
    summary = folds["auroc_summary"]
    assert summary["fold_aurocs"] == pytest.approx(by_fold)
    assert summary["mean"] == pytest.approx(np.mean(by_fold))
    assert summary["ci_lower"] < summary["mean"] < summary["ci_upper"]


@pytest.mark.slow
def test_reading_for_states_the_call_the_rule_and_the_mrs_against_the_cut(study):
    version, cohort, external, point, _ = study
    prediction = _predictions(version, external)[0]
    reading = reading_for(prediction)
    votes = sum(
        np.mean(np.asarray(row) >= f.slice_threshold) >= f.patient_threshold
        for row, f in zip(prediction.slice_probabilities, point.folds, strict=True)
    )
    assert reading.predicted_metastasis == (votes >= 3)
    assert reading.rule_in_words.startswith(f"{votes} of 5 fold models above their thresholds")
    side = "low" if prediction.metastasis_risk_score <= point.mrs_cutpoint else "high"
    assert reading.mrs_group == side and f"{point.mrs_cutpoint:.3f}" in reading.mrs_against_cut
    assert reading.to_dict()["operating_point"] == point.label

    held_out = _predictions(version, cohort)[3]
    reading = reading_for(held_out)
    assert reading.predicted_metastasis == held_out.predicted_metastasis
    assert reading.rule_in_words.startswith("fold model 4 (the one that held this patient out)")


@pytest.mark.slow
def test_the_tripod_report_of_the_version_and_its_validation_cohort(study, client_for, members):
    version, cohort, external, point, _ = study
    query = {"cohort": external.pk, "model_version": version.pk}
    page = client_for(members["statistician"]).get("/analytics/tripod.html", query)
    assert page.status_code == 200
    html = page.content.decode()
    assert f"TRIPOD+AI model report: {version.name}" in html
    assert point.label in html and "nothing is re-tuned on a validation cohort" in html
    assert html.index(cohort.name) < html.index("External validation")  # development first
    assert "development: internal validation" in html and "external validation: scored" in html
    assert html.count("TO BE COMPLETED BY THE AUTHORS") >= 10
    rows = _predictions(version, external)
    label = np.array([p.patient.metastasis_at_diagnosis == "yes" for p in rows])
    call = np.array([p.predicted_metastasis for p in rows])
    tp, fn = int((call & label).sum()), int((~call & label).sum())
    assert f"{tp / (tp + fn):.3f}" in html and f"{tp}/{tp + fn}" in html
    assert "Obuchowski (1997) clustered AUROC" in html and "Decision curves" in html
    download = client_for(members["statistician"]).get(
        "/analytics/tripod.html", {**query, "download": 1}
    )
    assert (
        "attachment" in download["Content-Disposition"]
        and "tripod" in download["Content-Disposition"]
    )
    # A statistician of the external cohort only may not see the development cohort's report.
    stranger = make_user("external-statistician")
    Membership.objects.create(user=stranger, cohort=external, role=Role.STATISTICIAN)
    assert client_for(stranger).get("/analytics/tripod.html", query).status_code == 404
    missing = client_for(members["statistician"]).get(
        "/analytics/tripod.html", {"cohort": external.pk}
    )
    assert missing.status_code == 400 and b"describes a model version" in missing.content


@pytest.mark.slow
def test_the_patient_page_reads_the_mrs_at_the_locked_cut(study, members):
    version, _, external, point, _ = study
    from analytics.services import patient_risk

    patient = _predictions(version, external)[5].patient
    risk = patient_risk(members["admin"], patient, version)
    assert risk.cutpoint == point.mrs_cutpoint
    assert risk.cutpoint_method.startswith(f"locked at the training of {version.name}")
    expected = "low" if risk.metastasis_risk_score <= point.mrs_cutpoint else "high"
    assert risk.mrs_group == expected


def test_versions_trained_before_the_point_get_their_folds_and_point(cohort):
    import importlib

    from django.apps import apps
    from django.core.management import call_command

    version = make_model_version("pmpd-older")
    make_development_cohort(cohort, version, 40)
    rows = _predictions(version, cohort)
    version.card = {
        "folds": [
            {"fold": k, "test_ids": [p.patient.study_id for p in rows if p.fold == k]}
            for k in range(5)
        ]
    }
    version.save(update_fields=["card"])
    PatientPrediction.objects.filter(model_version=version).update(fold=None)
    migration = importlib.import_module("inference.migrations.0002_operating_point_and_fold")
    migration.fill_out_of_fold_folds(apps, None)
    assert [p.fold for p in _predictions(version, cohort)] == [p.fold for p in rows]

    assert operating_point_of(version) is None
    output = io.StringIO()
    call_command("lock_operating_points", stdout=output)
    assert "[1/1] pmpd-older: locked at training (pmpd-older)" in output.getvalue()
    version.refresh_from_db()
    point = operating_point_of(version)
    assert point is not None and version.card["operating_point"] == version.operating_point
    assert version.card["folds"][0]["fold"] == 0  # the rest of the card is kept


@pytest.mark.slow
def test_the_card_shows_the_point_without_the_cohort_name_to_outsiders(study, members):
    from inference.services import card_for

    version, cohort, _, point, _ = study
    version.refresh_from_db()
    assert card_for(members["statistician"], version)["operating_point"]["development_cohort"] == (
        cohort.name
    )
    outsider = card_for(members["outsider"], version)["operating_point"]
    assert "development_cohort" not in outsider and outsider["label"] == point.label
