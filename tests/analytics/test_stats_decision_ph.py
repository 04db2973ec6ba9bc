"""Decision curves and the proportional-hazards check (issue 11 item 5).

Decision curves against a case worked by hand (Vickers & Elkin 2006's net benefit); the
proportional-hazards check against R's ``cox.zph`` (survival 2.x, transform "km") on the
NCCTG lung data shipped with lifelines: ``cox.zph(coxph(Surv(time, status) ~ age + sex +
wt.loss, lung))`` printed

               rho  chisq     p
    age    -0.0483  0.378 0.538
    sex     0.1265  2.349 0.125
    wt.loss 0.0126  0.024 0.877
    GLOBAL      NA  2.846 0.416

(as printed in the STHDA tutorial "Cox Model Assumptions", survival 2.x; quoted from that
tutorial, not re-run in R here, and the page could not be re-fetched offline: every printed digit
is reproduced, which a wrong reference would hardly allow). lifelines' own
``proportional_hazard_test(..., time_transform="km")`` uses the right-continuous KM and does
not give these numbers; ours uses R's left-continuous one.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_lung
from lifelines.statistics import proportional_hazard_test

from analytics.catalogue import Results, entries
from analytics.stats import cox_regression, run_full_analysis, synthetic_cohort
from analytics.stats.decision_curve import decision_curve, net_benefit
from analytics.stats.proportional_hazards import schoenfeld_residuals, schoenfeld_test

LABELS = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
PROBABILITIES = np.array([0.9, 0.6, 0.3, 0.5, 0.25, 0.1, 0.1, 0.05, 0.05, 0.01])


def test_net_benefit_worked_by_hand():
    # At p_t = 0.2: flagged 0.9, 0.6, 0.3, 0.5, 0.25 -> TP 3, FP 2; weight 0.2/0.8 = 0.25.
    # MRS: 3/10 - 2/10 * 0.25 = 0.25; treat all: 3/10 - 7/10 * 0.25 = 0.125.
    # The rule flags patients 1 and 4 (TP 1, FP 1): 1/10 - 1/10 * 0.25 = 0.075 at 0.2 and
    # 1/10 - 1/10 * 1 = 0 at 0.5.
    rule = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=float)
    result = decision_curve(LABELS, {"MRS": PROBABILITIES, "rule": rule}, thresholds=[0.2, 0.5])
    assert result.net_benefit["MRS"][0] == pytest.approx(0.25)
    assert result.net_benefit["treat all"][0] == pytest.approx(0.125)
    assert result.net_benefit["treat none"].tolist() == [0.0, 0.0]
    assert result.net_benefit["rule"].tolist() == pytest.approx([0.075, 0.0])
    # At 0.5: flagged 0.9, 0.6, 0.5 -> TP 2, FP 1: 0.2 - 0.1 = 0.1; treat all 0.3 - 0.7 = -0.4
    assert result.net_benefit["MRS"][1] == pytest.approx(0.1)
    assert result.net_benefit["treat all"][1] == pytest.approx(-0.4)
    assert net_benefit(LABELS, PROBABILITIES >= 0.2, 0.2) == pytest.approx(0.25)
    frame = result.to_frame()
    assert set(frame["strategy"]) == {"MRS", "rule", "treat all", "treat none"}


def test_a_patient_missing_a_strategy_input_is_left_out_of_it():
    rule = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, np.nan])
    result = decision_curve(LABELS, {"rule": rule}, thresholds=[0.2])
    assert result.n["rule"] == 9 and result.n_missing["rule"] == 1
    assert result.net_benefit["rule"][0] == pytest.approx(1 / 9 - 1 / 9 * 0.25)


@pytest.mark.slow
def test_the_full_analysis_draws_the_paper_strategies():
    frame = synthetic_cohort(200, seed=5)
    curves = run_full_analysis(frame).decision_curves
    assert {"MRS", "CA19-9 > 500 U/mL", "risk group high", "risk group mid or high"} <= set(
        curves.net_benefit
    )
    assert curves.thresholds[0] == 0.01 and curves.thresholds[-1] == 0.99


@pytest.fixture
def lung():
    data = load_lung()[["time", "status", "age", "sex", "wt.loss"]].dropna()
    return data.reset_index(drop=True)


def test_schoenfeld_test_reproduces_cox_zph_on_lung(lung):
    fitter = CoxPHFitter().fit(lung, "time", "status", fit_options={"precision": 1e-12})
    check = schoenfeld_test(fitter, lung)
    assert check.terms == ("age", "sex", "wt.loss")
    assert check.rho == pytest.approx((-0.0483, 0.1265, 0.0126), abs=5e-5)
    assert check.chi_square == pytest.approx((0.378, 2.349, 0.024), abs=5e-4)
    assert check.p_values == pytest.approx((0.538, 0.125, 0.877), abs=5e-4)
    assert check.global_chi_square == pytest.approx(2.846, abs=5e-4)
    assert check.global_p_value == pytest.approx(0.416, abs=5e-4)
    assert check.violated == () and "not rejected" in check.flag
    # lifelines' "km" transform is not cox.zph's (right- vs left-continuous Kaplan-Meier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = proportional_hazard_test(fitter, lung, time_transform="km")
    assert np.asarray(theirs.test_statistic)[1] != pytest.approx(2.349, abs=5e-4)


def test_vectorised_schoenfeld_residuals_equal_lifelines(lung):
    fitter = CoxPHFitter().fit(lung, "time", "status", fit_options={"precision": 1e-12})
    theirs = fitter.compute_residuals(lung, kind="schoenfeld")
    times, ours = schoenfeld_residuals(
        lung[["age", "sex", "wt.loss"]].to_numpy(float),
        lung["time"].to_numpy(float),
        lung["status"].to_numpy(float),
        fitter.params_.to_numpy(),
    )
    expected = theirs.assign(time=lung.loc[theirs.index, "time"]).sort_values("time")
    order = np.argsort(times, kind="mergesort")
    assert np.allclose(np.sort(times), expected["time"])
    by_time = pd.DataFrame(ours[order]).assign(time=times[order]).groupby("time").sum()
    assert np.allclose(
        by_time.to_numpy(), expected.groupby("time")[["age", "sex", "wt.loss"]].sum(), atol=1e-8
    )


def test_every_cox_model_carries_the_check_and_flags_a_violation():
    rng = np.random.default_rng(4)
    n = 300
    group = rng.integers(0, 2, n)
    # crossing hazards: group 1 dies early or lives long, group 0 in between
    early = rng.random(n) < 0.5
    time = np.where(
        group == 1,
        np.where(early, rng.exponential(20, n), rng.exponential(600, n)),
        rng.exponential(150, n),
    )
    data = pd.DataFrame({"time": time + 1, "death": 1, "group": group.astype(float)})
    model = cox_regression(data, duration_col="time", event_col="death", variables=["group"])
    check = model.proportional_hazards
    assert check.p_values[0] < 0.05 and check.violated == ("group", "GLOBAL")
    assert model.ph_flag.startswith("PROPORTIONAL HAZARDS VIOLATED")
    assert "group" in model.ph_flag


@pytest.mark.slow
def test_the_dashboards_show_decision_curves_and_a_check_beside_the_cox_table():
    analysis = run_full_analysis(synthetic_cohort(200, seed=5))
    items = {(e.section, e.kind, e.name): e for e in entries(Results(False, analysis))}
    curves = items[("evaluation", "figure", "decision-curves")]
    drawn = curves.figure()
    assert {trace.name.split(" (n")[0] for trace in drawn.data} >= {"MRS", "treat all"}
    check = items[("cox", "table", "ph-risk-groups")]
    table = check.frame()
    assert "GLOBAL" in set(table["term"]) and "PH violated (p < 0.05)" in table.columns
    cox = items[("cox", "table", "cox-risk-groups")].frame()
    assert cox["proportional hazards (cox.zph)"].iloc[0] == analysis.cox_risk_groups.ph_flag
