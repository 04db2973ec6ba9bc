"""Survival analysis as R's ``survival`` package prints it: Kaplan-Meier with Greenwood CIs and
median survival, numbers at risk, the log-rank test, Cox regression (Efron ties) and
Harrell's C-index.

Conventions:

- ``time`` is the follow-up time (days in this platform), ``event`` is 1 for death and 0 for
  censored. Rows with a missing time, event or group are dropped and counted; negative times
  are treated as missing.
- Kaplan-Meier ``std_err`` is R's ``survfit()$std.err``: the Greenwood standard error of the
  cumulative hazard, sqrt(sum d / (n (n - d))). Confidence intervals:
  ``conf_type="log"`` (R's default, ``conf.type = "log"``): S exp(+/- z se), upper capped at 1;
  ``conf_type="log-log"``: S^exp(+/- z se / log S). As in R, the "log" limits are NaN where
  S = 0 and the "log-log" limits are NaN where S = 0 or S = 1.
- Median survival and its CI follow ``survival:::quantile.survfit``: the median is the first
  time the curve is <= 0.5, except that when the curve is flat at exactly 0.5 (within
  sqrt(machine epsilon)) it is the midpoint of that flat stretch (or of the flat stretch and the
  last follow-up time when the curve ends at 0.5); the CI limits are the same rule applied to
  the lower and the upper confidence curves. A limit the curve never reaches is NaN
  ("not reached"), as R prints NA.
- The log-rank test is ``survdiff(rho = 0)``: observed and expected deaths per group,
  hypergeometric variance, chi-square with (number of groups with expected > 0) - 1 degrees
  of freedom.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

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
from .proportional_hazards import ProportionalHazardsTest, schoenfeld_test

__all__ = [
    "DEFAULT_ADJUSTMENT",
    "ConcordanceResult",
    "CoxResult",
    "CoxTable",
    "CoxTerm",
    "KaplanMeierCurve",
    "KaplanMeierResult",
    "LogRankResult",
    "MedianSurvival",
    "adjusted_cox",
    "cox_regression",
    "cox_univariable",
    "default_at_risk_times",
    "harrell_c_index",
    "kaplan_meier",
    "kaplan_meier_by_group",
    "logrank_test",
    "numbers_at_risk",
]

ConfType = Literal["log", "log-log"]

#: Variables the Cox helper adjusts for unless told otherwise (the paper's adjustment).
DEFAULT_ADJUSTMENT: tuple[str, ...] = ("age_at_diagnosis_years", "sex", "centre")

#: R's ``quantile.survfit`` tolerance for "the curve is exactly at the quantile".
_R_TOLERANCE = math.sqrt(np.finfo(float).eps)


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SurvivalData:
    time: np.ndarray
    event: np.ndarray  # float 0/1
    keep: np.ndarray  # mask of the input rows used
    n_missing: int


def _prepare_survival(
    time: ArrayLike,
    event: ArrayLike,
    *extra: np.ndarray,
    analysis: str,
    names: Sequence[str] = (),
) -> _SurvivalData | NotComputable:
    """The complete rows; when there are none, the reason names what is missing: the
    follow-up itself, or (``names`` naming the ``extra`` arrays) the variables empty in every
    patient who has a follow-up."""
    time_array = as_float_array(time, name="time")
    event_array, bad = binary_labels(event, name="event")
    check_same_length(time=time_array, event=event_array)
    if bad:
        return NotComputable(
            analysis,
            f"event must be 0 (censored) or 1 (death); found {', '.join(bad[:5])}",
            ("0/1 event indicator",),
        )
    followed = np.isfinite(time_array) & (time_array >= 0) & ~np.isnan(event_array)
    keep = followed.copy()
    for array in extra:
        keep &= ~pd.isna(array)
    n_missing = int((~keep).sum())
    if not keep.any():
        n_followed = int(followed.sum())
        if n_followed and names:
            empty = [
                name
                for name, array in zip(names, extra, strict=False)
                if pd.isna(np.asarray(array, dtype=object)[followed]).all()
            ]
            what = (
                f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty for all "
                f"{n_followed} patients with a follow-up time and vital status"
                if empty
                else f"none of the {n_followed} patients with a follow-up time and vital "
                f"status has every one of {', '.join(names)}"
            )
            return NotComputable(analysis, what, tuple(empty or names))
        return NotComputable(
            analysis,
            "no patient has a follow-up time and vital status"
            + (f" ({n_missing} incomplete rows)" if n_missing else ""),
            ("follow-up time", "vital status"),
        )
    return _SurvivalData(
        time=time_array[keep], event=event_array[keep], keep=keep, n_missing=n_missing
    )


def _group_labels(groups: ArrayLike) -> np.ndarray:
    """Group labels as an object array with ``None`` for missing."""
    series = (
        groups if isinstance(groups, pd.Series) else pd.Series(np.asarray(groups, dtype=object))
    )
    values = series.astype(object).to_numpy()
    missing = pd.isna(values)
    values = values.copy()
    values[missing] = None
    return values


def _ordered_groups(values: np.ndarray, group_order: Sequence[Any] | None) -> list[Any]:
    present = [value for value in pd.unique(values) if value is not None]
    if group_order is not None:
        ordered = list(group_order)
        return ordered + [value for value in sorted(present, key=str) if value not in ordered]
    try:
        return sorted(present)
    except TypeError:
        return sorted(present, key=str)


# --------------------------------------------------------------------------------------------
# Kaplan-Meier
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MedianSurvival(StatResult):
    """Median survival time and its CI; NaN means "not reached" (R prints NA)."""

    median: float
    ci_lower: float
    ci_upper: float
    confidence_level: float
    conf_type: str

    title: ClassVar[str] = "Median survival"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"median": self.median, "CI lower": self.ci_lower, "CI upper": self.ci_upper}]
        )

    def formatted(self) -> str:
        def show(value: float) -> str:
            return "NR" if not np.isfinite(value) else f"{value:g}"

        return f"{show(self.median)} ({show(self.ci_lower)}-{show(self.ci_upper)})"


@dataclass(frozen=True, eq=False)
class KaplanMeierCurve(StatResult):
    """One Kaplan-Meier curve, one row per distinct observed time (events and censorings)."""

    label: str
    time: np.ndarray
    n_risk: np.ndarray
    n_event: np.ndarray
    n_censor: np.ndarray
    survival: np.ndarray
    std_err: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    conf_type: str
    confidence_level: float
    n: int
    n_events: int
    median: MedianSurvival

    title: ClassVar[str] = "Kaplan-Meier estimate"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "time": self.time,
                "n.risk": self.n_risk,
                "n.event": self.n_event,
                "n.censor": self.n_censor,
                "survival": self.survival,
                "std.err": self.std_err,
                "lower": self.lower,
                "upper": self.upper,
            }
        )

    def survival_at(self, times: ArrayLike) -> np.ndarray:
        """S(t) at the given times (right-continuous step function; 1 before the first time)."""
        at = np.asarray(times, dtype=float)
        index = np.searchsorted(self.time, at, side="right") - 1
        return np.where(index >= 0, self.survival[np.clip(index, 0, None)], 1.0)


def _confidence_limits(
    survival: np.ndarray, std_err: np.ndarray, conf_type: ConfType, z: float
) -> tuple[np.ndarray, np.ndarray]:
    """R's ``survival:::survfit_confint`` for the "log" and "log-log" types."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if conf_type == "log":
            s = np.where(survival == 0, np.nan, survival)
            lower = np.exp(np.log(s) - z * std_err)
            upper = np.minimum(np.exp(np.log(s) + z * std_err), 1.0)
        elif conf_type == "log-log":
            s = np.where((survival == 0) | (survival == 1), np.nan, survival)
            shift = z * std_err / np.log(s)
            lower = np.exp(-np.exp(np.log(-np.log(s)) - shift))
            upper = np.exp(-np.exp(np.log(-np.log(s)) + shift))
        else:
            raise ValueError(f"conf_type must be 'log' or 'log-log', got {conf_type!r}")
    return lower, upper


