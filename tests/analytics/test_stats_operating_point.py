"""The operating point as a plain object (no Django): the rule, the calls, the stored form."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.stats import OperatingPoint, lock_operating_point, synthetic_cohort


@pytest.fixture
def point():
    frame = synthetic_cohort(150, seed=4)
    return lock_operating_point(
        model_version="pmpd-7",
        rule="fold_majority",
        fold_thresholds=[
            {"fold": k, "slice_threshold": 0.5, "patient_threshold": 0.5} for k in range(5)
        ],
        time=frame["overall_survival_days"],
        event=frame["death"],
        metastasis_risk_score=frame["metastasis_risk_score"],
        development_cohort="PanGenEU",
    )


def test_the_majority_rule_counts_fold_models_worked_by_hand(point):
    # fold positive fractions: 1.0, 0.75, 0.5, 0.25, 0.0 -> folds 0, 1, 2 call it (>= 0.5)
    rows = [[0.9] * 4, [0.9, 0.9, 0.9, 0.1], [0.9, 0.9, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1], [0.1] * 4]
    call, calls = point.calls(rows)
    assert call is True and [c.positive for c in calls] == [True, True, True, False, False]
    assert point.calls(rows[2:])[0] is False  # 1 of 3
    mean_rule = OperatingPoint.from_dict({**point.to_dict(), "rule": "mean_fraction"})
    assert mean_rule.calls(rows)[0] is True  # mean fraction 0.5 >= mean threshold 0.5
    assert point.calls([[0.1] * 4], folds=[3]) == (False, point.calls([[0.1] * 4], [3])[1])


def test_stored_form_round_trips_and_says_its_values(point):
    stored = point.to_dict()
    again = OperatingPoint.from_dict(stored)
    assert again.label == point.label == stored["label"]
    assert "fold 1: slice 0.500, patient 0.500" in point.label
    assert f"MRS cut {point.mrs_cutpoint:.4g}" in point.label and "pmpd-7" in point.label
    assert 0 < point.mrs_cutpoint_p_corrected <= 1
    assert np.isclose(point.slice_threshold, 0.5)
    with pytest.raises(ValueError, match="rule"):
        OperatingPoint.from_dict({**stored, "rule": "any"})
