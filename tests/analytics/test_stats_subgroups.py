"""Subgroup AUROCs, size and age groups, Wilson CI and metastases missed at imaging."""

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn import metrics

from analytics.stats import (
    AurocEstimate,
    NotComputable,
    age_groups,
    missed_at_imaging_flagged,
    subgroup_auroc,
    tumour_size_groups,
    wilson_interval,
)


def test_tumour_size_groups_are_right_closed():
    sizes = [10, 20, 20.5, 40, 41, np.nan]
    assert list(tumour_size_groups(sizes)) == [
        "<= 20 mm",
        "<= 20 mm",
        "20-40 mm",
        "20-40 mm",
        "> 40 mm",
        None,
    ]
    assert list(tumour_size_groups([25, 35], edges_mm=[30])) == ["<= 30 mm", "> 30 mm"]


def test_age_groups():
    """Issue 11 item 7: survminer's side, low = value <= cut (a 65-year-old is in "<= 65")."""
    assert list(age_groups([64.9, 65, 80, None])) == ["<= 65", "<= 65", "> 65", None]
    assert list(age_groups([60, 60.5], cut_years=60)) == ["<= 60", "> 60"]


def test_subgroup_auroc_matches_subset_auroc():
    rng = np.random.default_rng(1)
    n = 240
    labels = rng.integers(0, 2, n)
    scores = rng.normal(labels, 1.2)
    sex = rng.choice(["female", "male"], n).astype(object)
    sex[:5] = None
    location = np.where(labels == 1, "head", rng.choice(["head", "tail"], n)).astype(object)
    location[(location == "tail")] = "tail"
    table = subgroup_auroc(
        labels,
        scores,
        {"sex": sex, "location": location},
        level_order={"location": ["head", "body", "tail"]},
    )
    rows = {(row.variable, row.level): row for row in table.rows}
    female = sex == "female"
    assert rows[("sex", "female")].estimate.auroc == pytest.approx(
        metrics.roc_auc_score(labels[female], scores[female])
    )
    assert rows[("sex", "female")].n == int(female.sum())
    assert isinstance(rows[("location", "body")].estimate, NotComputable)
    assert isinstance(rows[("location", "tail")].estimate, NotComputable)  # negatives only
    assert "only one class" in rows[("location", "tail")].estimate.reason
    assert isinstance(table.overall, AurocEstimate)
    assert [row.level for row in table.rows][:2] == ["female", "male"]
    frame = table.to_frame()
    assert frame.iloc[0]["variable"] == "overall"
    assert json.dumps(table.to_dict(), allow_nan=False)


def test_wilson_interval_matches_scipy():
    lower, upper = wilson_interval(25, 38)
    reference = scipy_stats.binomtest(25, 38).proportion_ci(method="wilson")
    assert lower == pytest.approx(reference.low)
    assert upper == pytest.approx(reference.high)
    assert (round(lower, 3), round(upper, 3)) == (0.499, 0.788)
    assert wilson_interval(0, 10)[0] == 0.0
    assert all(np.isnan(wilson_interval(0, 0)))


def test_missed_at_imaging():
    labels = [1, 1, 1, 1, 1, 0, 1]
    detection = ["laparoscopy", "Surgery ", "radiology", "surgery", "laparoscopy", "surgery", None]
    scores = [0.9, 0.2, 0.95, 0.7, np.nan, 0.99, 0.9]
    result = missed_at_imaging_flagged(labels, detection, scores, threshold=0.5)
    # Missed and scored: rows 0, 1, 3 -> flagged 0 and 3.
    assert (result.n_flagged, result.n_missed) == (2, 3)
    assert result.n_missing_score == 1
    assert result.proportion == pytest.approx(2 / 3)
    assert result.formatted().startswith("2/3 = 66.7%")
    none_missed = missed_at_imaging_flagged([1, 0], ["radiology", None], [0.9, 0.1], threshold=0.5)
    assert isinstance(none_missed, NotComputable)
    no_threshold = missed_at_imaging_flagged([1], ["surgery"], [0.9], threshold=float("nan"))
    assert isinstance(no_threshold, NotComputable)
