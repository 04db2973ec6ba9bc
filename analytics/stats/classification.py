"""Discrimination of a binary score: ROC and precision-recall curves, AUROC with DeLong CI,
threshold metrics, fold summaries, per-site ROC and the paired DeLong test.

Conventions used throughout:

- ``labels`` are 0/1 (1 = metastasis); ``scores`` are higher for "more likely positive" (the
  MRS, a slice probability, the fraction of slices predicted positive). Rows where either is
  missing are dropped and counted in ``n_missing``.
- A case is predicted positive when ``score >= threshold`` (the convention of scikit-learn's
  ``roc_curve``, so every ROC threshold reproduces its point on the curve exactly).
- Slice level and patient level use the same functions: the caller passes slice probabilities
  or patient scores (patient aggregation is not done here).
- The AUROC variance is DeLong's (DeLong, DeLong & Clarke-Pearson 1988) computed with the fast
  midrank algorithm of Sun & Xu (IEEE Signal Processing Letters 2014;21:1389-93); the 95% CI is
  ``AUROC +/- z * SE`` truncated to [0, 1], as R's ``pROC::ci.auc(method = "delong")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

from ._base import (
    NotComputable,
    StatResult,
    as_float_array,
    binary_labels,
    check_same_length,
    format_number,
    p_text,
)
from .clustered import OBUCHOWSKI_METHOD, obuchowski_auroc

__all__ = [
    "AurocEstimate",
    "BinaryClassificationResult",
    "ConfusionMatrixResult",
    "FoldAurocSummary",
    "FoldRocSummary",
    "PairedDelongTest",
    "PrecisionRecallCurve",
    "RocCurve",
    "SiteRocResult",
    "YoudenThreshold",
    "average_precision",
    "confusion_at_threshold",
    "delong_auroc",
    "delong_auroc_covariance",
    "evaluate_binary",
    "fold_auroc_summary",
    "fold_roc_summary",
    "paired_delong_test",
    "precision_recall_curve",
    "roc_curve",
    "site_roc",
    "youden_threshold",
]


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RocCurve(StatResult):
    """ROC curve points (false-positive rate, true-positive rate) with their thresholds.

    The first point is (0, 0) with threshold +inf (nothing predicted positive). With
    ``drop_intermediate`` the collinear points are removed, as scikit-learn does by default.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auroc: float
    n_positive: int
    n_negative: int

    title: ClassVar[str] = "ROC curve"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"threshold": self.thresholds, "fpr": self.fpr, "tpr": self.tpr})


@dataclass(frozen=True, eq=False)
class PrecisionRecallCurve(StatResult):
    """Precision-recall curve as scikit-learn's ``precision_recall_curve`` returns it.

    ``precision`` and ``recall`` have one more element than ``thresholds``: the last point is
    (recall 0, precision 1). ``prevalence`` is the precision of a random classifier.
    """

    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    average_precision: float
    prevalence: float

    title: ClassVar[str] = "Precision-recall curve"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "threshold": np.r_[self.thresholds, np.nan],
                "precision": self.precision,
                "recall": self.recall,
            }
        )


@dataclass(frozen=True)
class AurocEstimate(StatResult):
    """AUROC with its DeLong variance and confidence interval."""

    auroc: float
    se: float
    ci_lower: float
    ci_upper: float
    confidence_level: float
    n_positive: int
    n_negative: int
    n_missing: int = 0
    method: str = "DeLong (Sun & Xu 2014 midrank algorithm); CI = AUROC +/- z*SE in [0, 1]"
    note: str = ""

    title: ClassVar[str] = "AUROC"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "AUROC": self.auroc,
                    "SE": self.se,
                    "CI lower": self.ci_lower,
                    "CI upper": self.ci_upper,
                    "n positive": self.n_positive,
                    "n negative": self.n_negative,
                }
            ]
        )

    def formatted(self, digits: int = 3) -> str:
        """``0.895 (0.853-0.937)``: the form used in the paper's tables and figure legends."""
        if not np.isfinite(self.ci_lower):
            return f"{self.auroc:.{digits}f}"
        return f"{self.auroc:.{digits}f} ({self.ci_lower:.{digits}f}-{self.ci_upper:.{digits}f})"


@dataclass(frozen=True)
class YoudenThreshold(StatResult):
    """The threshold that maximises Youden's J = sensitivity + specificity - 1.

    Among thresholds with equal J, the highest (most specific) one is chosen.
    """

    threshold: float
    youden_j: float
    sensitivity: float
    specificity: float

    title: ClassVar[str] = "Youden threshold"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "threshold": self.threshold,
                    "Youden J": self.youden_j,
                    "sensitivity": self.sensitivity,
                    "specificity": self.specificity,
                }
            ]
        )


