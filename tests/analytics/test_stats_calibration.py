"""Calibration curve and Brier score against scikit-learn."""

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve as sklearn_calibration_curve
from sklearn.metrics import brier_score_loss

from analytics.stats import NotComputable, brier_score, calibration_curve


def test_matches_scikit_learn_quantile_bins():
    rng = np.random.default_rng(3)
    probabilities = rng.beta(2, 3, 500)
    labels = (rng.random(500) < probabilities).astype(int)
    result = calibration_curve(labels, probabilities, n_bins=8)
    observed, predicted = sklearn_calibration_curve(
        labels, probabilities, n_bins=8, strategy="quantile"
    )
    np.testing.assert_allclose(result.observed_fraction, observed)
    np.testing.assert_allclose(result.mean_predicted, predicted)
    assert result.counts.sum() == 500
    assert result.brier_score == pytest.approx(brier_score_loss(labels, probabilities))
    assert brier_score(labels, probabilities) == pytest.approx(
        brier_score_loss(labels, probabilities)
    )
    assert np.all(result.observed_lower <= result.observed_fraction)
    assert json.dumps(result.to_dict(), allow_nan=False)


def test_tied_probabilities_collapse_bins():
    result = calibration_curve([0, 1, 0, 1, 1, 0], [0.25, 0.25, 0.25, 0.75, 0.75, 0.75], n_bins=10)
    assert result.counts.sum() == 6
    assert len(result.counts) < 10


def test_not_computable_calibration():
    assert isinstance(calibration_curve([0, 1], [0.2, 1.4]), NotComputable)
    assert isinstance(calibration_curve([], []), NotComputable)
    assert isinstance(brier_score([0, 2], [0.1, 0.2]), NotComputable)
