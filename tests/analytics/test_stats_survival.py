"""Survival analysis against R (NCCTG lung data) and hand-worked Kaplan-Meier cases.

lifelines ships R's ``survival::lung`` (228 rows, no rows dropped) with ``status`` recoded
to 1 = dead, 0 = censored (R codes 2 = dead, 1 = censored): 165 deaths as in R. Reference
values are R's printed output:

    coxph(Surv(time, status) ~ age + sex, lung)
        age  coef 0.017045  se 0.009223  p 0.0646
        sex  coef -0.513219 se 0.167458  HR 0.5986 (0.4311-0.8311)  p 0.00218
        Concordance= 0.603
    survdiff(Surv(time, status) ~ sex, lung): Chisq= 10.3 on 1 df, p= 0.00131 (10.3267)
    survfit(Surv(time, status) ~ sex, lung): medians 270 (212-310), 426 (348-550)
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_lung
from lifelines.statistics import multivariate_logrank_test
from scipy import stats as scipy_stats

from analytics.stats import (
    CoxResult,
    KaplanMeierCurve,
    NotComputable,
    adjusted_cox,
    cox_regression,
    cox_univariable,
    default_at_risk_times,
    harrell_c_index,
    kaplan_meier,
    kaplan_meier_by_group,
    logrank_test,
    numbers_at_risk,
)

Z = scipy_stats.norm.ppf(0.975)


@pytest.fixture(scope="module")
def lung():
    data = load_lung()
    assert len(data) == 228
    assert int(data["status"].sum()) == 165  # deaths: 1 = dead in lifelines' copy
    assert data[["time", "status", "age", "sex"]].notna().all().all()
    return data


@pytest.fixture(scope="module")
def lung_cox(lung):
    return cox_regression(lung, duration_col="time", event_col="status", variables=["age", "sex"])


def test_cox_matches_r_coxph(lung_cox):
    age = lung_cox.term("age")
    sex = lung_cox.term("sex")
    assert round(age.coef, 6) == 0.017045
    assert round(age.se, 6) == 0.009223
    assert round(age.p_value, 4) == 0.0646
    assert round(sex.coef, 6) == -0.513219
    assert round(sex.se, 6) == 0.167458
    assert round(sex.hazard_ratio, 4) == 0.5986
    assert round(sex.hr_lower, 4) == 0.4311
    assert round(sex.hr_upper, 4) == 0.8311
    assert round(sex.p_value, 5) == 0.00218
    assert round(lung_cox.concordance, 3) == 0.603
    assert lung_cox.n == 228 and lung_cox.n_events == 165 and lung_cox.n_dropped_missing == 0


def test_c_index_matches_r_concordance(lung, lung_cox):
    linear_predictor = (
        lung_cox.term("age").coef * lung["age"] + lung_cox.term("sex").coef * lung["sex"]
    )
    result = harrell_c_index(lung["time"], lung["status"], linear_predictor)
    assert round(result.c_index, 3) == 0.603
    # Higher risk score = worse prognosis: reversing the sign mirrors C around 0.5.
    mirrored = harrell_c_index(lung["time"], lung["status"], -linear_predictor)
    assert mirrored.c_index == pytest.approx(1 - result.c_index)


def test_logrank_matches_r_survdiff(lung):
    result = logrank_test(lung["time"], lung["status"], lung["sex"])
    assert round(result.chi_square, 4) == 10.3267
    assert result.df == 1
    assert round(result.p_value, 5) == 0.00131
    assert result.observed == (112.0, 53.0)
    assert [round(value, 1) for value in result.expected] == [91.6, 73.4]


def test_k_group_logrank_matches_lifelines(lung):
    data = lung.dropna(subset=["ph.ecog"])
    ours = logrank_test(data["time"], data["status"], data["ph.ecog"])
    reference = multivariate_logrank_test(data["time"], data["ph.ecog"], data["status"])
    assert ours.df == reference.degrees_of_freedom == 3
    assert ours.chi_square == pytest.approx(reference.test_statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(reference.p_value, rel=1e-9)


def test_kaplan_meier_medians_match_r_survfit(lung):
    result = kaplan_meier_by_group(lung["time"], lung["status"], lung["sex"], group_variable="sex")
    male, female = result.curves["1"], result.curves["2"]
    assert (male.median.median, male.median.ci_lower, male.median.ci_upper) == (270, 212, 310)
    assert (female.median.median, female.median.ci_lower, female.median.ci_upper) == (426, 348, 550)
    assert round(result.logrank.chi_square, 4) == 10.3267
    assert male.n == 138 and female.n == 90


def test_kaplan_meier_hand_worked_six_subjects():
    # time 1 2 2 3 4 5; event 1 1 0 1 0 1
    # t=1: n=6 d=1 -> S=5/6;  t=2: n=5 d=1 c=1 -> S=4/6;  t=3: n=3 d=1 -> S=4/9;
    # t=4: n=2 c=1 -> S=4/9;  t=5: n=1 d=1 -> S=0.
    curve = kaplan_meier([1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(curve.time, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(curve.n_risk, [6, 5, 3, 2, 1])
    np.testing.assert_array_equal(curve.n_event, [1, 1, 1, 0, 1])
    np.testing.assert_array_equal(curve.n_censor, [0, 1, 0, 1, 0])
    np.testing.assert_allclose(curve.survival, [5 / 6, 4 / 6, 4 / 9, 4 / 9, 0.0])
    # Greenwood: sum d / (n (n - d)) = 1/30, +1/20, +1/6, +0, then n = d (infinite).
    greenwood = np.array([1 / 30, 1 / 30 + 1 / 20, 1 / 30 + 1 / 20 + 1 / 6])
    np.testing.assert_allclose(curve.std_err[:3], np.sqrt(greenwood))
    assert curve.std_err[3] == pytest.approx(0.5)
    assert np.isinf(curve.std_err[4])
    # Greenwood SE of S itself at t = 1, 2, 3: 0.152145, 0.192450, 0.222222.
    np.testing.assert_allclose(
        curve.survival[:3] * curve.std_err[:3], [0.152145, 0.192450, 0.222222], atol=1e-6
    )
    # "log" CI: S exp(-/+ z se), upper capped at 1; NaN where S = 0 (R gives NA).
    s = np.array([5 / 6, 4 / 6, 4 / 9])
    np.testing.assert_allclose(curve.lower[:3], s * np.exp(-Z * np.sqrt(greenwood)))
    np.testing.assert_allclose(curve.upper[:3], np.minimum(s * np.exp(Z * np.sqrt(greenwood)), 1))
    assert curve.lower[0] == pytest.approx(0.582655, abs=1e-6)
    assert np.isnan(curve.lower[4]) and np.isnan(curve.upper[4])
    # Median: first time S <= 0.5 is 3; the lower curve drops below 0.5 at 2; the upper
    # curve never does (NA in R).
    assert curve.median.median == 3
    assert curve.median.ci_lower == 2
    assert math.isnan(curve.median.ci_upper)


def test_kaplan_meier_log_log_interval():
    curve = kaplan_meier([1, 2, 2, 3, 4, 5], [1, 1, 0, 1, 0, 1], conf_type="log-log")
    s = np.array([5 / 6, 4 / 6, 4 / 9])
    se = np.sqrt([1 / 30, 1 / 30 + 1 / 20, 1 / 30 + 1 / 20 + 1 / 6])
    # S^exp(+/- z se / log S), written as R does: exp(-exp(log(-log S) -/+ z se / log S)).
    lower = np.exp(-np.exp(np.log(-np.log(s)) - Z * se / np.log(s)))
    upper = np.exp(-np.exp(np.log(-np.log(s)) + Z * se / np.log(s)))
    np.testing.assert_allclose(curve.lower[:3], lower)
    np.testing.assert_allclose(curve.upper[:3], upper)
    assert curve.lower[0] == pytest.approx(0.273123, abs=1e-6)
    assert curve.upper[0] == pytest.approx(0.974712, abs=1e-6)
    assert np.all(curve.lower[:3] < s) and np.all(curve.upper[:3] > s)
    assert np.isnan(curve.lower[4])


def test_median_on_a_flat_stretch_at_one_half_is_the_midpoint():
    # S = 0.75, 0.5, 0.25, 0: flat at 0.5 between t = 2 and t = 3 -> R reports 2.5.
    assert kaplan_meier([1, 2, 3, 4], [1, 1, 1, 1]).median.median == 2.5
    # Curve ending at exactly 0.5: midpoint of the drop time and the last follow-up time.
    assert kaplan_meier([1, 2, 5, 9], [1, 1, 0, 0]).median.median == pytest.approx((2 + 9) / 2)


def test_numbers_at_risk():
    times = [1, 2, 2, 3, 4, 5]
    np.testing.assert_array_equal(numbers_at_risk(times, [0, 2, 2.5, 5, 6]), [6, 5, 3, 1, 0])
    np.testing.assert_array_equal(default_at_risk_times(1000), [0, 200, 400, 600, 800, 1000])
    np.testing.assert_array_equal(default_at_risk_times(1022), [0, 250, 500, 750, 1000])


def test_kaplan_meier_by_group_layout(lung):
    result = kaplan_meier_by_group(
        lung["time"],
        lung["status"],
        lung["sex"].map({1: "male", 2: "female"}),
        group_order=["male", "female", "other"],
        at_risk_times=[0, 250, 500],
    )
    assert result.groups == ("male", "female", "other")
    assert isinstance(result.curves["other"], NotComputable)
    assert result.at_risk["male"] == (138, 62, 20)
    assert result.at_risk["other"] == (0, 0, 0)
    assert round(result.logrank.chi_square, 4) == 10.3267
    payload = json.dumps(result.to_dict(), allow_nan=False)
    assert "male" in payload
    assert "Numbers at risk" in str(result)


def test_cox_categorical_reference_and_missing_rows(lung):
    data = lung.assign(
        sex_label=lung["sex"].map({1: "male", 2: "female"}),
        ecog=lung["ph.ecog"],
    )
    result = cox_regression(
        data,
        duration_col="time",
        event_col="status",
        variables=["age", "sex_label"],
        reference_levels={"sex_label": "male"},
    )
    term = result.term("sex_label[female]")
    assert round(term.coef, 6) == -0.513219
    assert term.reference == "male"
    default_reference = cox_regression(
        data, duration_col="time", event_col="status", variables=["sex_label"]
    )
    assert default_reference.reference_levels == {"sex_label": "female"}
    with_missing = cox_regression(
        data, duration_col="time", event_col="status", variables=["age", "ecog"]
    )
    assert with_missing.n_dropped_missing == 1
    assert with_missing.n == 227


def test_adjusted_cox_default_adjustment_and_single_valued_adjuster():
    rng = np.random.default_rng(2)
    n = 200
    frame = pd.DataFrame(
        {
            "time": rng.exponential(300, n).round() + 1,
            "death": rng.integers(0, 2, n),
            "metastasis_risk_score": rng.random(n),
            "age_at_diagnosis_years": rng.normal(66, 9, n),
            "sex": rng.choice(["female", "male"], n),
            "centre": "Barcelona",
        }
    )
    result = adjusted_cox(
        frame, duration_col="time", event_col="death", variables=["metastasis_risk_score"]
    )
    assert isinstance(result, CoxResult)
    assert result.adjusted_for == ("age_at_diagnosis_years", "sex")
    assert any("centre" in note for note in result.notes)
    assert [term.term for term in result.terms] == [
        "metastasis_risk_score",
        "age_at_diagnosis_years",
        "sex[male]",
    ]


def test_cox_univariable_table(lung):
    table = cox_univariable(lung, duration_col="time", event_col="status", variables=["age", "sex"])
    frame = table.to_frame()
    assert list(frame["term"]) == ["age", "sex"]
    assert json.dumps(table.to_dict(), allow_nan=False)


def test_not_computable_survival_cases():
    all_censored = logrank_test([1, 2, 3, 4], [0, 0, 0, 0], ["a", "a", "b", "b"])
    assert isinstance(all_censored, NotComputable) and "censored" in all_censored.reason
    one_group = logrank_test([1, 2, 3], [1, 0, 1], ["a", "a", "a"])
    assert isinstance(one_group, NotComputable) and "one group" in one_group.reason
    empty = kaplan_meier([], [])
    assert isinstance(empty, NotComputable)
    no_events = kaplan_meier([1, 2, 3], [0, 0, 0])
    assert isinstance(no_events, KaplanMeierCurve)
    assert math.isnan(no_events.median.median)
    frame = pd.DataFrame({"t": [1, 2, 3, 4, 5], "e": [1, 0, 0, 0, 0], "x": [1, 2, 3, 4, 5]})
    too_few = cox_regression(frame, duration_col="t", event_col="e", variables=["x"])
    assert isinstance(too_few, NotComputable) and "at least 2" in too_few.reason
    constant = cox_regression(
        frame.assign(e=[1, 1, 0, 1, 0], x=1.0), duration_col="t", event_col="e", variables=["x"]
    )
    assert isinstance(constant, NotComputable) and "single value" in constant.reason
    absent = cox_regression(frame, duration_col="t", event_col="e", variables=["missing"])
    assert isinstance(absent, NotComputable) and "missing" in absent.reason
    c_index = harrell_c_index([1, 2, 3], [0, 0, 0], [0.1, 0.2, 0.3])
    assert isinstance(c_index, NotComputable)
    bad_event = kaplan_meier([1, 2], [1, 2])
    assert isinstance(bad_event, NotComputable) and "event must be" in bad_event.reason