def _r_findq(x: np.ndarray, y: np.ndarray, p: float, xmax: float) -> float:
    """``findq`` of ``survival:::quantile.survfit`` for one probability ``p``.

    ``x`` starts with the start time (0) and ``y`` = 1 - curve starts with 0. R's ``approx``
    with ``method = "constant", f = 1`` returns, for each ``p``, the index of the smallest
    y value at or above it; this is reproduced with NaNs dropped as ``approx`` drops them.
    """
    valid = ~np.isnan(y)
    if not valid.any() or np.nanmax(y) < p:
        return np.nan
    # duplicated(y): keep the first occurrence of each value (NaN counts as one value).
    _, first = np.unique(np.where(np.isnan(y), np.inf, y), return_index=True)
    first = np.sort(first)
    x_unique, y_unique = x[first], y[first]
    usable = ~np.isnan(y_unique)
    xs, ys = x_unique[usable], y_unique[usable]

    def smallest_at_or_above(shifted: np.ndarray) -> float:
        if p < shifted.min() or p > shifted.max():
            return np.nan
        candidates = np.flatnonzero(shifted >= p)
        return float(xs[candidates[np.argmin(ys[candidates])]])

    low = smallest_at_or_above(ys + _R_TOLERANCE)
    high = smallest_at_or_above(ys - _R_TOLERANCE)
    quantile = (low + high) / 2.0
    last = y_unique[-1]
    if not np.isnan(last) and abs(p - last) < _R_TOLERANCE:
        quantile = (low + xmax) / 2.0
    return quantile


