"""Classification metrics against scikit-learn, hand-worked cases and an O(n^2) DeLong."""

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn import metrics

from analytics.stats import (
    AurocEstimate,
    BinaryClassificationResult,
    NotComputable,
    average_precision,
    confusion_at_threshold,
    delong_auroc,
    delong_auroc_covariance,
    evaluate_binary,
    fold_auroc_summary,
    fold_roc_summary,
    paired_delong_test,
    precision_recall_curve,
    roc_curve,
    site_roc,
    youden_threshold,
)


@pytest.fixture(scope="module")
def tied_scores():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 400)
    # Rounded scores: many ties, as with the fraction of 4 slices predicted positive.
    scores = np.round(rng.normal(labels * 0.9, 1.0), 1)
    return labels, scores


def structural_components(labels, scores):
    """DeLong's placements from the definition: psi(X, Y) = 1, 1/2, 0 over all pairs."""
    labels = np.asarray(labels)
    positives = np.atleast_2d(scores)[:, labels == 1]
    negatives = np.atleast_2d(scores)[:, labels == 0]
    k, m = positives.shape
    n = negatives.shape[1]
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    for r in range(k):
        for i in range(m):
            for j in range(n):
                psi = (
                    1.0
                    if positives[r, i] > negatives[r, j]
                    else 0.5
                    if positives[r, i] == negatives[r, j]
                    else 0.0
                )
                v10[r, i] += psi / n
                v01[r, j] += psi / m
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def test_auroc_and_curves_match_scikit_learn(tied_scores):
    labels, scores = tied_scores
    estimate = delong_auroc(labels, scores)
    assert estimate.auroc == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    curve = roc_curve(labels, scores)
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_array_equal(curve.thresholds, thresholds)
    assert curve.auroc == pytest.approx(estimate.auroc, abs=1e-12)
    full = roc_curve(labels, scores, drop_intermediate=False)
    fpr_full, tpr_full, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(full.fpr, fpr_full)
    np.testing.assert_allclose(full.tpr, tpr_full)


def test_precision_recall_and_average_precision_match_scikit_learn(tied_scores):
    labels, scores = tied_scores
    curve = precision_recall_curve(labels, scores)
    precision, recall, thresholds = metrics.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(curve.precision, precision)
    np.testing.assert_allclose(curve.recall, recall)
    np.testing.assert_allclose(curve.thresholds, thresholds)
    expected = metrics.average_precision_score(labels, scores)
    assert curve.average_precision == pytest.approx(expected, abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_confusion_metrics_match_scikit_learn(tied_scores):
    labels, scores = tied_scores
    threshold = 0.4
    result = confusion_at_threshold(labels, scores, threshold)
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = metrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    assert (result.true_negative, result.false_positive) == (tn, fp)
    assert (result.false_negative, result.true_positive) == (fn, tp)
    assert result.accuracy == pytest.approx(metrics.accuracy_score(labels, predicted))
    assert result.sensitivity == pytest.approx(metrics.recall_score(labels, predicted))
    assert result.specificity == pytest.approx(metrics.recall_score(labels, predicted, pos_label=0))
    assert result.ppv == pytest.approx(metrics.precision_score(labels, predicted))
    assert result.npv == pytest.approx(metrics.precision_score(labels, predicted, pos_label=0))
    assert result.f1 == pytest.approx(metrics.f1_score(labels, predicted))


def test_hand_worked_case():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8]
    # Pairs (pos, neg): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, .) yes twice -> 3/4.
    assert delong_auroc(labels, scores).auroc == pytest.approx(0.75)
    cm = confusion_at_threshold(labels, scores, 0.35)
    # score >= 0.35 is positive: 0.4 (neg), 0.35 and 0.8 (pos).
    assert (cm.true_positive, cm.false_positive, cm.true_negative, cm.false_negative) == (
        2,
        1,
        1,
        0,
    )
    assert cm.accuracy == pytest.approx(0.75)
    assert cm.sensitivity == pytest.approx(1.0)
    assert cm.specificity == pytest.approx(0.5)
    assert cm.ppv == pytest.approx(2 / 3)
    assert cm.npv == pytest.approx(1.0)
    assert cm.f1 == pytest.approx(0.8)
    youden = youden_threshold(labels, scores)
    # Thresholds 0.8: J=.5; 0.4: sens .5 spec .5 J=0; 0.35: J=.5; 0.1: J=0 -> highest of ties.
    assert youden.threshold == pytest.approx(0.8)
    assert youden.youden_j == pytest.approx(0.5)