@dataclass(frozen=True)
class ConfusionMatrixResult(StatResult):
    """Confusion matrix and derived metrics at one threshold (positive when score >= threshold).

    A metric whose denominator is zero (e.g. PPV when nothing is predicted positive) is NaN and
    explained in ``notes``.
    """

    threshold: float
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int
    accuracy: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float
    notes: tuple[str, ...] = ()

    title: ClassVar[str] = "Confusion matrix (predicted positive when score >= threshold)"

    @property
    def n(self) -> int:
        return self.true_positive + self.false_positive + self.true_negative + self.false_negative

    def matrix(self) -> pd.DataFrame:
        """The 2x2 table, rows = actual, columns = predicted (scikit-learn's layout)."""
        return pd.DataFrame(
            [[self.true_negative, self.false_positive], [self.false_negative, self.true_positive]],
            index=pd.Index(["actual negative", "actual positive"]),
            columns=pd.Index(["predicted negative", "predicted positive"]),
        )

    def to_frame(self) -> pd.DataFrame:
        metrics = {
            "threshold": self.threshold,
            "TP": self.true_positive,
            "FP": self.false_positive,
            "TN": self.true_negative,
            "FN": self.false_negative,
            "accuracy": self.accuracy,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "PPV": self.ppv,
            "NPV": self.npv,
            "F1": self.f1,
        }
        return pd.DataFrame({"metric": list(metrics), "value": list(metrics.values())})


@dataclass(frozen=True, eq=False)
class BinaryClassificationResult(StatResult):
    """Everything the paper reports for one score in one cohort at one level."""

    name: str
    level: str
    n: int
    n_positive: int
    n_negative: int
    n_missing: int
    auroc: AurocEstimate
    average_precision: float
    roc: RocCurve
    precision_recall: PrecisionRecallCurve
    youden: YoudenThreshold
    threshold_source: str
    at_threshold: ConfusionMatrixResult
    classes: tuple[str, str] = ("no metastasis", "metastasis")

    title: ClassVar[str] = "Binary classification"

    def to_frame(self) -> pd.DataFrame:
        cm = self.at_threshold
        row = {
            "analysis": self.name,
            "level": self.level,
            "n": self.n,
            "n positive": self.n_positive,
            "AUROC": self.auroc.auroc,
            "AUROC CI lower": self.auroc.ci_lower,
            "AUROC CI upper": self.auroc.ci_upper,
            "AUROC CI method": self.auroc.method,
            "AUPRC": self.average_precision,
            "threshold": cm.threshold,
            "threshold source": self.threshold_source,
            "accuracy": cm.accuracy,
            "sensitivity": cm.sensitivity,
            "specificity": cm.specificity,
            "PPV": cm.ppv,
            "NPV": cm.npv,
            "F1": cm.f1,
        }
        return pd.DataFrame([row])

    def __str__(self) -> str:
        lines = [
            f"{self.name}, {self.level} level: n={self.n} "
            f"({self.n_positive} positive, {self.n_negative} negative"
            + (f", {self.n_missing} missing dropped)" if self.n_missing else ")"),
            f"AUROC {self.auroc.formatted()}  AUPRC {self.average_precision:.3f}",
            f"threshold {format_number(self.at_threshold.threshold)} ({self.threshold_source})",
            self.at_threshold.matrix().to_string(),
            self.at_threshold.to_frame()
            .iloc[5:]
            .to_string(index=False, float_format=lambda v: f"{v:.3f}"),
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class FoldAurocSummary(StatResult):
    """Mean AUROC across cross-validation folds (or fold models) with a t-based CI.

    CI = mean +/- t_{(1+level)/2, k-1} * SD / sqrt(k), with SD the sample standard deviation
    (ddof = 1) of the k fold AUROCs: the folds are treated as a sample of model replicates.
    """

    fold_names: tuple[str, ...]
    fold_aurocs: tuple[float, ...]
    mean: float
    sd: float
    ci_lower: float
    ci_upper: float
    confidence_level: float

    title: ClassVar[str] = "AUROC across folds (mean, t-based CI)"

    def to_frame(self) -> pd.DataFrame:
        rows = [
            {"fold": name, "AUROC": value}
            for name, value in zip(self.fold_names, self.fold_aurocs, strict=True)
        ]
        rows.append({"fold": "mean", "AUROC": self.mean})
        rows.append({"fold": f"{self.confidence_level:.0%} CI lower", "AUROC": self.ci_lower})
        rows.append({"fold": f"{self.confidence_level:.0%} CI upper", "AUROC": self.ci_upper})
        return pd.DataFrame(rows)

    def formatted(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ({self.ci_lower:.{digits}f}-{self.ci_upper:.{digits}f})"


@dataclass(frozen=True, eq=False)
class FoldRocSummary(StatResult):
    """Per-fold ROC curves, their mean on a common FPR grid and a pointwise band.

    The band is the pointwise t-based CI of the mean TPR across folds (same rule as
    :class:`FoldAurocSummary`), clipped to [0, 1]. Folds whose ROC is not computable are listed
    in ``excluded`` with the reason.
    """

    fold_curves: dict[str, RocCurve]
    fpr_grid: np.ndarray
    mean_tpr: np.ndarray
    tpr_lower: np.ndarray
    tpr_upper: np.ndarray
    auroc_summary: FoldAurocSummary
    excluded: dict[str, str] = field(default_factory=dict)

    title: ClassVar[str] = "ROC across folds"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "fpr": self.fpr_grid,
                "mean tpr": self.mean_tpr,
                "tpr lower": self.tpr_lower,
                "tpr upper": self.tpr_upper,
            }
        )

    def __str__(self) -> str:
        return str(self.auroc_summary)