def _median(
    time: np.ndarray,
    survival: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    conf_type: str,
    confidence_level: float,
) -> MedianSurvival:
    x = np.r_[0.0, time]
    xmax = float(time[-1])
    return MedianSurvival(
        median=_r_findq(x, np.r_[0.0, 1.0 - survival], 0.5, xmax),
        ci_lower=_r_findq(x, np.r_[0.0, 1.0 - lower], 0.5, xmax),
        ci_upper=_r_findq(x, np.r_[0.0, 1.0 - upper], 0.5, xmax),
        confidence_level=confidence_level,
        conf_type=conf_type,
    )


def _kaplan_meier_curve(
    time: np.ndarray,
    event: np.ndarray,
    *,
    label: str,
    conf_type: ConfType,
    confidence_level: float,
) -> KaplanMeierCurve:
    order = np.argsort(time, kind="mergesort")
    sorted_time = time[order]
    sorted_event = event[order]
    unique_times, first_index, counts = np.unique(
        sorted_time, return_index=True, return_counts=True
    )
    n_event = np.add.reduceat(sorted_event, first_index)
    n_risk = (time.size - first_index).astype(float)
    survival = np.cumprod(1.0 - n_event / n_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(n_event > 0, n_event / (n_risk * (n_risk - n_event)), 0.0)
    std_err = np.sqrt(np.cumsum(terms))
    z = float(scipy_stats.norm.ppf(0.5 + confidence_level / 2.0))
    lower, upper = _confidence_limits(survival, std_err, conf_type, z)
    return KaplanMeierCurve(
        label=label,
        time=unique_times,
        n_risk=n_risk.astype(int),
        n_event=n_event.astype(int),
        n_censor=(counts - n_event).astype(int),
        survival=survival,
        std_err=std_err,
        lower=lower,
        upper=upper,
        conf_type=conf_type,
        confidence_level=confidence_level,
        n=int(time.size),
        n_events=int(event.sum()),
        median=_median(unique_times, survival, lower, upper, conf_type, confidence_level),
    )


def kaplan_meier(
    time: ArrayLike,
    event: ArrayLike,
    *,
    conf_type: ConfType = "log",
    confidence_level: float = 0.95,
    label: str = "all",
) -> KaplanMeierCurve | NotComputable:
    """Kaplan-Meier estimate with Greenwood CI (``survfit(Surv(time, event) ~ 1)``).

    A curve with no events is computable (flat at 1, median not reached).
    """
    if conf_type not in ("log", "log-log"):
        raise ValueError(f"conf_type must be 'log' or 'log-log', got {conf_type!r}")
    data = _prepare_survival(time, event, analysis="Kaplan-Meier")
    if isinstance(data, NotComputable):
        return data
    return _kaplan_meier_curve(
        data.time, data.event, label=label, conf_type=conf_type, confidence_level=confidence_level
    )


def numbers_at_risk(time: ArrayLike, at_times: ArrayLike) -> np.ndarray:
    """Number of patients still at risk (follow-up time >= t) at each time in ``at_times``.

    This is the ``n.risk`` of R's ``summary(survfit, times = at_times)`` and of the risk
    tables under survminer plots. Missing times are ignored.
    """
    values = as_float_array(time, name="time")
    values = np.sort(values[np.isfinite(values)])
    at = np.asarray(at_times, dtype=float)
    return (values.size - np.searchsorted(values, at, side="left")).astype(int)


def default_at_risk_times(max_time: float, *, n_intervals: int = 5) -> np.ndarray:
    """Evenly spaced "round" times from 0 to ``max_time`` for the numbers-at-risk table.

    The step is the smallest of 1, 2, 2.5 or 5 times a power of ten that gives at most
    ``n_intervals`` intervals.
    """
    if not np.isfinite(max_time) or max_time <= 0:
        return np.array([0.0])
    raw_step = max_time / n_intervals
    magnitude = 10.0 ** math.floor(math.log10(raw_step))
    step = next(
        factor * magnitude
        for factor in (1.0, 2.0, 2.5, 5.0, 10.0)
        if factor * magnitude >= raw_step
    )
    return np.arange(0.0, max_time + step * 1e-9, step)


# --------------------------------------------------------------------------------------------
# Log-rank
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogRankResult(StatResult):
    """``survdiff(Surv(time, event) ~ group)``: observed and expected deaths and chi-square."""

    groups: tuple[str, ...]
    n: tuple[int, ...]
    observed: tuple[float, ...]
    expected: tuple[float, ...]
    variance_diagonal: tuple[float, ...]
    chi_square: float
    df: int
    p_value: float

    title: ClassVar[str] = "Log-rank test"

    def to_frame(self) -> pd.DataFrame:
        observed = np.asarray(self.observed)
        expected = np.asarray(self.expected)
        with np.errstate(divide="ignore", invalid="ignore"):
            return pd.DataFrame(
                {
                    "group": self.groups,
                    "N": self.n,
                    "Observed": observed,
                    "Expected": expected,
                    "(O-E)^2/E": (observed - expected) ** 2 / expected,
                    "(O-E)^2/V": (observed - expected) ** 2 / np.asarray(self.variance_diagonal),
                }
            )

    def __str__(self) -> str:
        return (
            f"{super().__str__()}\n\n Chisq= {self.chi_square:.1f}  on {self.df} degrees of "
            f"freedom, p= {format_number(self.p_value, 2)}"
        )


def _logrank_from_arrays(
    time: np.ndarray, event: np.ndarray, codes: np.ndarray, groups: Sequence[Any]
) -> LogRankResult | NotComputable:
    k = len(groups)
    n_per_group = np.bincount(codes, minlength=k)
    present = n_per_group > 0
    if present.sum() < 2:
        return NotComputable(
            "Log-rank test",
            "only one group has patients: a comparison needs at least two",
            ("a second group",),
        )
    if event.sum() == 0:
        return NotComputable(
            "Log-rank test",
            "all patients are censored: there are no deaths to compare",
            ("deaths",),
        )
    unique_times, time_index = np.unique(time, return_inverse=True)
    n_times = unique_times.size
    at_time = np.zeros((n_times, k))
    np.add.at(at_time, (time_index, codes), 1.0)
    deaths = np.zeros((n_times, k))
    np.add.at(deaths, (time_index, codes), event)
    at_risk = np.cumsum(at_time[::-1], axis=0)[::-1]
    d_total = deaths.sum(axis=1)
    rows = d_total > 0
    at_risk, deaths, d_total = at_risk[rows], deaths[rows], d_total[rows]
    n_total = at_risk.sum(axis=1)
    share = at_risk / n_total[:, None]
    expected = (share * d_total[:, None]).sum(axis=0)
    observed = deaths.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(n_total > 1, d_total * (n_total - d_total) / (n_total - 1.0), 0.0)
    variance = np.einsum("t,tg,th->gh", scale, share, -share)
    variance[np.diag_indices(k)] += (scale[:, None] * share).sum(axis=0)
    used = np.flatnonzero(expected > 0)
    df = used.size - 1
    if df < 1:
        return NotComputable(
            "Log-rank test",
            "fewer than two groups have patients at risk at a death time",
            ("a second group at risk",),
        )
    difference = (observed - expected)[used][1:]
    sub_variance = variance[np.ix_(used, used)][1:, 1:]
    try:
        chi_square = float(difference @ np.linalg.solve(sub_variance, difference))
    except np.linalg.LinAlgError:
        chi_square = float(difference @ np.linalg.pinv(sub_variance) @ difference)
    return LogRankResult(
        groups=tuple(str(group) for group in groups),
        n=tuple(int(value) for value in n_per_group),
        observed=tuple(float(value) for value in observed),
        expected=tuple(float(value) for value in expected),
        variance_diagonal=tuple(float(value) for value in np.diag(variance)),
        chi_square=chi_square,
        df=int(df),
        p_value=float(scipy_stats.chi2.sf(chi_square, df)),
    )


def logrank_test(
    time: ArrayLike,
    event: ArrayLike,
    groups: ArrayLike,
    *,
    group_order: Sequence[Any] | None = None,
) -> LogRankResult | NotComputable:
    """Log-rank test for two or more groups (R's ``survdiff``, rho = 0)."""
    labels = _group_labels(groups)
    data = _prepare_survival(time, event, labels, analysis="Log-rank test")
    if isinstance(data, NotComputable):
        return data
    kept = labels[data.keep]
    order = _ordered_groups(kept, group_order)
    codes = pd.Categorical(kept, categories=order).codes.astype(np.int64)
    return _logrank_from_arrays(data.time, data.event, codes, order)


@dataclass(frozen=True, eq=False)
class KaplanMeierResult(StatResult):
    """Kaplan-Meier curves by group with the log-rank test and the numbers-at-risk table."""

    group_variable: str
    groups: tuple[str, ...]
    curves: dict[str, KaplanMeierCurve | NotComputable]
    logrank: LogRankResult | NotComputable
    at_risk_times: np.ndarray
    at_risk: dict[str, tuple[int, ...]]
    conf_type: str
    confidence_level: float
    n_missing: int

    title: ClassVar[str] = "Kaplan-Meier by group"

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for group in self.groups:
            curve = self.curves[group]
            if isinstance(curve, KaplanMeierCurve):
                rows.append(
                    {
                        "group": group,
                        "n": curve.n,
                        "events": curve.n_events,
                        "median": curve.median.median,
                        "0.95LCL"
                        if self.confidence_level == 0.95
                        else "LCL": curve.median.ci_lower,
                        "0.95UCL"
                        if self.confidence_level == 0.95
                        else "UCL": curve.median.ci_upper,
                    }
                )
            else:
                rows.append({"group": group, "n": 0, "events": 0, "median": np.nan})
        return pd.DataFrame(rows)

    def at_risk_frame(self) -> pd.DataFrame:
        """Numbers at risk, one row per group and one column per time."""
        return pd.DataFrame(
            {
                f"{time:g}": [self.at_risk[group][index] for group in self.groups]
                for index, time in enumerate(self.at_risk_times)
            },
            index=pd.Index(self.groups, name=self.group_variable),
        )

    def __str__(self) -> str:
        parts = [f"{self.title}: {self.group_variable}", super().__str__().split("\n", 1)[1]]
        parts.append("Numbers at risk")
        parts.append(self.at_risk_frame().to_string())
        parts.append(
            str(self.logrank)
            if isinstance(self.logrank, NotComputable)
            else f"Log-rank chi-square {self.logrank.chi_square:.2f} on {self.logrank.df} df, "
            f"{p_text(self.logrank.p_value)}"
        )
        return "\n".join(parts)


def kaplan_meier_by_group(
    time: ArrayLike,
    event: ArrayLike,
    groups: ArrayLike,
    *,
    group_variable: str = "group",
    group_order: Sequence[Any] | None = None,
    conf_type: ConfType = "log",
    confidence_level: float = 0.95,
    at_risk_times: ArrayLike | None = None,
) -> KaplanMeierResult | NotComputable:
    """``survfit(Surv(time, event) ~ group)`` and ``survdiff`` in one call.

    ``group_order`` fixes the order of the groups (and lists groups that must appear even when
    empty: they get a :class:`NotComputable` curve). ``at_risk_times`` defaults to
    :func:`default_at_risk_times` of the longest follow-up.
    """
    if conf_type not in ("log", "log-log"):
        raise ValueError(f"conf_type must be 'log' or 'log-log', got {conf_type!r}")
    labels = _group_labels(groups)
    data = _prepare_survival(time, event, labels, analysis=f"Kaplan-Meier by {group_variable}")
    if isinstance(data, NotComputable):
        return data
    kept = labels[data.keep]
    order = _ordered_groups(kept, group_order)
    codes = pd.Categorical(kept, categories=order).codes.astype(np.int64)
    times = (
        default_at_risk_times(float(data.time.max()))
        if at_risk_times is None
        else np.asarray(at_risk_times, dtype=float)
    )
    curves: dict[str, KaplanMeierCurve | NotComputable] = {}
    at_risk: dict[str, tuple[int, ...]] = {}
    for code, group in enumerate(order):
        in_group = codes == code
        name = str(group)
        if not in_group.any():
            curves[name] = NotComputable(
                f"Kaplan-Meier ({group_variable} = {name})",
                "no patients in this group",
                ("patients",),
            )
            at_risk[name] = tuple(0 for _ in times)
            continue
        curves[name] = _kaplan_meier_curve(
            data.time[in_group],
            data.event[in_group],
            label=name,
            conf_type=conf_type,
            confidence_level=confidence_level,
        )
        at_risk[name] = tuple(int(v) for v in numbers_at_risk(data.time[in_group], times))
    return KaplanMeierResult(
        group_variable=group_variable,
        groups=tuple(str(group) for group in order),
        curves=curves,
        logrank=_logrank_from_arrays(data.time, data.event, codes, order),
        at_risk_times=times,
        at_risk=at_risk,
        conf_type=conf_type,
        confidence_level=confidence_level,
        n_missing=data.n_missing,
    )


# --------------------------------------------------------------------------------------------
# Concordance
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConcordanceResult(StatResult):
    """Harrell's C-index.

    Convention: a higher ``risk_score`` means a higher hazard (shorter survival), as a Cox
    linear predictor or the MRS. C = 0.5 is chance, 1 is perfect ranking. Computed with
    ``lifelines.utils.concordance_index(time, -risk_score, event)`` (lifelines expects a score
    that is higher for longer survival, hence the minus sign); tied risk scores count 1/2.
    """

    c_index: float
    n: int
    n_events: int
    n_missing: int

    title: ClassVar[str] = "Harrell's C-index"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"C-index": self.c_index, "n": self.n, "events": self.n_events}])


