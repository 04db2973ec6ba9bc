"""run_full_analysis: every section computed or explained, and JSON-serialisable."""

import json

import numpy as np
import pytest

from analytics.stats import (
    AnalysisOptions,
    AnalysisResult,
    BinaryClassificationResult,
    CoxResult,
    CutpointResult,
    KaplanMeierResult,
    NotComputable,
    run_full_analysis,
    synthetic_cohort,
)


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(300, seed=3)


@pytest.fixture(scope="module")
def analysis(cohort):
    return run_full_analysis(cohort, options=AnalysisOptions(synthetic=True))


@pytest.mark.slow
def test_every_section_is_computed_on_a_complete_cohort(analysis):
    assert isinstance(analysis, AnalysisResult)
    sections = analysis.sections()
    not_computed = {name: value.reason for name, value in sections.items() if not value.computable}
    # Slice scores were not given; everything else is computable on 300 synthetic patients.
    assert set(not_computed) == {"classification/slice"}
    assert isinstance(analysis.mrs_cutpoint, CutpointResult)
    assert isinstance(analysis.kaplan_meier["risk_group"], KaplanMeierResult)
    assert isinstance(analysis.cox_multivariable, CoxResult)
    assert analysis.cox_multivariable.adjusted_for == ("age_at_diagnosis_years", "sex", "centre")
    terms = [term.term for term in analysis.cox_risk_groups.terms]
    assert terms[:2] == ["risk_group[high]", "risk_group[mid]"]


@pytest.mark.slow
def test_result_is_json_serialisable(analysis):
    payload = analysis.to_dict()
    text = json.dumps(payload, allow_nan=False)
    assert payload["synthetic"] is True
    assert payload["classification"]["patient_mrs"]["computable"] is True
    assert payload["classification"]["slice"]["computable"] is False
    assert "reason" in payload["classification"]["slice"]
    assert json.loads(text)["n_patients"] == 300
    assert len(payload["patient_groups"]) == 300


def test_patient_groups_follow_the_rules(cohort, analysis):
    groups = analysis.patient_groups
    cut = analysis.mrs_cutpoint.cutpoint
    high_mrs = cohort["metastasis_risk_score"] > cut
    assert (groups["mrs_group"] == np.where(high_mrs, "high", "low")).all()
    missing_ca = cohort["ca19_9_u_per_ml"].isna()
    assert (groups.loc[missing_ca, "risk_group"] == "unknown").all()
    both_high = high_mrs & (cohort["ca19_9_u_per_ml"] > 500)
    assert (groups.loc[both_high, "risk_group"] == "high").all()


def test_printed_summary_and_frame(analysis):
    text = str(analysis)
    assert "SYNTHETIC DATA" in text
    assert "Kaplan-Meier" in text
    frame = analysis.to_frame()
    assert set(frame.columns) == {"section", "computable", "reason"}


def test_optional_columns_absent(cohort):
    minimal = cohort[["study_id", "metastasis_risk_score", "metastasis_label"]]
    result = run_full_analysis(minimal)
    assert isinstance(result.classification["patient_mrs"], BinaryClassificationResult)
    for section in (
        result.folds,
        result.sites,
        result.missed_at_imaging,
        result.development,
        result.mrs_cutpoint,
        result.cox_multivariable,
    ):
        assert isinstance(section, NotComputable)
        assert "absent" in section.reason
    assert isinstance(result.kaplan_meier["mrs_group"], NotComputable)
    assert json.dumps(result.to_dict(), allow_nan=False)


def test_bad_values_are_reported_not_raised(cohort):
    broken = cohort.head(120).copy()
    broken["metastasis_label"] = broken["metastasis_label"].astype(object)
    broken.loc[broken.index[0], "metastasis_label"] = "yes"
    broken["death"] = 0  # everyone censored
    broken["ca19_9_u_per_ml"] = np.nan
    result = run_full_analysis(broken, options=AnalysisOptions(mrs_cutpoint=0.5))
    assert any("metastasis_label" in note for note in result.data_notes)
    assert isinstance(result.kaplan_meier["mrs_group"].logrank, NotComputable)
    assert "censored" in result.kaplan_meier["mrs_group"].logrank.reason
    assert isinstance(result.cox_multivariable, NotComputable)
    assert (result.patient_groups["risk_group"] == "unknown").all()
    assert "fixed cut-point" in result.mrs_cutpoint.reason
    assert json.dumps(result.to_dict(), allow_nan=False)


@pytest.mark.slow
def test_slice_level_and_required_columns(cohort):
    slices = cohort[["metastasis_label"]].assign(slice_probability=cohort["metastasis_risk_score"])
    result = run_full_analysis(cohort.head(80), slices=slices)
    assert isinstance(result.classification["slice"], BinaryClassificationResult)
    assert result.classification["slice"].level == "slice"
    with pytest.raises(ValueError, match="metastasis_label"):
        run_full_analysis(cohort.drop(columns=["metastasis_label"]))