@dataclass(frozen=True, eq=False)
class SiteRocResult(StatResult):
    """One-vs-rest ROC per metastasis site with micro-, macro- and weighted-average AUROC.

    The averages follow scikit-learn's ``roc_auc_score`` for multilabel indicators: macro is the
    unweighted mean of the per-site AUROCs, weighted weights them by the number of positives
    per site (support), micro is the AUROC of all (patient, site) pairs pooled. Sites with only
    one class are excluded from macro/weighted (scikit-learn would raise instead) and listed in
    ``per_site`` as :class:`NotComputable`.
    """

    sites: tuple[str, ...]
    per_site: dict[str, AurocEstimate | NotComputable]
    curves: dict[str, RocCurve | NotComputable]
    support: dict[str, int]
    micro_auroc: float
    macro_auroc: float
    weighted_auroc: float
    micro_curve: RocCurve | NotComputable
    n: int
    n_missing: int

    title: ClassVar[str] = "AUROC by metastasis site (one-vs-rest)"

    def to_frame(self) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        for site in self.sites:
            estimate = self.per_site[site]
            if isinstance(estimate, AurocEstimate):
                rows.append(
                    {
                        "site": site,
                        "support": self.support[site],
                        "AUROC": estimate.auroc,
                        "CI lower": estimate.ci_lower,
                        "CI upper": estimate.ci_upper,
                        "note": "",
                    }
                )
            else:
                rows.append(
                    {
                        "site": site,
                        "support": self.support[site],
                        "AUROC": np.nan,
                        "CI lower": np.nan,
                        "CI upper": np.nan,
                        "note": estimate.reason,
                    }
                )
        for name, value in (
            ("micro-average", self.micro_auroc),
            ("macro-average", self.macro_auroc),
            ("weighted-average", self.weighted_auroc),
        ):
            rows.append({"site": name, "support": np.nan, "AUROC": value, "note": ""})
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class PairedDelongTest(StatResult):
    """DeLong's test for two correlated AUROCs (two scores on the same patients).

    z = (AUROC_1 - AUROC_2) / sqrt(V_1 + V_2 - 2 Cov), two-sided p from the normal
    distribution, as ``pROC::roc.test(method = "delong", paired = TRUE)``. Identical scores give
    z = 0, p = 1.
    """

    auroc_1: float
    auroc_2: float
    difference: float
    se_difference: float
    z: float
    p_value: float
    correlation: float
    n_positive: int
    n_negative: int
    n_missing: int

    title: ClassVar[str] = "Paired DeLong test"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "AUROC 1": self.auroc_1,
                    "AUROC 2": self.auroc_2,
                    "difference": self.difference,
                    "SE": self.se_difference,
                    "z": self.z,
                    "p": self.p_value,
                }
            ]
        )

    def __str__(self) -> str:
        return f"{super().__str__()}\n{p_text(self.p_value)}"


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BinaryData:
    labels: np.ndarray  # int 0/1
    scores: np.ndarray  # float, finite
    n_missing: int

    @property
    def n_positive(self) -> int:
        return int(self.labels.sum())

    @property
    def n_negative(self) -> int:
        return int(self.labels.size - self.labels.sum())


