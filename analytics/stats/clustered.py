"""AUROC of clustered data: a patient's slices are not independent (issue 11 item 3).

Obuchowski NA. Nonparametric analysis of clustered ROC curve data. Biometrics 1997;53:567-578.
With I clusters (patients), cluster i holding m_i positive and n_i negative units (slices),
M = sum m_i, N = sum n_i, psi(x, y) = 1 if x > y, 1/2 if equal, 0 otherwise:

- A = 1/(M N) sum over all positive units x and negative units y of psi(x, y) (the ordinary
  AUROC of the units);
- V10_i = sum over the positive units x of cluster i of (1/N) sum_y psi(x, y);
  V01_i = sum over the negative units y of cluster i of (1/M) sum_x psi(x, y);
- S10 = I10 / ((I10 - 1) M) sum_i (V10_i - m_i A)^2, I10 = clusters with a positive unit;
  S01 = I01 / ((I01 - 1) N) sum_i (V01_i - n_i A)^2, I01 = clusters with a negative unit;
  S11 = I / (I - 1) sum_i (V10_i - m_i A)(V01_i - n_i A);
- var(A) = S10 / M + S01 / N + 2 S11 / (M N).

With one unit per cluster it is DeLong's variance; with k identical units per cluster it is
the DeLong variance of the clusters themselves (duplicating a patient's slice adds no
information), where the naive slice-level DeLong interval would be sqrt(k) times too narrow.
The placements come from midranks (Sun & Xu), so the cost is O(N log N).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

__all__ = ["OBUCHOWSKI_METHOD", "obuchowski_auroc"]

OBUCHOWSKI_METHOD = (
    "Obuchowski (1997) clustered AUROC: the patient is the cluster, its slices are not "
    "independent; CI = AUROC +/- z*SE in [0, 1]"
)


def obuchowski_auroc(
    labels: ArrayLike, scores: ArrayLike, clusters: ArrayLike
) -> tuple[float, float, int]:
    """AUROC, its clustered variance and the number of clusters. Inputs must be complete
    (no missing values) and hold both classes."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    cluster_codes, cluster_index = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = cluster_codes.size
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("both classes are needed for the clustered AUROC")
    tz = scipy_stats.rankdata(s)
    tx = scipy_stats.rankdata(s[y])
    ty = scipy_stats.rankdata(s[~y])
    placement = np.zeros(s.size)
    placement[y] = (tz[y] - tx) / n  # share of negatives below each positive unit
    placement[~y] = 1.0 - (tz[~y] - ty) / m  # share of positives above each negative unit
    auc = float(placement[y].mean())
    frame = pd.DataFrame(
        {
            "cluster": cluster_index,
            "v10": np.where(y, placement, 0.0),
            "v01": np.where(~y, placement, 0.0),
            "m": y.astype(float),
            "n": (~y).astype(float),
        }
    )
    per_cluster = frame.groupby("cluster").sum()
    d10 = per_cluster["v10"].to_numpy() - per_cluster["m"].to_numpy() * auc
    d01 = per_cluster["v01"].to_numpy() - per_cluster["n"].to_numpy() * auc
    i10 = int((per_cluster["m"] > 0).sum())
    i01 = int((per_cluster["n"] > 0).sum())
    if i10 < 2 or i01 < 2:
        return auc, float("nan"), n_clusters
    s10 = i10 / ((i10 - 1) * m) * float(np.sum(d10**2))
    s01 = i01 / ((i01 - 1) * n) * float(np.sum(d01**2))
    s11 = n_clusters / (n_clusters - 1) * float(np.sum(d10 * d01))
    return auc, s10 / m + s01 / n + 2 * s11 / (m * n), n_clusters
