"""The analysis parameters of the dashboards and the API (pure: no database)."""

from __future__ import annotations

import pytest
from django.http import QueryDict

from analytics.parameters import AnalysisParameters, ParameterError, parse_parameters


def parse(query: str) -> AnalysisParameters:
    return parse_parameters(QueryDict(query))


def test_defaults_are_the_papers():
    params = parse("cohort=3&model_version=7")
    assert params.cohort_ids == (3,) and params.model_version_id == 7
    assert params.cox_variables == ("mrs_group", "ca19_9_group", "nccn_resectability")
    assert params.adjust_for == ("age_at_diagnosis_years", "sex", "centre")
    assert params.univariable_variables[:5] == (
        "mrs_per_0_1",
        "mrs_group",
        "ca19_9_group",
        "nccn_resectability",
        "risk_group",
    )
    options = params.options(synthetic=True)
    assert options.synthetic and options.mrs_cutpoint is None
    assert options.ca19_9_threshold_u_per_ml == 500 and options.cutpoint_minprop == 0.1
    assert options.reference_levels["sex"] == "male"
    assert options.reference_levels["nccn_resectability"] == "resectable"


def test_clinical_only_defaults():
    params = parse("cohort=3")
    assert not params.with_model
    assert params.cox_variables == ("ca19_9_group", "nccn_resectability")


def test_lists_repeats_and_empty_values():
    params = parse(
        "cohort=2,1&cohort=2&variables=age_at_diagnosis_years&variables=sex"
        "&adjust_for=&univariable=&reference=sex:female&reference=centre:Madrid"
    )
    assert params.cohort_ids == (1, 2)
    assert params.cox_variables == ("age_at_diagnosis_years", "sex")
    assert params.adjust_for == () and params.univariable_variables == ()
    assert params.reference_levels["sex"] == "female"
    assert params.reference_levels["centre"] == "Madrid"
    # The page's multi-selects send an empty value first: nothing selected = none.
    assert parse("cohort=1&adjust_for=&adjust_for=sex").adjust_for == ("sex",)


def test_numbers_and_choices():
    params = parse(
        "cohort=1&model_version=2&mrs_cutpoint=0.42&minprop=0.2&ca19_9_threshold=37"
        "&confidence_level=0.9&conf_type=log-log&at_risk_times=0,365,730&age_cut=70"
        "&size_edges=15,30,45&development_months=2,4&min_events=5&group=risk_group"
    )
    options = params.options(synthetic=False)
    assert options.mrs_cutpoint == 0.42 and options.cutpoint_minprop == 0.2
    assert options.ca19_9_threshold_u_per_ml == 37 and options.confidence_level == 0.9
    assert options.km_conf_type == "log-log" and options.at_risk_times_days == (0, 365, 730)
    assert options.age_cut_years == 70 and options.tumour_size_edges_mm == (15, 30, 45)
    assert options.development_boundaries_months == (2, 4) and options.min_events == 5
    assert params.group == "risk_group"
    assert params.to_dict()["reference"]["sex"] == "male"


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("", "cohort", "choose at least one cohort"),
        ("cohort=x", "cohort", "numbers"),
        ("cohort=1&model_version=v1", "model_version", "number"),
        ("cohort=1&variables=shoe_size", "variables", "unknown variable(s) shoe_size"),
        ("cohort=1&variables=mrs_group", "variables", "need(s) a model version"),
        ("cohort=1&group=age_at_diagnosis_years", "group", "cannot group curves"),
        ("cohort=1&reference=sex", "reference", "variable:level"),
        ("cohort=1&reference=age_at_diagnosis_years:60", "reference", "continuous"),
        ("cohort=1&confidence_level=95", "confidence_level", "between 0 and 1"),
        ("cohort=1&mrs_cutpoint=abc", "mrs_cutpoint", "not a number"),
        ("cohort=1&minprop=0.6", "minprop", "[0, 0.5)"),
        ("cohort=1&min_events=1.5", "min_events", "whole number"),
        ("cohort=1&conf_type=plain", "conf_type", "log or log-log"),
        ("cohort=1&at_risk_times=30,10", "at_risk_times", "increasing"),
        ("cohort=1&development_months=3", "development_months", "two increasing"),
        ("cohort=1&size_edges=0,20", "size_edges", "above 0"),
    ],
)
def test_errors_name_the_parameter(query, field, message):
    with pytest.raises(ParameterError) as raised:
        parse(query)
    assert message in raised.value.errors[field]