def _prepare(labels: ArrayLike, scores: ArrayLike, analysis: str) -> _BinaryData | NotComputable:
    """Validate labels and scores, drop incomplete rows, and require both classes."""
    label_array, bad = binary_labels(labels)
    score_array = as_float_array(scores, name="scores")
    check_same_length(labels=label_array, scores=score_array)
    if bad:
        return NotComputable(
            analysis,
            f"labels must be 0 or 1; found {', '.join(bad[:5])}",
            ("0/1 labels",),
        )
    complete = ~np.isnan(label_array) & np.isfinite(score_array)
    n_missing = int((~complete).sum())
    y = label_array[complete].astype(np.int64)
    s = score_array[complete]
    if y.size == 0:
        return NotComputable(
            analysis,
            "no case has both a label and a score"
            + (f" ({n_missing} incomplete rows)" if n_missing else ""),
            ("labelled, scored cases",),
        )
    n_positive = int(y.sum())
    n_negative = int(y.size - n_positive)
    if n_positive == 0 or n_negative == 0:
        missing = "positive cases" if n_positive == 0 else "negative cases"
        return NotComputable(
            analysis,
            f"only one class present ({n_positive} positive, {n_negative} negative): "
            "discrimination needs both",
            (missing,),
        )
    return _BinaryData(labels=y, scores=s, n_missing=n_missing)


def _binary_clf_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cumulative false and true positives at each distinct threshold (descending)."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    distinct = np.flatnonzero(np.diff(sorted_scores))
    threshold_index = np.r_[distinct, sorted_labels.size - 1]
    tps = np.cumsum(sorted_labels)[threshold_index].astype(float)
    fps = 1.0 + threshold_index - tps
    return fps, tps, sorted_scores[threshold_index]


def _z_value(confidence_level: float) -> float:
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    return float(scipy_stats.norm.ppf(0.5 + confidence_level / 2.0))


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def _roc_from_data(data: _BinaryData, *, drop_intermediate: bool) -> RocCurve:
    fps, tps, thresholds = _binary_clf_curve(data.labels, data.scores)
    if drop_intermediate and fps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fpr = np.r_[0.0, fps / data.n_negative]
    tpr = np.r_[0.0, tps / data.n_positive]
    return RocCurve(
        fpr=fpr,
        tpr=tpr,
        thresholds=np.r_[np.inf, thresholds],
        auroc=float(np.trapezoid(tpr, fpr)),
        n_positive=data.n_positive,
        n_negative=data.n_negative,
    )


def roc_curve(
    labels: ArrayLike, scores: ArrayLike, *, drop_intermediate: bool = True
) -> RocCurve | NotComputable:
    """ROC curve of ``scores`` for 0/1 ``labels`` (scikit-learn's ``roc_curve`` points)."""
    data = _prepare(labels, scores, "ROC curve")
    if isinstance(data, NotComputable):
        return data
    return _roc_from_data(data, drop_intermediate=drop_intermediate)


def _pr_from_data(data: _BinaryData) -> PrecisionRecallCurve:
    fps, tps, thresholds = _binary_clf_curve(data.labels, data.scores)
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
    recall = tps / tps[-1]
    precision = np.r_[precision[::-1], 1.0]
    recall = np.r_[recall[::-1], 0.0]
    ap = float(-np.sum(np.diff(recall) * precision[:-1]))
    return PrecisionRecallCurve(
        precision=precision,
        recall=recall,
        thresholds=thresholds[::-1],
        average_precision=ap,
        prevalence=data.n_positive / data.labels.size,
    )


def precision_recall_curve(
    labels: ArrayLike, scores: ArrayLike
) -> PrecisionRecallCurve | NotComputable:
    """Precision-recall curve and average precision (scikit-learn's definitions)."""
    data = _prepare(labels, scores, "Precision-recall curve")
    if isinstance(data, NotComputable):
        return data
    return _pr_from_data(data)


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float | NotComputable:
    """AUPRC as scikit-learn's ``average_precision_score``: sum_n (R_n - R_{n-1}) P_n."""
    curve = precision_recall_curve(labels, scores)
    if isinstance(curve, NotComputable):
        return NotComputable("AUPRC", curve.reason, curve.missing)
    return curve.average_precision


# --------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------


