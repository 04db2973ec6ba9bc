"""A synthetic patient-level cohort in the layout :func:`~analytics.stats.report.run_full_analysis`
reads, for demos, tests and benchmarks. Every figure drawn from it must say "Synthetic data".

The proportions follow the paper's description of its 661 patients (31.5% metastatic; liver
85.6%, lung 8.2%, peritoneum 10.1% of metastatic patients; median age 66; 42% women; tumour in
the head 58.6%); the MRS, survival and development times are drawn so that the associations
the paper reports exist, with no claim to reproduce its numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["synthetic_cohort"]


def synthetic_cohort(n_patients: int, *, seed: int = 0) -> pd.DataFrame:
    """``n_patients`` synthetic patients with every column of the analysis table."""
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    rng = np.random.default_rng(seed)
    n = n_patients
    label = (rng.random(n) < 0.315).astype(int)
    mrs = np.where(label == 1, rng.beta(4.0, 2.2, n), rng.beta(2.0, 4.0, n))
    folds = {
        f"mrs_fold_{k}": np.clip(mrs + rng.normal(0.0, 0.06, n), 0.0, 1.0) for k in range(1, 6)
    }
    slices_positive = rng.binomial(4, np.clip(mrs * 1.1, 0.0, 1.0))

    site_draw = rng.random((n, 3))
    site_liver = (label == 1) & (site_draw[:, 0] < 0.856)
    site_lung = (label == 1) & (site_draw[:, 1] < 0.082)
    site_peritoneum = (label == 1) & (site_draw[:, 2] < 0.101)

    def site_probability(site: np.ndarray, strength: float) -> np.ndarray:
        logit = -2.0 + strength * site + 2.0 * (mrs - 0.5) + rng.normal(0.0, 0.8, n)
        return 1.0 / (1.0 + np.exp(-logit))

    age = np.clip(rng.normal(66.0, 10.0, n), 30.0, 95.0).round(0)
    sex = np.where(rng.random(n) < 0.42, "female", "male")
    centre = rng.choice(["Barcelona", "Madrid", "Zhengzhou", "Nijmegen"], n, p=[0.3, 0.2, 0.3, 0.2])
    ca19_9 = np.exp(rng.normal(5.3 + 0.8 * label, 1.6, n)).round(1)
    ca19_9[rng.random(n) < 0.1] = np.nan
    resectability = np.where(
        label == 1,
        "metastatic",
        rng.choice(
            ["resectable", "borderline resectable", "locally advanced"], n, p=[0.5, 0.25, 0.25]
        ),
    )
    stage_effect = (
        pd.Series(resectability)
        .map(
            {
                "resectable": 0.0,
                "borderline resectable": 0.3,
                "locally advanced": 0.6,
                "metastatic": 0.9,
            }
        )
        .to_numpy()
    )
    log_hazard = (
        -6.2 + 1.4 * mrs + 0.35 * np.nan_to_num(ca19_9 > 500) + stage_effect + 0.01 * (age - 66)
    )
    survival = rng.exponential(1.0 / np.exp(log_hazard))
    censoring = rng.uniform(200.0, 1800.0, n)
    death = (survival <= censoring).astype(int)
    follow_up = np.ceil(np.minimum(survival, censoring))

    detection = np.where(
        label == 1,
        rng.choice(["radiology", "laparoscopy", "surgery", "other"], n, p=[0.8, 0.1, 0.07, 0.03]),
        np.full(n, None, dtype=object),
    )
    developed = np.where(label == 0, (rng.random(n) < 0.4).astype(float), np.nan)
    days_to_metastasis = np.where(
        developed == 1, np.ceil(rng.exponential(60.0 + 400.0 * (1.0 - mrs))), np.nan
    )
    return pd.DataFrame(
        {
            "study_id": [f"SYN-{index:05d}" for index in range(1, n + 1)],
            "metastasis_risk_score": mrs,
            **folds,
            "metastasis_label": label,
            "predicted_positive_fraction": slices_positive / 4.0,
            "site_liver": site_liver.astype(int),
            "site_lung": site_lung.astype(int),
            "site_peritoneum": site_peritoneum.astype(int),
            "prob_liver": site_probability(site_liver, 2.5),
            "prob_lung": site_probability(site_lung, 1.8),
            "prob_peritoneum": site_probability(site_peritoneum, 1.5),
            "overall_survival_days": follow_up,
            "death": death,
            "ca19_9_u_per_ml": ca19_9,
            "nccn_resectability": resectability,
            "age_at_diagnosis_years": age,
            "sex": sex,
            "centre": centre,
            "tumour_location": rng.choice(["head", "body", "tail"], n, p=[0.586, 0.234, 0.18]),
            "tumour_size_mm": np.clip(rng.gamma(6.0, 5.3, n), 5.0, 120.0).round(0),
            "ct_manufacturer": rng.choice(
                ["Siemens", "GE", "Philips", "Toshiba"], n, p=[0.4, 0.3, 0.2, 0.1]
            ),
            "metastasis_detection": detection,
            "developed_metastasis": developed,
            "days_to_metastasis": days_to_metastasis,
        }
    )