def harrell_c_index(
    time: ArrayLike, event: ArrayLike, risk_score: ArrayLike
) -> ConcordanceResult | NotComputable:
    """Harrell's C of ``risk_score`` (higher = worse prognosis) for right-censored survival."""
    from lifelines.utils import concordance_index

    risk = as_float_array(risk_score, name="risk_score")
    data = _prepare_survival(
        time, event, np.where(np.isfinite(risk), risk, np.nan), analysis="C-index"
    )
    if isinstance(data, NotComputable):
        return data
    if data.event.sum() == 0:
        return NotComputable(
            "C-index", "all patients are censored: no comparable pairs", ("deaths",)
        )
    try:
        c_index = concordance_index(data.time, -risk[data.keep], data.event)
    except ZeroDivisionError:
        return NotComputable("C-index", "no comparable pairs of patients", ("comparable pairs",))
    return ConcordanceResult(
        c_index=float(c_index),
        n=int(data.time.size),
        n_events=int(data.event.sum()),
        n_missing=data.n_missing,
    )


# --------------------------------------------------------------------------------------------
# Cox regression
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoxTerm(StatResult):
    """One coefficient of a Cox model: a continuous variable or one level of a categorical."""

    variable: str
    term: str
    level: str | None
    reference: str | None
    coef: float
    se: float
    hazard_ratio: float
    hr_lower: float
    hr_upper: float
    z: float
    p_value: float

    title: ClassVar[str] = "Cox term"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self._row()])

    def _row(self) -> dict[str, Any]:
        return {
            "term": self.term,
            "coef": self.coef,
            "exp(coef)": self.hazard_ratio,
            "se(coef)": self.se,
            "lower .95": self.hr_lower,
            "upper .95": self.hr_upper,
            "z": self.z,
            "p": self.p_value,
        }