def test_youden_is_the_maximum_of_the_roc(tied_scores):
    labels, scores = tied_scores
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores, drop_intermediate=False)
    youden = youden_threshold(labels, scores)
    assert youden.youden_j == pytest.approx(np.max(tpr - fpr))
    assert youden.threshold == thresholds[np.argmax(tpr - fpr)]


def test_delong_variance_matches_structural_components():
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    first = np.array([0.9, 0.8, 0.8, 0.4, 0.35, 0.8, 0.3, 0.3, 0.2, 0.1, 0.5])
    second = np.array([0.7, 0.9, 0.2, 0.6, 0.55, 0.5, 0.1, 0.6, 0.2, 0.3, 0.2])
    aucs, covariance = delong_auroc_covariance(labels, np.vstack([first, second]))
    expected_aucs, expected_covariance = structural_components(labels, np.vstack([first, second]))
    np.testing.assert_allclose(aucs, expected_aucs, atol=1e-12)
    np.testing.assert_allclose(covariance, expected_covariance, atol=1e-12)
    estimate = delong_auroc(labels, first)
    assert estimate.se == pytest.approx(np.sqrt(expected_covariance[0, 0]))
    z = scipy_stats.norm.ppf(0.975)
    assert estimate.ci_lower == pytest.approx(max(0, expected_aucs[0] - z * estimate.se))
    assert estimate.ci_upper == pytest.approx(min(1, expected_aucs[0] + z * estimate.se))


def test_paired_delong_symmetric_and_zero_for_identical_scores(tied_scores):
    labels, scores = tied_scores
    other = scores + np.random.default_rng(3).normal(0, 1.0, scores.size)
    forward = paired_delong_test(labels, scores, other)
    backward = paired_delong_test(labels, other, scores)
    assert forward.z == pytest.approx(-backward.z)
    assert forward.p_value == pytest.approx(backward.p_value)
    aucs, covariance = structural_components(labels[:60], np.vstack([scores[:60], other[:60]]))
    small = paired_delong_test(labels[:60], scores[:60], other[:60])
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    assert small.z == pytest.approx((aucs[0] - aucs[1]) / np.sqrt(variance))
    same = paired_delong_test(labels, scores, scores)
    assert same.z == 0.0
    assert same.p_value == 1.0
    assert same.difference == 0.0


def test_evaluate_binary_bundles_everything_and_serialises(tied_scores):
    labels, scores = tied_scores
    result = evaluate_binary(labels, scores, level="slice")
    assert isinstance(result, BinaryClassificationResult)
    assert result.threshold_source == "Youden"
    assert result.at_threshold.threshold == result.youden.threshold
    given = evaluate_binary(labels, scores, threshold=0.5)
    assert given.threshold_source == "given"
    assert given.at_threshold.threshold == 0.5
    payload = json.dumps(result.to_dict(), allow_nan=False)
    assert '"computable": true' in payload
    assert "AUROC" in str(result)
    assert list(result.to_frame().columns)[:3] == ["analysis", "level", "n"]


def test_missing_values_are_dropped_and_counted():
    labels = [1, 0, 1, None, 0, 1]
    scores = [0.9, 0.2, np.nan, 0.5, 0.4, 0.7]
    estimate = delong_auroc(labels, scores)
    assert estimate.n_missing == 2
    assert estimate.auroc == pytest.approx(1.0)


def test_fold_summary_uses_t_interval():
    aurocs = [0.80, 0.82, 0.79, 0.85, 0.81]
    summary = fold_auroc_summary(aurocs)
    half = scipy_stats.t.ppf(0.975, 4) * np.std(aurocs, ddof=1) / np.sqrt(5)
    assert summary.mean == pytest.approx(np.mean(aurocs))
    assert summary.ci_lower == pytest.approx(np.mean(aurocs) - half)
    assert summary.ci_upper == pytest.approx(np.mean(aurocs) + half)
    assert isinstance(fold_auroc_summary([0.8]), NotComputable)