def delong_auroc_covariance(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and their DeLong covariance matrix for one or more scores on the same cases.

    ``scores`` is (n_cases,) or (n_scores, n_cases); ``labels`` must hold both classes and no
    missing values (use :func:`delong_auroc` for validated input). Implements Sun & Xu's fast
    algorithm: with midranks T_Z over all cases, T_X over the m positives and T_Y over the n
    negatives, the placements are V10_i = (T_Z_i - T_X_i) / n for positive i and
    V01_j = 1 - (T_Z_j - T_Y_j) / m for negative j; AUROC = mean(V10) and
    Cov = S10 / m + S01 / n with S the sample covariance matrices (ddof = 1) of the placements.
    Cost: O(k N log N) for k scores on N cases. Entries are NaN with fewer than two cases in
    a class (the sample covariance needs two).
    """
    y = np.asarray(labels).astype(bool)
    matrix = np.atleast_2d(np.asarray(scores, dtype=float))
    if matrix.shape[1] != y.size:
        raise ValueError("scores and labels describe different numbers of cases")
    positives = matrix[:, y]
    negatives = matrix[:, ~y]
    m = positives.shape[1]
    n = negatives.shape[1]
    if m == 0 or n == 0:
        raise ValueError("both classes are needed for the DeLong covariance")
    tx = scipy_stats.rankdata(positives, axis=1)
    ty = scipy_stats.rankdata(negatives, axis=1)
    tz = scipy_stats.rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = v10.mean(axis=1)
    k = matrix.shape[0]
    if m < 2 or n < 2:
        return aucs, np.full((k, k), np.nan)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / m + s01 / n


def _auroc_from_data(
    data: _BinaryData, confidence_level: float, clusters: np.ndarray | None = None
) -> AurocEstimate:
    z = _z_value(confidence_level)
    method = AurocEstimate.method
    if clusters is None:
        aucs, cov = delong_auroc_covariance(data.labels, data.scores)
        auc = float(aucs[0])
        variance = float(cov[0, 0])
        note = ""
        if np.isnan(variance):
            note = "DeLong variance needs at least 2 positive and 2 negative cases"
    else:
        auc, variance, n_clusters = obuchowski_auroc(data.labels, data.scores, clusters)
        method = f"{OBUCHOWSKI_METHOD} ({n_clusters} patients)"
        note = (
            "clustered variance needs at least 2 patients of each class"
            if np.isnan(variance)
            else ""
        )
    se = float(np.sqrt(max(variance, 0.0))) if np.isfinite(variance) else np.nan
    lower = max(0.0, auc - z * se) if np.isfinite(se) else np.nan
    upper = min(1.0, auc + z * se) if np.isfinite(se) else np.nan
    return AurocEstimate(
        auroc=auc,
        se=se,
        ci_lower=lower,
        ci_upper=upper,
        confidence_level=confidence_level,
        n_positive=data.n_positive,
        n_negative=data.n_negative,
        n_missing=data.n_missing,
        method=method,
        note=note,
    )


def delong_auroc(
    labels: ArrayLike, scores: ArrayLike, *, confidence_level: float = 0.95
) -> AurocEstimate | NotComputable:
    """AUROC with DeLong standard error and confidence interval."""
    data = _prepare(labels, scores, "AUROC")
    if isinstance(data, NotComputable):
        return data
    return _auroc_from_data(data, confidence_level)


def paired_delong_test(
    labels: ArrayLike, scores_1: ArrayLike, scores_2: ArrayLike
) -> PairedDelongTest | NotComputable:
    """Compare two AUROCs measured on the same cases (cases missing either score are dropped)."""
    first = as_float_array(scores_1, name="scores_1")
    second = as_float_array(scores_2, name="scores_2")
    check_same_length(scores_1=first, scores_2=second)
    both = np.where(np.isfinite(first) & np.isfinite(second), first, np.nan)
    data = _prepare(labels, both, "Paired DeLong test")
    if isinstance(data, NotComputable):
        return data
    keep = ~np.isnan(binary_labels(labels)[0]) & np.isfinite(both)
    matrix = np.vstack([first[keep], second[keep]])
    aucs, cov = delong_auroc_covariance(data.labels, matrix)
    if np.isnan(cov).any():
        return NotComputable(
            "Paired DeLong test",
            "DeLong variance needs at least 2 positive and 2 negative cases",
            ("cases",),
        )
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    denominator = float(np.sqrt(cov[0, 0] * cov[1, 1]))
    correlation = float(cov[0, 1] / denominator) if denominator > 0 else np.nan
    # Rounding can leave a tiny negative variance for (nearly) identical scores.
    if variance <= 1e-15 * max(1.0, float(cov[0, 0] + cov[1, 1])):
        if abs(difference) <= 1e-12:
            z_value, p_value, se = 0.0, 1.0, 0.0
        else:
            return NotComputable(
                "Paired DeLong test",
                "the variance of the AUROC difference is zero while the AUROCs differ",
                (),
            )
    else:
        se = float(np.sqrt(variance))
        z_value = difference / se
        p_value = float(2.0 * scipy_stats.norm.sf(abs(z_value)))
    return PairedDelongTest(
        auroc_1=float(aucs[0]),
        auroc_2=float(aucs[1]),
        difference=difference,
        se_difference=se,
        z=float(z_value),
        p_value=p_value,
        correlation=correlation,
        n_positive=data.n_positive,
        n_negative=data.n_negative,
        n_missing=data.n_missing,
    )


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------


def _youden_from_data(data: _BinaryData) -> YoudenThreshold:
    fps, tps, thresholds = _binary_clf_curve(data.labels, data.scores)
    tpr = tps / data.n_positive
    fpr = fps / data.n_negative
    j = tpr - fpr
    best = int(np.argmax(j))  # thresholds descend: the first maximum is the highest threshold
    return YoudenThreshold(
        threshold=float(thresholds[best]),
        youden_j=float(j[best]),
        sensitivity=float(tpr[best]),
        specificity=float(1.0 - fpr[best]),
    )


def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> YoudenThreshold | NotComputable:
    """Threshold maximising sensitivity + specificity - 1 (score >= threshold is positive)."""
    data = _prepare(labels, scores, "Youden threshold")
    if isinstance(data, NotComputable):
        return data
    return _youden_from_data(data)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else np.nan


def _confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> ConfusionMatrixResult:
    predicted = scores >= threshold
    actual = labels.astype(bool)
    tp = int(np.count_nonzero(predicted & actual))
    fp = int(np.count_nonzero(predicted & ~actual))
    fn = int(np.count_nonzero(~predicted & actual))
    tn = int(np.count_nonzero(~predicted & ~actual))
    notes: list[str] = []
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    ppv = _ratio(tp, tp + fp)
    npv = _ratio(tn, tn + fn)
    if tp + fn == 0:
        notes.append("sensitivity undefined: no positive cases")
    if tn + fp == 0:
        notes.append("specificity undefined: no negative cases")
    if tp + fp == 0:
        notes.append("PPV undefined: nothing predicted positive")
    if tn + fn == 0:
        notes.append("NPV undefined: nothing predicted negative")
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    if 2 * tp + fp + fn == 0:
        notes.append("F1 undefined: no positive cases and nothing predicted positive")
    if labels.size and (tp + fp == labels.size or tn + fn == labels.size):
        side = "positive" if tp + fp == labels.size else "negative"
        notes.append(
            f"degenerate: every case is predicted {side} at this threshold, which separates nothing"
        )
    return ConfusionMatrixResult(
        threshold=float(threshold),
        true_positive=tp,
        false_positive=fp,
        true_negative=tn,
        false_negative=fn,
        accuracy=(tp + tn) / labels.size,
        sensitivity=sensitivity,
        specificity=specificity,
        ppv=ppv,
        npv=npv,
        f1=f1,
        notes=tuple(notes),
    )


def confusion_at_threshold(
    labels: ArrayLike, scores: ArrayLike, threshold: float
) -> ConfusionMatrixResult | NotComputable:
    """Confusion matrix, accuracy, sensitivity, specificity, PPV, NPV and F1 at ``threshold``.

    A case is predicted positive when ``score >= threshold``. Unlike the ROC analyses this
    works with one class present (metrics with an empty denominator are NaN, see ``notes``).
    """
    label_array, bad = binary_labels(labels)
    score_array = as_float_array(scores, name="scores")
    check_same_length(labels=label_array, scores=score_array)
    if bad:
        return NotComputable(
            "Confusion matrix",
            f"labels must be 0 or 1; found {', '.join(bad[:5])}",
            ("0/1 labels",),
        )
    if not np.isfinite(threshold):
        return NotComputable("Confusion matrix", "the threshold is missing", ("threshold",))
    complete = ~np.isnan(label_array) & np.isfinite(score_array)
    if not complete.any():
        return NotComputable(
            "Confusion matrix", "no case has both a label and a score", ("labelled, scored cases",)
        )
    return _confusion(label_array[complete].astype(np.int64), score_array[complete], threshold)


def _complete_clusters(
    labels: ArrayLike, scores: ArrayLike, clusters: ArrayLike | None
) -> np.ndarray | None:
    """The cluster of each row :func:`_prepare` keeps (rows with a label and a score)."""
    if clusters is None:
        return None
    label_array, _ = binary_labels(labels)
    score_array = as_float_array(scores, name="scores")
    cluster_array = np.asarray(clusters, dtype=object)
    check_same_length(labels=label_array, clusters=cluster_array)
    return cluster_array[~np.isnan(label_array) & np.isfinite(score_array)].astype(str)


def evaluate_binary(
    labels: ArrayLike,
    scores: ArrayLike,
    *,
    level: str = "patient",
    name: str = "metastasis",
    threshold: float | None = None,
    confidence_level: float = 0.95,
    calls: ArrayLike | None = None,
    threshold_source: str | None = None,
    clusters: ArrayLike | None = None,
    classes: tuple[str, str] = ("no metastasis", "metastasis"),
) -> BinaryClassificationResult | NotComputable:
    """The paper's evaluation of one score: AUROC (DeLong CI), AUPRC, ROC and PR curves, the
    Youden threshold, and the confusion matrix and metrics at ``threshold`` (the Youden
    threshold of these data when ``None``, e.g. for the internal test fold; pass the training
    fold's threshold to evaluate an external set). ``name`` says what is predicted (shown in
    tables and figure titles).

    ``calls`` (0/1 per case) are decisions already made by a rule that no single threshold on
    ``scores`` expresses (the locked per-fold thresholds of a model version): the confusion
    matrix is then theirs, its threshold NaN. ``threshold_source`` says where the threshold or
    the calls come from (default "Youden" or "given"). ``clusters`` (e.g. the patient of
    each slice) makes the AUROC interval Obuchowski's clustered one (:mod:`.clustered`).
    ``classes`` names the negative and the positive class (rows of the confusion matrix).
    """
    data = _prepare(labels, scores, f"Classification of {name} ({level} level)")
    if isinstance(data, NotComputable):
        return data
    youden = _youden_from_data(data)
    chosen = youden.threshold if threshold is None else float(threshold)
    source = threshold_source or ("Youden" if threshold is None else "given")
    pr = _pr_from_data(data)
    at_threshold = _confusion(data.labels, data.scores, chosen)
    if calls is not None:
        label_array, _ = binary_labels(labels)
        call_array = as_float_array(calls, name="calls")
        check_same_length(labels=label_array, calls=call_array)
        complete = ~np.isnan(label_array) & np.isfinite(call_array)
        at_threshold = dataclasses.replace(
            _confusion(label_array[complete].astype(np.int64), call_array[complete], 0.5),
            threshold=float("nan"),
        )
    return BinaryClassificationResult(
        name=name,
        level=level,
        n=int(data.labels.size),
        n_positive=data.n_positive,
        n_negative=data.n_negative,
        n_missing=data.n_missing,
        auroc=_auroc_from_data(
            data, confidence_level, _complete_clusters(labels, scores, clusters)
        ),
        average_precision=pr.average_precision,
        roc=_roc_from_data(data, drop_intermediate=True),
        precision_recall=pr,
        youden=youden,
        threshold_source=source,
        at_threshold=at_threshold,
        classes=classes,
    )


# --------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------


def fold_auroc_summary(
    fold_aurocs: Sequence[float] | Mapping[str, float], *, confidence_level: float = 0.95
) -> FoldAurocSummary | NotComputable:
    """Mean AUROC across folds with the t-based CI (see :class:`FoldAurocSummary`)."""
    if isinstance(fold_aurocs, Mapping):
        names = tuple(str(name) for name in fold_aurocs)
        values = np.asarray(list(fold_aurocs.values()), dtype=float)
    else:
        values = np.asarray(list(fold_aurocs), dtype=float)
        names = tuple(f"fold {index + 1}" for index in range(values.size))
    finite = np.isfinite(values)
    names = tuple(name for name, ok in zip(names, finite, strict=True) if ok)
    values = values[finite]
    if values.size < 2:
        return NotComputable(
            "AUROC across folds",
            f"a CI across folds needs at least 2 fold AUROCs, got {values.size}",
            ("fold results",),
        )
    mean = float(values.mean())
    sd = float(values.std(ddof=1))
    t = float(scipy_stats.t.ppf(0.5 + confidence_level / 2.0, df=values.size - 1))
    half_width = t * sd / np.sqrt(values.size)
    return FoldAurocSummary(
        fold_names=names,
        fold_aurocs=tuple(float(value) for value in values),
        mean=mean,
        sd=sd,
        ci_lower=mean - half_width,
        ci_upper=mean + half_width,
        confidence_level=confidence_level,
    )


def fold_roc_summary(
    labels: ArrayLike,
    fold_scores: Mapping[str, ArrayLike],
    *,
    grid_points: int = 101,
    confidence_level: float = 0.95,
) -> FoldRocSummary | NotComputable:
    """ROC curve of each fold's score on the same cases, the mean curve and its band.

    ``fold_scores`` maps a fold name to that fold model's scores for the cases in ``labels``
    (external sets scored by the five fold models), or to scores where cases outside the fold
    are missing (internal cross-validation: each fold's test cases only).
    """
    curves: dict[str, RocCurve] = {}
    excluded: dict[str, str] = {}
    for name, scores in fold_scores.items():
        # Dropping collinear points leaves the linear interpolation below unchanged.
        curve = roc_curve(labels, scores)
        if isinstance(curve, NotComputable):
            excluded[str(name)] = curve.reason
        else:
            curves[str(name)] = curve
    summary = fold_auroc_summary(
        {name: curve.auroc for name, curve in curves.items()}, confidence_level=confidence_level
    )
    if isinstance(summary, NotComputable):
        reasons = "; ".join(f"{name}: {reason}" for name, reason in excluded.items())
        return NotComputable(
            "ROC across folds",
            summary.reason + (f" ({reasons})" if reasons else ""),
            summary.missing,
        )
    grid = np.linspace(0.0, 1.0, grid_points)
    tprs = np.vstack([np.interp(grid, curve.fpr, curve.tpr) for curve in curves.values()])
    tprs[:, 0] = 0.0
    mean_tpr = tprs.mean(axis=0)
    mean_tpr[-1] = 1.0
    k = tprs.shape[0]
    t = float(scipy_stats.t.ppf(0.5 + confidence_level / 2.0, df=k - 1))
    half_width = t * tprs.std(axis=0, ddof=1) / np.sqrt(k)
    return FoldRocSummary(
        fold_curves=curves,
        fpr_grid=grid,
        mean_tpr=mean_tpr,
        tpr_lower=np.clip(mean_tpr - half_width, 0.0, 1.0),
        tpr_upper=np.clip(mean_tpr + half_width, 0.0, 1.0),
        auroc_summary=summary,
        excluded=excluded,
    )


# --------------------------------------------------------------------------------------------
# Sites
# --------------------------------------------------------------------------------------------


def site_roc(
    site_labels: Mapping[str, ArrayLike],
    site_scores: Mapping[str, ArrayLike],
    *,
    confidence_level: float = 0.95,
) -> SiteRocResult | NotComputable:
    """Per-site one-vs-rest ROC and the micro/macro/weighted averages.

    ``site_labels[site]`` is 0/1 (metastasis at that site), ``site_scores[site]`` the model's
    probability for that site; both keyed by the same site names. Cases missing any site label
    or score are dropped (the averages need the complete indicator matrix).
    """
    sites = tuple(site_labels)
    if set(sites) != set(site_scores):
        raise ValueError("site_labels and site_scores must have the same sites")
    if not sites:
        return NotComputable("AUROC by site", "no sites given", ("site columns",))
    label_matrix = np.column_stack([binary_labels(site_labels[site])[0] for site in sites])
    score_matrix = np.column_stack(
        [as_float_array(site_scores[site], name=f"scores[{site}]") for site in sites]
    )
    if label_matrix.shape != score_matrix.shape:
        raise ValueError("site labels and scores describe different numbers of cases")
    complete = ~np.isnan(label_matrix).any(axis=1) & np.isfinite(score_matrix).all(axis=1)
    n_missing = int((~complete).sum())
    label_matrix = label_matrix[complete]
    score_matrix = score_matrix[complete]
    if label_matrix.shape[0] == 0:
        return NotComputable(
            "AUROC by site", "no case has every site label and score", ("site labels and scores",)
        )
    per_site: dict[str, AurocEstimate | NotComputable] = {}
    curves: dict[str, RocCurve | NotComputable] = {}
    support: dict[str, int] = {}
    for index, site in enumerate(sites):
        support[site] = int(label_matrix[:, index].sum())
        per_site[site] = delong_auroc(
            label_matrix[:, index], score_matrix[:, index], confidence_level=confidence_level
        )
        curves[site] = roc_curve(label_matrix[:, index], score_matrix[:, index])
    micro_curve = roc_curve(label_matrix.ravel(), score_matrix.ravel())
    computable = [site for site in sites if isinstance(per_site[site], AurocEstimate)]
    if not computable:
        return NotComputable(
            "AUROC by site",
            "no site has both patients with and without metastasis at that site",
            ("site positives and negatives",),
        )
    site_aucs = np.array([per_site[site].auroc for site in computable])  # type: ignore[union-attr]
    weights = np.array([support[site] for site in computable], dtype=float)
    return SiteRocResult(
        sites=sites,
        per_site=per_site,
        curves=curves,
        support=support,
        micro_auroc=micro_curve.auroc if isinstance(micro_curve, RocCurve) else np.nan,
        macro_auroc=float(site_aucs.mean()),
        weighted_auroc=float(np.average(site_aucs, weights=weights)),
        micro_curve=micro_curve,
        n=int(label_matrix.shape[0]),
        n_missing=n_missing,
    )
