"""Metastasis development: for patients without metastasis at diagnosis who developed it
later, does the MRS at diagnosis tell early from late metastasis?

Time groups (a month is 30.4375 days, the mean Gregorian month 365.25 / 12):

- ``"< 3 months"``: months < 3 (days < 91.3125);
- ``"3-6 months"``: 3 <= months <= 6 (91.3125 <= days <= 182.625);
- ``"> 6 months"``: months > 6.

The boundaries and the month length are parameters. The two ROC analyses use the same
boundaries: "< 3 vs >= 3 months" (positive = metastasis before 3 months) and "< 6 vs >= 6
months" (positive = before 6 months; a patient at exactly 6 months is in "3-6 months" and in
the ">= 6" class). A higher MRS is expected to mean earlier metastasis.

Group comparisons: Kruskal-Wallis across the groups, then pairwise two-sided Mann-Whitney U
tests with R's ``wilcox.test`` rule for the p-value: exact when both groups have fewer than
50 patients and there are no ties, otherwise the normal approximation with continuity
correction (scipy's own "auto" rule switches to the approximation above 8 patients),
reported unadjusted and Holm-adjusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

from ._base import NotComputable, StatResult, as_float_array, check_same_length, p_text
from .classification import BinaryClassificationResult, evaluate_binary

__all__ = [
    "DAYS_PER_MONTH",
    "DevelopmentResult",
    "GroupComparison",
    "PairwiseComparison",
    "development_groups",
    "metastasis_development_analysis",
]

#: Mean Gregorian month in days (365.25 / 12).
DAYS_PER_MONTH = 30.4375


def _group_names(boundaries_months: tuple[float, float]) -> tuple[str, str, str]:
    first, second = boundaries_months
    return (f"< {first:g} months", f"{first:g}-{second:g} months", f"> {second:g} months")


def development_groups(
    days_to_metastasis: ArrayLike,
    *,
    boundaries_months: tuple[float, float] = (3.0, 6.0),
    days_per_month: float = DAYS_PER_MONTH,
) -> np.ndarray:
    """Time-to-metastasis group per patient (``None`` where the time is missing or negative)."""
    first, second = boundaries_months
    if not 0 < first < second:
        raise ValueError(f"boundaries must satisfy 0 < first < second, got {boundaries_months}")
    months = as_float_array(days_to_metastasis, name="days_to_metastasis") / days_per_month
    early, middle, late = _group_names(boundaries_months)
    result = np.full(months.size, None, dtype=object)
    valid = np.isfinite(months) & (months >= 0)
    result[valid & (months < first)] = early
    result[valid & (months >= first) & (months <= second)] = middle
    result[valid & (months > second)] = late
    return result


@dataclass(frozen=True)
class PairwiseComparison(StatResult):
    """Two-sided Mann-Whitney U test of the MRS between two groups."""

    group_1: str
    group_2: str
    n_1: int
    n_2: int
    u_statistic: float
    p_value: float
    p_value_holm: float

    title: ClassVar[str] = "Mann-Whitney U test"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "comparison": f"{self.group_1} vs {self.group_2}",
                    "n": f"{self.n_1} vs {self.n_2}",
                    "U": self.u_statistic,
                    "p": self.p_value,
                    "p (Holm)": self.p_value_holm,
                }
            ]
        )


@dataclass(frozen=True)
class GroupComparison(StatResult):
    """Kruskal-Wallis test across groups (H, df = k - 1, p)."""

    statistic: float
    df: int
    p_value: float

    title: ClassVar[str] = "Kruskal-Wallis test"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"H": self.statistic, "df": self.df, "p": self.p_value}])


@dataclass(frozen=True, eq=False)
class DevelopmentResult(StatResult):
    """MRS by time to metastasis: group summaries, tests and early-vs-late ROC analyses."""

    groups: tuple[str, ...]
    group_values: dict[str, np.ndarray]
    n: int
    n_missing: int
    boundaries_months: tuple[float, float]
    days_per_month: float
    kruskal_wallis: GroupComparison | NotComputable
    pairwise: tuple[PairwiseComparison | NotComputable, ...]
    early_vs_late: dict[str, BinaryClassificationResult | NotComputable]

    title: ClassVar[str] = "MRS by time to metastasis development"

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for group in self.groups:
            values = self.group_values[group]
            if values.size:
                q1, median, q3 = np.percentile(values, [25, 50, 75])
            else:
                q1 = median = q3 = np.nan
            rows.append(
                {"group": group, "n": values.size, "median MRS": median, "Q1": q1, "Q3": q3}
            )
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        parts = [super().__str__()]
        parts.append(
            str(self.kruskal_wallis)
            if isinstance(self.kruskal_wallis, NotComputable)
            else f"Kruskal-Wallis H = {self.kruskal_wallis.statistic:.3f}, "
            f"df = {self.kruskal_wallis.df}, {p_text(self.kruskal_wallis.p_value)}"
        )
        for comparison in self.pairwise:
            if isinstance(comparison, PairwiseComparison):
                parts.append(
                    f"{comparison.group_1} vs {comparison.group_2}: "
                    f"{p_text(comparison.p_value)} "
                    f"(Holm-adjusted {p_text(comparison.p_value_holm)})"
                )
            else:
                parts.append(str(comparison))
        for name, result in self.early_vs_late.items():
            if isinstance(result, BinaryClassificationResult):
                parts.append(
                    f"ROC {name}: AUROC {result.auroc.formatted()}, Youden cut "
                    f"{result.youden.threshold:.4g}"
                )
                parts.append(result.at_threshold.matrix().to_string())
            else:
                parts.append(f"ROC {name}: {result}")
        return "\n".join(parts)


def _wilcox_test(first: np.ndarray, second: np.ndarray) -> Any:
    """Two-sided Mann-Whitney U test with R's ``wilcox.test`` choice of exact or normal p."""
    pooled = np.concatenate([first, second])
    exact = first.size < 50 and second.size < 50 and np.unique(pooled).size == pooled.size
    return scipy_stats.mannwhitneyu(
        first,
        second,
        alternative="two-sided",
        method="exact" if exact else "asymptotic",
        use_continuity=True,
    )


