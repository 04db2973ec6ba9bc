"""Maximally selected rank statistic cut-point (survminer::surv_cutpoint / maxstat) by brute
force, CA19-9 groups and MRS x CA19-9 risk groups.

Published reference, not testable offline (survminer's ``myeloma`` data are not available
here): ``surv_cutpoint(myeloma, time = "time", event = "event", variables = "DEPDC1")`` gives
cutpoint 279.8, statistic 4.28.
"""

import json
import math

import numpy as np
import pytest

from analytics.stats import (
    CutpointResult,
    NotComputable,
    ca19_9_groups,
    dichotomise,
    logrank_scores,
    maxstat_cutpoint,
    risk_groups,
)


def scores_by_definition(time, event):
    """a_i = delta_i - sum_{j: t_j <= t_i} delta_j / (N - r_j + 1), r_j = #{k: t_k <= t_j}."""
    n = len(time)
    result = []
    for i in range(n):
        total = 0.0
        for j in range(n):
            if time[j] <= time[i]:
                rank_j = sum(1 for k in range(n) if time[k] <= time[j])
                total += event[j] / (n - rank_j + 1)
        result.append(event[i] - total)
    return np.array(result)


def brute_force(time, event, x, minprop=0.1, maxprop=0.9):
    """Every admissible cut and its standardised linear rank statistic, computed per cut."""
    scores = scores_by_definition(time, event)
    n = len(x)
    total = scores.sum()
    spread = n * np.sum(scores**2) - total**2
    lower, upper = max(1, math.floor(n * minprop)), math.floor(n * maxprop)
    cuts, statistics = [], []
    for cut in sorted(set(x))[:-1]:
        low = np.asarray(x) <= cut
        m = int(low.sum())
        if not lower <= m <= upper:
            continue
        expected = m / n * total
        variance = m * (n - m) / (n**2 * (n - 1)) * spread
        cuts.append(cut)
        statistics.append(abs(scores[low].sum() - expected) / math.sqrt(variance))
    return np.array(cuts), np.array(statistics)


@pytest.fixture(scope="module")
def small_case():
    rng = np.random.default_rng(4)
    n = 40
    x = np.round(rng.random(n), 1)  # ties in x
    time = np.round(rng.exponential(100 * (1.5 - x)), 0) + 1  # ties in time
    event = (rng.random(n) < 0.75).astype(int)
    return time, event, x


def test_logrank_scores_match_definition(small_case):
    time, event, _ = small_case
    np.testing.assert_allclose(logrank_scores(time, event), scores_by_definition(time, event))
    # Hand case: times 1 2 2 3, all events. Max-ranks 1 3 3 4.
    # a_1 = 1 - 1/4; a_2 = a_3 = 1 - (1/4 + 2 * 1/2); a_4 = 1 - (1/4 + 1 + 1/1).
    np.testing.assert_allclose(
        logrank_scores([1, 2, 2, 3], [1, 1, 1, 1]), [0.75, -0.25, -0.25, -1.25]
    )


def test_cutpoint_maximises_statistic_over_candidate_set(small_case):
    time, event, x = small_case
    result = maxstat_cutpoint(time, event, x)
    cuts, statistics = brute_force(time, event, x)
    np.testing.assert_allclose(result.candidate_cuts, cuts)
    np.testing.assert_allclose(result.candidate_statistics, statistics)
    assert result.statistic == pytest.approx(statistics.max())
    assert result.cutpoint == cuts[np.argmax(statistics)]


def test_candidate_set_respects_minprop_and_maxprop(small_case):
    time, event, x = small_case
    n = len(x)
    for minprop in (0.1, 0.25):
        result = maxstat_cutpoint(time, event, x, minprop=minprop)
        sizes = [int((x <= cut).sum()) for cut in result.candidate_cuts]
        assert min(sizes) >= math.floor(n * minprop)
        assert max(sizes) <= math.floor(n * (1 - minprop))
        admissible = [
            cut
            for cut in sorted(set(x))[:-1]
            if math.floor(n * minprop) <= (x <= cut).sum() <= math.floor(n * (1 - minprop))
        ]
        np.testing.assert_array_equal(result.candidate_cuts, admissible)
    assert result.maxprop == pytest.approx(0.75)


def test_low_group_is_at_or_below_the_cut(small_case):
    time, event, x = small_case
    result = maxstat_cutpoint(time, event, x)
    expected = np.where(x <= result.cutpoint, "low", "high")
    np.testing.assert_array_equal(result.groups, expected)
    assert result.n_low == int((x <= result.cutpoint).sum())
    assert result.n_low + result.n_high == len(x)
    assert json.dumps(result.to_dict(), allow_nan=False)


def test_missing_values_are_dropped_like_na_omit(small_case):
    time, event, x = small_case
    x_missing = x.astype(float).copy()
    x_missing[:3] = np.nan
    result = maxstat_cutpoint(time, event, x_missing)
    reference = maxstat_cutpoint(time[3:], event[3:], x[3:])
    assert result.n == len(x) - 3 and result.n_missing == 3
    assert result.cutpoint == reference.cutpoint
    assert result.statistic == pytest.approx(reference.statistic)
    assert list(result.groups[:3]) == [None, None, None]


def test_large_sample_is_fast_and_consistent():
    rng = np.random.default_rng(0)
    n = 10_000
    x = rng.random(n)
    time = rng.exponential(1 / np.exp(x))
    event = (rng.random(n) < 0.8).astype(int)
    result = maxstat_cutpoint(time, event, x)
    assert isinstance(result, CutpointResult)
    assert result.candidate_cuts.size == math.floor(0.9 * n) - math.floor(0.1 * n) + 1


def test_not_computable_cutpoints():
    all_censored = maxstat_cutpoint([1, 2, 3, 4], [0, 0, 0, 0], [1, 2, 3, 4])
    assert isinstance(all_censored, NotComputable) and "censored" in all_censored.reason
    constant = maxstat_cutpoint([1, 2, 3, 4, 5], [1, 1, 0, 1, 1], [2, 2, 2, 2, 2])
    assert isinstance(constant, NotComputable)
    one_patient = maxstat_cutpoint([1], [1], [0.3])
    assert isinstance(one_patient, NotComputable)


def test_ca19_9_groups_at_500():
    groups = ca19_9_groups([12.0, 500.0, 500.1, np.nan, 4000])
    assert list(groups) == ["low", "low", "high", None, "high"]
    assert list(dichotomise([0.2, 0.5, 0.7], 0.5)) == ["low", "low", "high"]


def test_risk_groups():
    mrs = ["high", "high", "low", "low", "high", None]
    ca = ["high", "low", "high", "low", None, "low"]
    assert list(risk_groups(mrs, ca)) == ["high", "mid", "mid", "low", "unknown", "unknown"]
    with pytest.raises(ValueError, match="low"):
        risk_groups(["medium"], ["low"])
