"""Metastasis development groups, group comparisons and early-vs-late ROC."""

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn import metrics

from analytics.stats import (
    DAYS_PER_MONTH,
    BinaryClassificationResult,
    DevelopmentResult,
    NotComputable,
    development_groups,
    metastasis_development_analysis,
)


def test_month_boundaries():
    assert DAYS_PER_MONTH == 30.4375
    days = [0, 91.3, 91.3125, 150, 182.625, 182.7, 400, np.nan, -3]
    assert list(development_groups(days)) == [
        "< 3 months",
        "< 3 months",
        "3-6 months",
        "3-6 months",
        "3-6 months",
        "> 6 months",
        "> 6 months",
        None,
        None,
    ]
    custom = development_groups([20, 40, 70], boundaries_months=(1, 2))
    assert list(custom) == ["< 1 months", "1-2 months", "> 2 months"]


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(9)
    days = np.ceil(rng.exponential(150, 80))
    mrs = np.clip(0.7 - days / 800 + rng.normal(0, 0.15, 80), 0, 1)
    return days, mrs


def test_group_tests_match_scipy(cohort):
    days, mrs = cohort
    result = metastasis_development_analysis(days, mrs)
    assert isinstance(result, DevelopmentResult)
    groups = development_groups(days)
    samples = [mrs[groups == name] for name in result.groups]
    reference = scipy_stats.kruskal(*samples)
    assert result.kruskal_wallis.statistic == pytest.approx(reference.statistic)
    assert result.kruskal_wallis.p_value == pytest.approx(reference.pvalue)
    assert result.kruskal_wallis.df == 2
    first = result.pairwise[0]
    # No ties and both groups under 50 patients: R's wilcox.test reports the exact p-value.
    assert max(len(samples[0]), len(samples[1])) < 50
    expected = scipy_stats.mannwhitneyu(samples[0], samples[1], method="exact")
    assert first.p_value == pytest.approx(expected.pvalue)
    assert first.u_statistic == pytest.approx(expected.statistic)
    raw = sorted(comparison.p_value for comparison in result.pairwise)
    holm = sorted(comparison.p_value_holm for comparison in result.pairwise)
    # Holm: 3 p, 2 p, 1 p in increasing order, made monotone and capped at 1.
    expected_holm = np.minimum(np.maximum.accumulate([3 * raw[0], 2 * raw[1], raw[2]]), 1)
    np.testing.assert_allclose(holm, expected_holm)
    assert json.dumps(result.to_dict(), allow_nan=False)


def test_mann_whitney_follows_r_rule_for_exact_p_values():
    rng = np.random.default_rng(12)
    small = metastasis_development_analysis(
        np.r_[rng.uniform(0, 90, 20), rng.uniform(200, 400, 20)], rng.random(40)
    )
    large = metastasis_development_analysis(
        np.r_[rng.uniform(0, 90, 60), rng.uniform(200, 400, 60)], rng.random(120)
    )
    tied = metastasis_development_analysis(
        [10, 20, 30, 300, 310, 320], [0.5, 0.5, 0.7, 0.1, 0.2, 0.3]
    )
    comparisons = {
        name: next(c for c in result.pairwise if c.computable)
        for name, result in (("small", small), ("large", large), ("tied", tied))
    }
    small_groups = [small.group_values[g] for g in ("< 3 months", "> 6 months")]
    large_groups = [large.group_values[g] for g in ("< 3 months", "> 6 months")]
    assert comparisons["small"].p_value == pytest.approx(
        scipy_stats.mannwhitneyu(*small_groups, method="exact").pvalue
    )
    assert comparisons["large"].p_value == pytest.approx(
        scipy_stats.mannwhitneyu(*large_groups, method="asymptotic").pvalue
    )
    tied_groups = [tied.group_values[g] for g in ("< 3 months", "> 6 months")]
    assert comparisons["tied"].p_value == pytest.approx(
        scipy_stats.mannwhitneyu(*tied_groups, method="asymptotic").pvalue
    )


def test_early_vs_late_roc_uses_early_as_positive(cohort):
    days, mrs = cohort
    result = metastasis_development_analysis(days, mrs)
    early3 = result.early_vs_late["< 3 vs >= 3 months"]
    early6 = result.early_vs_late["< 6 vs >= 6 months"]
    assert isinstance(early3, BinaryClassificationResult)
    months = days / DAYS_PER_MONTH
    assert early3.auroc.auroc == pytest.approx(metrics.roc_auc_score(months < 3, mrs))
    assert early6.auroc.auroc == pytest.approx(metrics.roc_auc_score(months < 6, mrs))
    assert early3.n_positive == int((months < 3).sum())
    cm = early3.at_threshold
    assert cm.threshold == early3.youden.threshold
    assert cm.true_positive + cm.false_negative == early3.n_positive


def test_not_computable_development():
    empty = metastasis_development_analysis([], [])
    assert isinstance(empty, NotComputable)
    only_early = metastasis_development_analysis([10, 20, 30], [0.5, 0.6, 0.7])
    assert isinstance(only_early.kruskal_wallis, NotComputable)
    assert all(isinstance(item, NotComputable) for item in only_early.pairwise)
    assert isinstance(only_early.early_vs_late["< 3 vs >= 3 months"], NotComputable)
    assert "empty group" in only_early.pairwise[0].reason
    assert "not computable" in str(only_early)
