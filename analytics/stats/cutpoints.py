"""Cut-points and risk groups: the MRS high/low cut by maximally selected rank statistics,
the CA19-9 high/low groups and the MRS x CA19-9 risk groups.

The MRS cut-point reproduces ``survminer::surv_cutpoint(data, time, event, variables,
minprop = 0.1)``, which calls ``maxstat::maxstat.test(Surv(time, event) ~ x,
smethod = "LogRank", pmethod = "none", minprop = 0.1, maxprop = 0.9)``. Read from maxstat's R
sources (``cmaxstat`` in R/maxstat.test.R, maxstat 0.7) and exactRankTests' ``cscores.Surv``:

1. Rows with a missing time, event or x are dropped (``model.frame``'s ``na.omit``); N is the
   number of complete rows.
2. Log-rank scores (Hothorn & Lausen 2003): with r_i the rank of t_i among all times, ties
   given the *maximum* rank (the number of times <= t_i),
   a_i = delta_i - sum_{j: t_j <= t_i} delta_j / (N - r_j + 1).
3. Sort by x. A candidate cut is a distinct value c of x (not the largest); its low group is
   {x <= c} with size m = #{x <= c}. Candidates are kept when
   max(1, floor(N * minprop)) <= m <= floor(N * maxprop) (both bounds inclusive, floors
   computed in floating point exactly as R does). This is a rule on group sizes, not on sample
   quantiles: no quantile type is involved. (With minprop = 0 and maxprop = 1 maxstat instead
   drops the first and last distinct values; reproduced.)
4. For each candidate, S_m = sum of the scores in the low group, E = m/N sum(a),
   V = m (N - m) / (N^2 (N - 1)) (N sum(a^2) - (sum a)^2), and the standardised statistic is
   |S_m - E| / sqrt(V).
5. The cut-point is the candidate with the largest statistic; among exact ties, the smallest
   cut. The statistic is ``maxstat``'s M (``surv_cutpoint``'s "statistic" column).

The computation sorts once and uses cumulative sums: O(N log N) for N patients.

Published example (not testable offline: survminer's ``myeloma`` data are not shipped here):
``surv_cutpoint(myeloma, time = "time", event = "event", variables = "DEPDC1")`` gives
cutpoint 279.8 with statistic 4.28 (survminer documentation and vignette).

Groups: ``low`` = x <= cut, ``high`` = x > cut (``survminer::surv_categorize``).

The cut is chosen and tested on the same data, so the log-rank p of the two groups it makes
(``2 (1 - Phi(M))``, kept as ``p_value_uncorrected``) is far too small. The corrected p-values
are maxstat's Lausen-Schumacher approximations, read from ``pLausen92`` and ``pLausen94`` in
maxstat's R/maxstat.R and the ``m`` that ``cmaxstat`` passes (the candidate low-group sizes):

- ``pmethod = "Lau92"`` (Lausen & Schumacher 1992, the limiting distribution):
  p = 4 phi(b)/b + phi(b) (b - 1/b) log(maxprop (1 - minprop) / ((1 - maxprop) minprop));
- ``pmethod = "Lau94"`` (Lausen, Sauerbrei & Schumacher 1994, improved Bonferroni):
  p = 1 - (Phi(b) - Phi(-b)) + sum_i exp(-b^2/2)/pi (t_i - (b^2/4 - 1) t_i^3 / 6),
  t_i = sqrt(1 - m_i (N - m_{i+1}) / ((N - m_i) m_{i+1})) over consecutive candidate sizes.

Both are capped to [0, 1]. Checked against maxstat's saved example output
(tests/Examples/maxstat-Ex.Rout.save of maxstat on CRAN): the ``hohnloser`` data give M =
3.5691, cut 39, Lau92 p = 0.01065 and Lau94 p = 0.005453; ``pLausen94(2.5, 20, 0.25, 0.75)``
= 0.073 (Lausen 1994, p. 489).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

from ._base import NotComputable, StatResult, as_float_array, binary_labels, check_same_length

__all__ = [
    "CA19_9_THRESHOLD_U_PER_ML",
    "RISK_GROUP_ORDER",
    "CutpointResult",
    "ca19_9_groups",
    "dichotomise",
    "logrank_scores",
    "lausen92_p_value",
    "lausen94_p_value",
    "maxstat_cutpoint",
    "risk_groups",
]

#: The paper's CA19-9 cut (U/mL). A value equal to the cut is "low" (high = > 500 U/mL),
#: the same side as the MRS rule (low = <= cut).
CA19_9_THRESHOLD_U_PER_ML = 500.0

#: Order of the MRS x CA19-9 risk groups in tables and figures.
RISK_GROUP_ORDER: tuple[str, ...] = ("low", "mid", "high")


@dataclass(frozen=True, eq=False)
class CutpointResult(StatResult):
    """Maximally selected log-rank statistic cut-point (``surv_cutpoint``)."""

    variable: str
    cutpoint: float
    statistic: float
    n: int
    n_events: int
    n_low: int
    n_high: int
    n_missing: int
    minprop: float
    maxprop: float
    candidate_cuts: np.ndarray
    candidate_statistics: np.ndarray
    groups: np.ndarray  # "low"/"high"/None per input row, input order
    p_value_lau94: float = float("nan")
    p_value_lau92: float = float("nan")
    p_value_uncorrected: float = float("nan")
    method: str = "maxstat.test(Surv ~ x, smethod='LogRank', pmethod='Lau94'); low = x <= cut"

    title: ClassVar[str] = "Maximally selected rank statistic cut-point"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "variable": self.variable,
                    "cutpoint": self.cutpoint,
                    "statistic": self.statistic,
                    "n": self.n,
                    "n low": self.n_low,
                    "n high": self.n_high,
                    "p corrected for the cut search (maxstat Lau94)": self.p_value_lau94,
                    "p corrected (maxstat Lau92)": self.p_value_lau92,
                    "log-rank p of the chosen split (UNCORRECTED: cut chosen on these data)": (
                        self.p_value_uncorrected
                    ),
                }
            ]
        )

    def candidates_frame(self) -> pd.DataFrame:
        """The standardised statistic at every candidate cut (survminer's maxstat plot)."""
        return pd.DataFrame({"cut": self.candidate_cuts, "statistic": self.candidate_statistics})


def logrank_scores(time: ArrayLike, event: ArrayLike) -> np.ndarray:
    """Log-rank scores of ``exactRankTests::cscores.Surv`` (the scores ``maxstat`` uses).

    a_i = delta_i - sum_{j: t_j <= t_i} delta_j / (N - r_j + 1), r_j = max-rank of t_j.
    Inputs must be complete (no missing values).
    """
    t = np.asarray(time, dtype=float)
    d = np.asarray(event, dtype=float)
    n = t.size
    order = np.argsort(t, kind="mergesort")
    max_rank = np.searchsorted(t[order], t, side="right")  # number of times <= t_i
    factor = d / (n - max_rank + 1.0)
    cumulative = np.cumsum(factor[order])
    return d - cumulative[max_rank - 1]


def lausen92_p_value(statistic: float, *, minprop: float = 0.1, maxprop: float = 0.9) -> float:
    """maxstat's ``pLausen92``: the limiting-distribution p of a maximally selected statistic."""
    b = float(statistic)
    if not (0.0 < minprop < maxprop < 1.0) or b <= 0:
        return float("nan")
    density = scipy_stats.norm.pdf(b)
    p = 4 * density / b + density * (b - 1 / b) * math.log(
        maxprop * (1 - minprop) / ((1 - maxprop) * minprop)
    )
    return float(min(max(p, 0.0), 1.0))


def lausen94_p_value(
    statistic: float,
    n: int,
    *,
    minprop: float = 0.1,
    maxprop: float = 0.9,
    group_sizes: ArrayLike | None = None,
) -> float:
    """maxstat's ``pLausen94``: the improved Bonferroni p of a maximally selected statistic.

    ``group_sizes`` are the candidate low-group sizes (default ``floor(n minprop) ..
    floor(n maxprop)``, as maxstat's default ``m``).
    """
    b = float(statistic)
    m = (
        np.arange(math.floor(n * minprop), math.floor(n * maxprop) + 1, dtype=float)
        if group_sizes is None
        else np.asarray(group_sizes, dtype=float)
    )
    m1, m2 = m[:-1], m[1:]
    t = np.sqrt(1 - m1 * (n - m2) / ((n - m1) * m2))
    d = np.sum(np.exp(-(b**2) / 2) / math.pi * (t - (b**2 / 4 - 1) * t**3 / 6))
    p = 1 - (scipy_stats.norm.cdf(b) - scipy_stats.norm.cdf(-b)) + d
    return float(min(max(p, 0.0), 1.0))


def dichotomise(
    values: ArrayLike, cutpoint: float, *, labels: tuple[str, str] = ("low", "high")
) -> np.ndarray:
    """``labels[0]`` where value <= cutpoint, ``labels[1]`` where above, ``None`` if missing."""
    x = as_float_array(values, name="values")
    result = np.full(x.size, None, dtype=object)
    present = ~np.isnan(x)
    result[present & (x <= cutpoint)] = labels[0]
    result[present & (x > cutpoint)] = labels[1]
    return result


def maxstat_cutpoint(
    time: ArrayLike,
    event: ArrayLike,
    values: ArrayLike,
    *,
    minprop: float = 0.1,
    maxprop: float | None = None,
    variable: str = "x",
) -> CutpointResult | NotComputable:
    """The cut-point of ``values`` that maximises the standardised log-rank statistic.

    ``maxprop`` defaults to ``1 - minprop`` as in ``surv_cutpoint``. See the module docstring
    for the exact rule.
    """
    analysis = f"Cut-point of {variable}"
    upper_prop = 1.0 - minprop if maxprop is None else maxprop
    if not (0.0 <= minprop <= upper_prop <= 1.0):
        raise ValueError(f"need 0 <= minprop <= maxprop <= 1, got {minprop}, {upper_prop}")
    t = as_float_array(time, name="time")
    d, bad = binary_labels(event, name="event")
    x = as_float_array(values, name=variable)
    check_same_length(time=t, event=d, values=x)
    if bad:
        return NotComputable(
            analysis, f"event must be 0 or 1; found {', '.join(bad[:5])}", ("0/1 event",)
        )
    keep = np.isfinite(t) & (t >= 0) & ~np.isnan(d) & np.isfinite(x)
    n = int(keep.sum())
    n_missing = int(t.size - n)
    if n < 2:
        return NotComputable(
            analysis,
            f"{n} patient(s) with time, status and {variable}; at least 2 needed",
            ("patients",),
        )
    t_kept, d_kept, x_kept = t[keep], d[keep], x[keep]
    n_events = int(d_kept.sum())
    if n_events == 0:
        return NotComputable(
            analysis,
            "all patients are censored: the log-rank statistic is undefined",
            ("deaths",),
        )
    scores = logrank_scores(t_kept, d_kept)
    order = np.argsort(x_kept, kind="mergesort")
    sorted_x = x_kept[order]
    sorted_scores = scores[order]
    first_of_value = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    m = np.flatnonzero(first_of_value)  # number of observations below each distinct value
    if minprop == 0.0 and upper_prop == 1.0:
        m = m[1:-1]
    else:
        lower_size = math.floor(n * minprop)
        upper_size = math.floor(n * upper_prop)
        if np.all(m < lower_size) or np.all(m > upper_size):
            return NotComputable(
                analysis,
                f"no cut leaves between {minprop:.0%} and {upper_prop:.0%} of patients low",
                ("distinct values",),
            )
        m = m[(m >= max(1, lower_size)) & (m <= upper_size)]
    if m.size == 0:
        return NotComputable(
            analysis,
            f"no candidate cut between minprop {minprop} and maxprop {upper_prop}: "
            f"{variable} has too few distinct values",
            ("distinct values",),
        )
    total = sorted_scores.sum()
    expected = m / n * total
    variance = m * (n - m) / (n**2 * (n - 1.0)) * (n * np.sum(sorted_scores**2) - total**2)
    if not np.all(variance > 0):
        return NotComputable(
            analysis, "the log-rank scores do not vary: the statistic is undefined", ("deaths",)
        )
    statistics = np.abs((np.cumsum(sorted_scores)[m - 1] - expected) / np.sqrt(variance))
    best = int(np.argmax(statistics))
    cutpoint = float(sorted_x[m[best] - 1])
    groups = np.full(t.size, None, dtype=object)
    groups[keep] = dichotomise(x_kept, cutpoint)
    n_low = int(m[best])
    return CutpointResult(
        variable=variable,
        cutpoint=cutpoint,
        statistic=float(statistics[best]),
        n=n,
        n_events=n_events,
        n_low=n_low,
        n_high=n - n_low,
        n_missing=n_missing,
        minprop=minprop,
        maxprop=upper_prop,
        candidate_cuts=sorted_x[m - 1],
        candidate_statistics=statistics,
        groups=groups,
        p_value_lau94=lausen94_p_value(
            statistics[best], n, minprop=minprop, maxprop=upper_prop, group_sizes=m
        ),
        p_value_lau92=lausen92_p_value(statistics[best], minprop=minprop, maxprop=upper_prop),
        p_value_uncorrected=float(2 * scipy_stats.norm.sf(statistics[best])),
    )


def ca19_9_groups(
    ca19_9_u_per_ml: ArrayLike, *, threshold_u_per_ml: float = CA19_9_THRESHOLD_U_PER_ML
) -> np.ndarray:
    """ "high" when CA19-9 > threshold (500 U/mL), "low" when <= threshold, ``None`` if missing."""
    return dichotomise(ca19_9_u_per_ml, threshold_u_per_ml)


def risk_groups(
    mrs_groups: Sequence[Any] | np.ndarray, ca19_9: Sequence[Any] | np.ndarray
) -> np.ndarray:
    """MRS x CA19-9 risk groups: high & high = "high", low & low = "low", otherwise "mid".

    A patient missing either group (no CA19-9 measured, no MRS) is "unknown": the risk group
    cannot be assigned without both, and "mid" would wrongly claim one of them is high.
    """
    mrs = pd.Series(np.asarray(mrs_groups, dtype=object)).where(lambda s: s.notna(), None)
    ca = pd.Series(np.asarray(ca19_9, dtype=object)).where(lambda s: s.notna(), None)
    if len(mrs) != len(ca):
        raise ValueError("mrs_groups and ca19_9 must have the same length")
    valid = {"low", "high"}
    for name, series in (("mrs_groups", mrs), ("ca19_9", ca)):
        unknown = set(series.dropna().unique()) - valid
        if unknown:
            raise ValueError(f"{name} must hold 'low'/'high'/None, found {sorted(unknown)}")
    result = np.full(len(mrs), "mid", dtype=object)
    result[((mrs == "high") & (ca == "high")).to_numpy()] = "high"
    result[((mrs == "low") & (ca == "low")).to_numpy()] = "low"
    result[(mrs.isna() | ca.isna()).to_numpy()] = "unknown"
    return result
