"""The slice-level AUROC interval is patient-clustered (issue 11 item 3), Obuchowski (1997).

Reference values worked by hand: with one slice per patient the clustered variance is
DeLong's; with k identical slices per patient it is the DeLong variance of the patients (the
naive slice-level interval is sqrt(k) times too narrow, the defect); and on correlated slices
it agrees with a brute-force patient bootstrap (seeded).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analytics.stats import delong_auroc, evaluate_binary, run_full_analysis
from analytics.stats.clustered import obuchowski_auroc


def _patients(n: int = 60, seed: int = 3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2], labels[2:4] = 0, 1
    scores = rng.normal(labels * 1.0, 1.0)
    return labels, scores


def test_one_slice_per_patient_is_delong():
    labels, scores = _patients()
    auc, variance, n_clusters = obuchowski_auroc(labels, scores, np.arange(labels.size))
    delong = delong_auroc(labels, scores)
    assert n_clusters == labels.size
    assert auc == pytest.approx(delong.auroc, abs=1e-12)
    assert np.sqrt(variance) == pytest.approx(delong.se, rel=1e-10)


def test_four_identical_slices_carry_the_information_of_one():
    labels, scores = _patients()
    patient = np.repeat(np.arange(labels.size), 4)
    slice_labels, slice_scores = np.repeat(labels, 4), np.repeat(scores, 4)
    delong_patients = delong_auroc(labels, scores)
    naive = delong_auroc(slice_labels, slice_scores)
    auc, variance, _ = obuchowski_auroc(slice_labels, slice_scores, patient)
    assert auc == pytest.approx(delong_patients.auroc, abs=1e-12)
    assert np.sqrt(variance) == pytest.approx(delong_patients.se, rel=1e-10)
    # the defect: the independent-slices interval is about half as wide
    assert naive.se == pytest.approx(delong_patients.se / 2, rel=0.05)


@pytest.mark.slow
def test_agrees_with_a_brute_force_patient_bootstrap():
    rng = np.random.default_rng(11)
    n = 80
    labels = np.r_[np.zeros(40, int), np.ones(40, int)]
    patient_effect = rng.normal(labels * 0.8, 1.0)
    patient = np.repeat(np.arange(n), 4)
    slice_labels = labels[patient]
    slice_scores = patient_effect[patient] + rng.normal(0, 0.5, 4 * n)
    _, variance, _ = obuchowski_auroc(slice_labels, slice_scores, patient)
    boot = np.random.default_rng(2024)
    estimates = []
    for _ in range(1500):
        chosen = boot.choice(n, n, replace=True)
        rows = np.concatenate([np.flatnonzero(patient == p) for p in chosen])
        if slice_labels[rows].min() == slice_labels[rows].max():
            continue
        estimates.append(delong_auroc(slice_labels[rows], slice_scores[rows]).auroc)
    assert np.sqrt(variance) == pytest.approx(np.std(estimates, ddof=1), rel=0.1)


def test_the_slice_evaluation_says_it_is_clustered():
    labels, scores = _patients(40)
    slices = pd.DataFrame(
        {
            "patient_id": np.repeat(np.arange(40), 4),
            "slice_probability": 1 / (1 + np.exp(-np.repeat(scores, 4))),
            "metastasis_label": np.repeat(labels, 4),
        }
    )
    result = evaluate_binary(
        slices["metastasis_label"], slices["slice_probability"], clusters=slices["patient_id"]
    )
    assert result.auroc.method.startswith("Obuchowski (1997) clustered AUROC")
    assert "(40 patients)" in result.auroc.method
    assert "Obuchowski" in result.to_frame()["AUROC CI method"].iloc[0]
    frame = pd.DataFrame(
        {
            "study_id": [f"P{i}" for i in range(40)],
            "metastasis_risk_score": 1 / (1 + np.exp(-scores)),
            "metastasis_label": labels,
        }
    )
    analysis = run_full_analysis(frame, slices=slices)
    assert analysis.classification["slice"].auroc.method.startswith("Obuchowski")
    assert analysis.classification["patient_mrs"].auroc.method.startswith("DeLong")