def _holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (R's ``p.adjust(method = "holm")``)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = p.size
    adjusted_sorted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(adjusted_sorted, 1.0)
    return adjusted.tolist()


def metastasis_development_analysis(
    days_to_metastasis: ArrayLike,
    metastasis_risk_score: ArrayLike,
    *,
    boundaries_months: tuple[float, float] = (3.0, 6.0),
    days_per_month: float = DAYS_PER_MONTH,
    confidence_level: float = 0.95,
) -> DevelopmentResult | NotComputable:
    """Compare the MRS across time-to-metastasis groups and test early vs late by ROC.

    Pass only the patients who were free of metastasis at diagnosis and developed it later;
    rows missing the time or the MRS are dropped and counted.
    """
    days = as_float_array(days_to_metastasis, name="days_to_metastasis")
    mrs = as_float_array(metastasis_risk_score, name="metastasis_risk_score")
    check_same_length(days_to_metastasis=days, metastasis_risk_score=mrs)
    labels = development_groups(
        days, boundaries_months=boundaries_months, days_per_month=days_per_month
    )
    keep = pd.notna(labels) & np.isfinite(mrs)
    n = int(keep.sum())
    if n == 0:
        return NotComputable(
            "Metastasis development",
            "no patient has both a time to metastasis and an MRS",
            ("time to metastasis", "MRS"),
        )
    names = _group_names(boundaries_months)
    kept_labels = labels[keep]
    kept_mrs = mrs[keep]
    kept_months = days[keep] / days_per_month
    values = {name: kept_mrs[kept_labels == name] for name in names}
    non_empty = [name for name in names if values[name].size > 0]
    if len(non_empty) < 2:
        kruskal: GroupComparison | NotComputable = NotComputable(
            "Kruskal-Wallis test", "fewer than two time groups have patients", ("patients",)
        )
    elif np.ptp(kept_mrs) == 0:
        kruskal = NotComputable("Kruskal-Wallis test", "all MRS values are identical", ())
    else:
        result = scipy_stats.kruskal(*(values[name] for name in non_empty))
        kruskal = GroupComparison(
            statistic=float(result.statistic), df=len(non_empty) - 1, p_value=float(result.pvalue)
        )
    entries: list[NotComputable | tuple[str, str, int, int, float, float]] = []
    for first, second in combinations(names, 2):
        if values[first].size == 0 or values[second].size == 0:
            entries.append(
                NotComputable(
                    f"Mann-Whitney {first} vs {second}",
                    "empty group: " + (first if values[first].size == 0 else second),
                    ("patients",),
                )
            )
            continue
        test = _wilcox_test(values[first], values[second])
        entries.append(
            (
                first,
                second,
                values[first].size,
                values[second].size,
                float(test.statistic),
                float(test.pvalue),
            )
        )
    tested = [entry for entry in entries if not isinstance(entry, NotComputable)]
    holm = iter(_holm([entry[5] for entry in tested]) if tested else [])
    pairwise: list[PairwiseComparison | NotComputable] = [
        entry
        if isinstance(entry, NotComputable)
        else PairwiseComparison(
            group_1=entry[0],
            group_2=entry[1],
            n_1=entry[2],
            n_2=entry[3],
            u_statistic=entry[4],
            p_value=entry[5],
            p_value_holm=next(holm),
        )
        for entry in entries
    ]
    first_bound, second_bound = boundaries_months
    early_vs_late = {
        f"< {bound:g} vs >= {bound:g} months": evaluate_binary(
            (kept_months < bound).astype(float),
            kept_mrs,
            name=f"metastasis < {bound:g} vs >= {bound:g} months after diagnosis",
            confidence_level=confidence_level,
            threshold_source="Youden on these data (optimistic)",
            classes=(f">= {bound:g} months", f"< {bound:g} months"),
        )
        for bound in (first_bound, second_bound)
    }
    return DevelopmentResult(
        groups=names,
        group_values=values,
        n=n,
        n_missing=int(keep.size - n),
        boundaries_months=boundaries_months,
        days_per_month=days_per_month,
        kruskal_wallis=kruskal,
        pairwise=tuple(pairwise),
        early_vs_late=early_vs_late,
    )