@dataclass(frozen=True)
class CoxResult(StatResult):
    """A fitted Cox proportional-hazards model (Efron ties), as ``summary(coxph(...))``."""

    variables: tuple[str, ...]
    adjusted_for: tuple[str, ...]
    terms: tuple[CoxTerm, ...]
    reference_levels: dict[str, str]
    n: int
    n_events: int
    n_dropped_missing: int
    concordance: float
    log_likelihood: float
    likelihood_ratio_chi_square: float
    likelihood_ratio_df: int
    likelihood_ratio_p_value: float
    confidence_level: float
    ties: str = "efron"
    notes: tuple[str, ...] = ()
    proportional_hazards: ProportionalHazardsTest | NotComputable | None = None

    title: ClassVar[str] = "Cox proportional hazards (Efron ties)"

    @property
    def ph_flag(self) -> str:
        """The proportional-hazards check in words (flagged when p < 0.05)."""
        check = self.proportional_hazards
        if check is None:
            return "not checked"
        if isinstance(check, NotComputable):
            return f"not computable: {check.reason}"
        return check.flag

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([term._row() for term in self.terms])

    def term(self, name: str) -> CoxTerm:
        """The term called ``name`` (a variable name, or ``"variable[level]"``)."""
        for candidate in self.terms:
            if candidate.term == name:
                return candidate
        raise KeyError(name)

    def __str__(self) -> str:
        header = f"{self.title}\n  n= {self.n}, number of events= {self.n_events}" + (
            f" ({self.n_dropped_missing} observations deleted due to missingness)"
            if self.n_dropped_missing
            else ""
        )
        body = super().__str__().split("\n", 1)[1]
        references = ", ".join(f"{k}: {v}" for k, v in self.reference_levels.items())
        footer = [
            f"Concordance= {self.concordance:.3f}",
            f"Likelihood ratio test= {self.likelihood_ratio_chi_square:.2f}  on "
            f"{self.likelihood_ratio_df} df,   p={format_number(self.likelihood_ratio_p_value, 3)}",
        ]
        if self.adjusted_for:
            footer.append("Adjusted for: " + ", ".join(self.adjusted_for))
        if references:
            footer.append("Reference levels: " + references)
        footer.extend(self.notes)
        return "\n".join([header, body, *footer])