def test_fold_roc_summary(tied_scores):
    labels, scores = tied_scores
    rng = np.random.default_rng(11)
    folds = {f"fold {k}": scores + rng.normal(0, 0.3, scores.size) for k in range(1, 6)}
    folds["fold 5"] = np.full(scores.size, np.nan)
    summary = fold_roc_summary(labels, folds)
    assert set(summary.fold_curves) == {"fold 1", "fold 2", "fold 3", "fold 4"}
    assert "fold 5" in summary.excluded
    assert summary.mean_tpr[0] == 0.0 and summary.mean_tpr[-1] == 1.0
    assert np.all(summary.tpr_lower <= summary.mean_tpr + 1e-12)
    assert np.all(summary.tpr_upper >= summary.mean_tpr - 1e-12)
    expected = [metrics.roc_auc_score(labels, folds[f"fold {k}"]) for k in range(1, 5)]
    np.testing.assert_allclose(summary.auroc_summary.fold_aurocs, expected)


def test_site_averages_match_scikit_learn():
    rng = np.random.default_rng(5)
    n = 300
    truth = np.column_stack(
        [rng.random(n) < 0.3, rng.random(n) < 0.08, rng.random(n) < 0.1]
    ).astype(int)
    scores = np.clip(truth * 0.3 + rng.random((n, 3)) * 0.8, 0, 1)
    sites = ("liver", "lung", "peritoneum")
    result = site_roc(
        {site: truth[:, k] for k, site in enumerate(sites)},
        {site: scores[:, k] for k, site in enumerate(sites)},
    )
    for average, value in (
        ("micro", result.micro_auroc),
        ("macro", result.macro_auroc),
        ("weighted", result.weighted_auroc),
    ):
        assert value == pytest.approx(metrics.roc_auc_score(truth, scores, average=average))
    for k, site in enumerate(sites):
        assert result.per_site[site].auroc == pytest.approx(
            metrics.roc_auc_score(truth[:, k], scores[:, k])
        )
    assert result.support == {site: int(truth[:, k].sum()) for k, site in enumerate(sites)}


def test_site_without_positives_is_excluded_from_averages():
    labels = {"liver": [1, 0, 1, 0], "lung": [0, 0, 0, 0]}
    scores = {"liver": [0.9, 0.1, 0.8, 0.3], "lung": [0.2, 0.1, 0.3, 0.4]}
    result = site_roc(labels, scores)
    assert isinstance(result.per_site["lung"], NotComputable)
    assert result.macro_auroc == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("labels", "scores", "fragment"),
    [
        ([1, 1, 1], [0.1, 0.5, 0.9], "only one class"),
        ([0, 0], [0.1, 0.2], "only one class"),
        ([], [], "no case"),
        ([np.nan, np.nan], [0.1, 0.2], "no case"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0 or 1"),
        (["yes", "no"], [0.1, 0.2], "labels must be 0 or 1"),
    ],
)
def test_not_computable_cases(labels, scores, fragment):
    for function in (
        delong_auroc,
        roc_curve,
        precision_recall_curve,
        youden_threshold,
        evaluate_binary,
    ):
        result = function(labels, scores)
        assert isinstance(result, NotComputable)
        assert fragment in result.reason
        assert result.to_dict()["computable"] is False
        assert fragment in str(result)


def test_delong_needs_two_per_class_for_a_ci():
    estimate = delong_auroc([1, 0, 0], [0.9, 0.1, 0.2])
    assert isinstance(estimate, AurocEstimate)
    assert estimate.auroc == 1.0
    assert np.isnan(estimate.ci_lower)
    assert "at least 2" in estimate.note
    assert estimate.to_dict()["ci_lower"] is None


def test_confusion_with_one_class_flags_undefined_metrics():
    result = confusion_at_threshold([1, 1], [0.9, 0.1], 0.5)
    assert np.isnan(result.specificity)
    assert any("specificity undefined" in note for note in result.notes)
    assert isinstance(confusion_at_threshold([], [], 0.5), NotComputable)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="same length"):
        delong_auroc([0, 1], [0.1, 0.2, 0.3])
