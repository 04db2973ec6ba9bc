"""Calibration of a probability (the MRS is a mean of slice probabilities, so it lives in
[0, 1]): binned calibration curve and Brier score.

Bins are quantile bins exactly as scikit-learn's ``calibration_curve(strategy="quantile")``:
edges at the 0, 1/k, ..., 1 percentiles of the predicted probabilities (numpy's linear
percentile), each case assigned with ``searchsorted(inner edges, p, side="left")``, empty bins
dropped. With many tied probabilities fewer than k bins may remain. Each bin also gets a
Wilson score CI for the observed fraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._base import NotComputable, StatResult, as_float_array, binary_labels, check_same_length
from .subgroups import wilson_interval

__all__ = ["CalibrationResult", "brier_score", "calibration_curve"]


@dataclass(frozen=True, eq=False)
class CalibrationResult(StatResult):
    """Observed fraction of positives against the mean predicted probability per bin."""

    mean_predicted: np.ndarray
    observed_fraction: np.ndarray
    observed_lower: np.ndarray
    observed_upper: np.ndarray
    counts: np.ndarray
    bin_edges: np.ndarray
    n_bins_requested: int
    brier_score: float
    prevalence: float
    n: int
    n_missing: int
    confidence_level: float

    title: ClassVar[str] = "Calibration (quantile bins)"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "n": self.counts,
                "mean predicted": self.mean_predicted,
                "observed": self.observed_fraction,
                "observed CI lower": self.observed_lower,
                "observed CI upper": self.observed_upper,
            }
        )

    def __str__(self) -> str:
        return f"{super().__str__()}\nBrier score {self.brier_score:.4f} (n = {self.n})"


def _prepare(
    labels: ArrayLike, probabilities: ArrayLike
) -> tuple[np.ndarray, np.ndarray, int] | NotComputable:
    y, bad = binary_labels(labels)
    p = as_float_array(probabilities, name="probabilities")
    check_same_length(labels=y, probabilities=p)
    if bad:
        return NotComputable(
            "Calibration", f"labels must be 0 or 1; found {', '.join(bad[:5])}", ("0/1 labels",)
        )
    complete = ~np.isnan(y) & np.isfinite(p)
    if not complete.any():
        return NotComputable(
            "Calibration", "no case has both a label and a probability", ("labelled, scored cases",)
        )
    y, p = y[complete], p[complete]
    if p.min() < 0 or p.max() > 1:
        return NotComputable(
            "Calibration",
            f"scores must be probabilities in [0, 1]; found {p.min():.3g} to {p.max():.3g}",
            ("probabilities",),
        )
    return y, p, int((~complete).sum())


def brier_score(labels: ArrayLike, probabilities: ArrayLike) -> float | NotComputable:
    """Mean squared difference between the probability and the 0/1 outcome."""
    prepared = _prepare(labels, probabilities)
    if isinstance(prepared, NotComputable):
        return NotComputable("Brier score", prepared.reason, prepared.missing)
    y, p, _ = prepared
    return float(np.mean((p - y) ** 2))


def calibration_curve(
    labels: ArrayLike,
    probabilities: ArrayLike,
    *,
    n_bins: int = 10,
    confidence_level: float = 0.95,
) -> CalibrationResult | NotComputable:
    """Quantile-binned calibration curve with Wilson CIs and the Brier score."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    prepared = _prepare(labels, probabilities)
    if isinstance(prepared, NotComputable):
        return prepared
    y, p, n_missing = prepared
    edges = np.percentile(p, np.linspace(0.0, 1.0, n_bins + 1) * 100)
    bin_ids = np.searchsorted(edges[1:-1], p)
    sums = np.bincount(bin_ids, weights=p, minlength=edges.size)
    positives = np.bincount(bin_ids, weights=y, minlength=edges.size)
    totals = np.bincount(bin_ids, minlength=edges.size)
    nonzero = totals > 0
    counts = totals[nonzero]
    positive_counts = positives[nonzero]
    intervals = np.array(
        [
            wilson_interval(int(k), int(n), confidence_level=confidence_level)
            for k, n in zip(positive_counts, counts, strict=True)
        ]
    )
    return CalibrationResult(
        mean_predicted=sums[nonzero] / counts,
        observed_fraction=positive_counts / counts,
        observed_lower=intervals[:, 0],
        observed_upper=intervals[:, 1],
        counts=counts.astype(int),
        bin_edges=edges,
        n_bins_requested=n_bins,
        brier_score=float(np.mean((p - y) ** 2)),
        prevalence=float(y.mean()),
        n=int(y.size),
        n_missing=n_missing,
        confidence_level=confidence_level,
    )