@dataclass(frozen=True)
class CoxTable(StatResult):
    """Several Cox models shown as one table (e.g. each variable univariably)."""

    models: dict[str, CoxResult | NotComputable]

    title: ClassVar[str] = "Univariable Cox regression"

    def to_frame(self) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        for name, model in self.models.items():
            if isinstance(model, CoxResult):
                for term in model.terms:
                    rows.append(
                        {
                            "model": name,
                            "n": model.n,
                            "events": model.n_events,
                            **term._row(),
                            "proportional hazards (cox.zph)": model.ph_flag,
                        }
                    )
            else:
                rows.append({"model": name, "term": name, "note": model.reason})
        return pd.DataFrame(rows)


def _is_categorical(series: pd.Series, name: str, categorical: Iterable[str]) -> bool:
    if name in set(categorical):
        return True
    return not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def _levels(series: pd.Series) -> list[Any]:
    if isinstance(series.dtype, pd.CategoricalDtype):
        observed = set(series.dropna().unique())
        return [level for level in series.cat.categories if level in observed]
    values = list(series.dropna().unique())
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _design_matrix(
    frame: pd.DataFrame,
    variables: Sequence[str],
    categorical: Iterable[str],
    reference_levels: Mapping[str, Any],
) -> tuple[pd.DataFrame, list[tuple[str, str, str | None, str | None]], dict[str, str]] | str:
    """Dummy-code categorical variables; returns (matrix, term descriptions, references) or
    the reason the design is degenerate."""
    columns: dict[str, np.ndarray] = {}
    descriptions: list[tuple[str, str, str | None, str | None]] = []
    references: dict[str, str] = {}
    for name in variables:
        series = frame[name]
        if _is_categorical(series, name, categorical):
            levels = _levels(series)
            if not levels:
                return f"{name} has no value in the analysed patients"
            if len(levels) < 2:
                return f"{name} has a single value ({levels[0]})"
            reference = reference_levels.get(name, levels[0])
            if reference not in levels:
                return f"reference level {reference!r} of {name} is not in the data ({levels})"
            references[name] = str(reference)
            values = series.astype(object).to_numpy()
            for level in levels:
                if level == reference:
                    continue
                term = f"{name}[{level}]"
                columns[term] = (values == level).astype(float)
                descriptions.append((name, term, str(level), str(reference)))
        else:
            values = series.astype(float).to_numpy()
            if np.nanstd(values) == 0:
                return f"{name} has a single value ({values[0]:g})"
            columns[name] = values
            descriptions.append((name, name, None, None))
    return pd.DataFrame(columns, index=frame.index), descriptions, references


def cox_regression(
    frame: pd.DataFrame,
    *,
    duration_col: str,
    event_col: str,
    variables: Sequence[str],
    categorical: Iterable[str] = (),
    reference_levels: Mapping[str, Any] | None = None,
    adjusted_for: Sequence[str] = (),
    confidence_level: float = 0.95,
    min_events: int = 2,
) -> CoxResult | NotComputable:
    """Cox proportional-hazards model of ``variables`` (+ ``adjusted_for``) with Efron ties.

    Wraps ``lifelines.CoxPHFitter`` (Efron's method for tied death times, as R's ``coxph``
    default) and reports Wald z, p and CIs as ``summary(coxph)``. Non-numeric variables, and
    those named in ``categorical``, are dummy-coded against a reference level: the one given in
    ``reference_levels``, else R's default (the first category of a pandas Categorical, or
    the first level in sorted order). Rows missing the duration, event or any variable are
    dropped and counted in ``n_dropped_missing``. Fewer than ``min_events`` deaths, a variable
    with a single value or a model that does not converge give a :class:`NotComputable`.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    all_variables = list(dict.fromkeys([*variables, *adjusted_for]))
    analysis = "Cox regression (" + " + ".join(all_variables) + ")"
    if not all_variables:
        raise ValueError("cox_regression needs at least one variable")
    missing_columns = [
        c for c in [duration_col, event_col, *all_variables] if c not in frame.columns
    ]
    if missing_columns:
        return NotComputable(
            analysis,
            "columns not in the data: " + ", ".join(missing_columns),
            tuple(missing_columns),
        )
    subset = frame[[duration_col, event_col, *all_variables]]
    data = _prepare_survival(
        subset[duration_col],
        subset[event_col],
        *(subset[name].to_numpy() for name in all_variables),
        analysis=analysis,
        names=all_variables,
    )
    if isinstance(data, NotComputable):
        return data
    complete = subset.loc[data.keep]
    n_events = int(data.event.sum())
    if n_events < min_events:
        return NotComputable(
            analysis,
            f"{n_events} death(s) among {len(complete)} patients; at least {min_events} needed",
            ("deaths",),
        )
    design = _design_matrix(complete, all_variables, categorical, reference_levels or {})
    if isinstance(design, str):
        return NotComputable(analysis, design, ("variation in the variables",))
    matrix, descriptions, references = design
    model_frame = matrix.copy()
    model_frame["__duration__"] = data.time
    model_frame["__event__"] = data.event
    fitter = CoxPHFitter(alpha=1.0 - confidence_level)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            fitter.fit(
                model_frame,
                duration_col="__duration__",
                event_col="__event__",
                # lifelines' default (1e-7) stops one Newton step early: on R's lung data the
                # sex coefficient then differs from coxph's -0.513219 in the sixth decimal.
                fit_options={"precision": 1e-12},
                # Same estimates either way; lifelines' batch mode is faster with many tied
                # times (day-resolution follow-up of thousands of patients), its own
                # heuristic keeps the per-time loop there.
                batch_mode=True if np.unique(data.time).size <= 0.25 * data.time.size else None,
            )
        except (ConvergenceError, np.linalg.LinAlgError, ValueError) as error:
            return NotComputable(
                analysis,
                f"the model did not converge ({str(error).split('.')[0]}); a variable may "
                "separate deaths perfectly or be collinear with another",
                (),
            )
    notes.extend(
        str(item.message).splitlines()[0]
        for item in caught
        if issubclass(item.category, ConvergenceWarning)
    )
    coefficients = fitter.params_
    standard_errors = fitter.standard_errors_
    z = float(scipy_stats.norm.ppf(0.5 + confidence_level / 2.0))
    with np.errstate(over="ignore", invalid="ignore"):
        upper_limits = np.exp(coefficients.to_numpy() + z * standard_errors.to_numpy())
    if not np.all(np.isfinite(upper_limits)):
        unbounded = [
            term
            for term, limit in zip(coefficients.index, upper_limits, strict=True)
            if not np.isfinite(limit)
        ]
        return NotComputable(
            analysis,
            f"the hazard ratio of {', '.join(unbounded)} is unbounded (a group with no deaths, "
            "or a variable that separates deaths perfectly)"
            + (f"; lifelines: {notes[0]}" if notes else ""),
            ("deaths in every group",),
        )
    terms = []
    for variable, term, level, reference in descriptions:
        coef = float(coefficients[term])
        se = float(standard_errors[term])
        terms.append(
            CoxTerm(
                variable=variable,
                term=term,
                level=level,
                reference=reference,
                coef=coef,
                se=se,
                hazard_ratio=math.exp(coef),
                hr_lower=math.exp(coef - z * se),
                hr_upper=math.exp(coef + z * se),
                z=coef / se,
                p_value=float(2.0 * scipy_stats.norm.sf(abs(coef / se))),
            )
        )
    lr = fitter.log_likelihood_ratio_test()
    try:
        ph_check: ProportionalHazardsTest | NotComputable = schoenfeld_test(fitter, model_frame)
    except (np.linalg.LinAlgError, ValueError, KeyError) as error:
        ph_check = NotComputable("Proportional-hazards check", str(error), ())
    return CoxResult(
        variables=tuple(variables),
        adjusted_for=tuple(name for name in adjusted_for if name not in variables),
        terms=tuple(terms),
        reference_levels=references,
        n=int(len(complete)),
        n_events=n_events,
        n_dropped_missing=data.n_missing,
        concordance=float(fitter.concordance_index_),
        log_likelihood=float(fitter.log_likelihood_),
        likelihood_ratio_chi_square=float(lr.test_statistic),
        likelihood_ratio_df=int(lr.degrees_freedom),
        likelihood_ratio_p_value=float(lr.p_value),
        confidence_level=confidence_level,
        notes=tuple(notes),
        proportional_hazards=ph_check,
    )


def adjusted_cox(
    frame: pd.DataFrame,
    *,
    duration_col: str,
    event_col: str,
    variables: Sequence[str],
    adjust_for: Sequence[str] = DEFAULT_ADJUSTMENT,
    categorical: Iterable[str] = (),
    reference_levels: Mapping[str, Any] | None = None,
    confidence_level: float = 0.95,
    min_events: int = 2,
) -> CoxResult | NotComputable:
    """Multivariable Cox model of ``variables`` adjusted for age, sex and centre by default.

    An adjustment variable that is absent from ``frame`` or has a single value among the
    complete rows (a one-centre cohort, a one-sex subgroup) is left out and the omission is
    recorded in ``notes``; the caller's ``variables`` are never dropped.
    """
    kept_adjustment: list[str] = []
    notes: list[str] = []
    for name in adjust_for:
        if name in variables:
            continue
        if name not in frame.columns:
            notes.append(f"not adjusted for {name}: column absent")
            continue
        needed = [duration_col, event_col, *variables, name]
        present = [c for c in needed if c in frame.columns]
        values = frame.loc[frame[present].notna().all(axis=1), name]
        if values.nunique() == 0:
            notes.append(f"not adjusted for {name}: no value recorded in the analysed patients")
            continue
        if values.nunique() < 2:
            notes.append(f"not adjusted for {name}: a single value in the analysed patients")
            continue
        kept_adjustment.append(name)
    result = cox_regression(
        frame,
        duration_col=duration_col,
        event_col=event_col,
        variables=variables,
        categorical=categorical,
        reference_levels=reference_levels,
        adjusted_for=kept_adjustment,
        confidence_level=confidence_level,
        min_events=min_events,
    )
    if isinstance(result, CoxResult) and notes:
        return dataclasses.replace(result, notes=(*result.notes, *notes))
    return result


def cox_univariable(
    frame: pd.DataFrame,
    *,
    duration_col: str,
    event_col: str,
    variables: Sequence[str],
    categorical: Iterable[str] = (),
    reference_levels: Mapping[str, Any] | None = None,
    confidence_level: float = 0.95,
    min_events: int = 2,
) -> CoxTable:
    """One Cox model per variable (each on its own complete rows)."""
    return CoxTable(
        models={
            name: cox_regression(
                frame,
                duration_col=duration_col,
                event_col=event_col,
                variables=[name],
                categorical=categorical,
                reference_levels=reference_levels,
                confidence_level=confidence_level,
                min_events=min_events,
            )
            for name in variables
        }
    )
