"""Performance in subgroups (possible confounders) and metastases missed at imaging.

- :func:`subgroup_auroc`: AUROC with DeLong CI within each level of tumour size, location, age
  group, sex and CT manufacturer (any grouping the caller passes).
- :func:`tumour_size_groups` / :func:`age_groups`: the default groupings, with configurable
  edges. Size groups are right-closed: "<= 20 mm", "20-40 mm" (> 20 and <= 40), "> 40 mm".
  Age groups follow survminer's cut side (low = value <= cut): "<= 65" and "> 65".
- :func:`missed_at_imaging_flagged`: among patients whose metastasis was missed at imaging
  and found at laparoscopy or surgery, the share the model flags (score >= threshold), with
  a Wilson score 95% CI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as scipy_stats

from ._base import NotComputable, StatResult, as_float_array, binary_labels, check_same_length
from .classification import AurocEstimate, delong_auroc

__all__ = [
    "MISSED_AT_IMAGING_METHODS",
    "MissedAtImagingResult",
    "SubgroupAurocTable",
    "SubgroupRow",
    "age_groups",
    "missed_at_imaging_flagged",
    "subgroup_auroc",
    "tumour_size_groups",
    "wilson_interval",
]

#: Detection methods meaning "missed at imaging" (metastasis found during an operation).
MISSED_AT_IMAGING_METHODS: tuple[str, ...] = ("laparoscopy", "surgery")


def tumour_size_groups(
    tumour_size_mm: ArrayLike, *, edges_mm: Sequence[float] = (20.0, 40.0)
) -> np.ndarray:
    """Right-closed size groups: "<= e1 mm", "e1-e2 mm" (e1 < size <= e2), ..., "> ek mm"."""
    edges = [float(edge) for edge in edges_mm]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"edges_mm must be increasing and non-empty, got {edges_mm}")
    sizes = as_float_array(tumour_size_mm, name="tumour_size_mm")
    names = (
        [f"<= {edges[0]:g} mm"]
        + [f"{low:g}-{high:g} mm" for low, high in zip(edges, edges[1:], strict=False)]
        + [f"> {edges[-1]:g} mm"]
    )
    index = np.searchsorted(np.asarray(edges), sizes, side="left")
    result = np.full(sizes.size, None, dtype=object)
    present = np.isfinite(sizes)
    result[present] = np.asarray(names, dtype=object)[index[present]]
    return result


def age_groups(age_years: ArrayLike, *, cut_years: float = 65.0) -> np.ndarray:
    """ "<= cut" and "> cut" (default 65 years), survminer's ``surv_cutpoint`` side (low =
    value <= cut) as every cut of the platform; ``None`` where the age is missing."""
    ages = as_float_array(age_years, name="age_years")
    result = np.full(ages.size, None, dtype=object)
    present = np.isfinite(ages)
    result[present & (ages <= cut_years)] = f"<= {cut_years:g}"
    result[present & (ages > cut_years)] = f"> {cut_years:g}"
    return result


@dataclass(frozen=True)
class SubgroupRow(StatResult):
    """AUROC within one level of one subgrouping variable."""

    variable: str
    level: str
    n: int
    n_positive: int
    n_negative: int
    estimate: AurocEstimate | NotComputable

    title: ClassVar[str] = "Subgroup AUROC"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self._row()])

    def _row(self) -> dict[str, Any]:
        computed = isinstance(self.estimate, AurocEstimate)
        return {
            "variable": self.variable,
            "level": self.level,
            "n": self.n,
            "n positive": self.n_positive,
            "AUROC": self.estimate.auroc if computed else np.nan,  # type: ignore[union-attr]
            "CI lower": self.estimate.ci_lower if computed else np.nan,  # type: ignore[union-attr]
            "CI upper": self.estimate.ci_upper if computed else np.nan,  # type: ignore[union-attr]
            "note": "" if computed else self.estimate.reason,  # type: ignore[union-attr]
        }


@dataclass(frozen=True)
class SubgroupAurocTable(StatResult):
    """AUROC (DeLong CI) overall and within each subgroup level."""

    overall: AurocEstimate | NotComputable
    rows: tuple[SubgroupRow, ...]
    variables: tuple[str, ...]

    title: ClassVar[str] = "AUROC by subgroup"

    def to_frame(self) -> pd.DataFrame:
        overall = SubgroupRow(
            variable="overall",
            level="all",
            n=(self.overall.n_positive + self.overall.n_negative)
            if isinstance(self.overall, AurocEstimate)
            else 0,
            n_positive=self.overall.n_positive if isinstance(self.overall, AurocEstimate) else 0,
            n_negative=self.overall.n_negative if isinstance(self.overall, AurocEstimate) else 0,
            estimate=self.overall,
        )
        return pd.DataFrame([overall._row(), *(row._row() for row in self.rows)])


def subgroup_auroc(
    labels: ArrayLike,
    scores: ArrayLike,
    subgroups: Mapping[str, ArrayLike],
    *,
    level_order: Mapping[str, Sequence[Any]] | None = None,
    confidence_level: float = 0.95,
) -> SubgroupAurocTable:
    """AUROC with DeLong CI overall and per level of each subgrouping variable.

    ``subgroups`` maps a variable name to one group label per patient (``None``/NaN =
    unknown, left out of that variable's rows). Levels appear in ``level_order[variable]``
    when given (listed levels without patients get a not-computable row), else sorted.
    """
    label_array, _ = binary_labels(labels)
    score_array = as_float_array(scores, name="scores")
    check_same_length(labels=label_array, scores=score_array)
    rows: list[SubgroupRow] = []
    for variable, groups in subgroups.items():
        group_values = pd.Series(np.asarray(groups, dtype=object))
        if len(group_values) != label_array.size:
            raise ValueError(
                f"subgroup {variable!r} has {len(group_values)} rows, expected {label_array.size}"
            )
        present = [value for value in group_values.dropna().unique()]
        ordered = list((level_order or {}).get(variable, []))
        ordered += sorted((value for value in present if value not in ordered), key=str)
        for level in ordered:
            mask = (group_values == level).to_numpy()
            usable = mask & ~np.isnan(label_array) & np.isfinite(score_array)
            n_positive = int(np.nansum(label_array[usable]))
            estimate = delong_auroc(
                label_array[mask], score_array[mask], confidence_level=confidence_level
            )
            if isinstance(estimate, NotComputable):
                estimate = NotComputable(
                    f"AUROC ({variable} = {level})", estimate.reason, estimate.missing
                )
            rows.append(
                SubgroupRow(
                    variable=variable,
                    level=str(level),
                    n=int(usable.sum()),
                    n_positive=n_positive,
                    n_negative=int(usable.sum()) - n_positive,
                    estimate=estimate,
                )
            )
    return SubgroupAurocTable(
        overall=delong_auroc(label_array, score_array, confidence_level=confidence_level),
        rows=tuple(rows),
        variables=tuple(subgroups),
    )


def wilson_interval(
    successes: int, n: int, *, confidence_level: float = 0.95
) -> tuple[float, float]:
    """Wilson score interval for a proportion (no continuity correction; R's
    ``prop.test(correct = FALSE)$conf.int``). NaN for n = 0."""
    if n <= 0:
        return (np.nan, np.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n, got {successes} of {n}")
    z = float(scipy_stats.norm.ppf(0.5 + confidence_level / 2.0))
    p = successes / n
    denominator = 1.0 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class MissedAtImagingResult(StatResult):
    """Metastases missed at imaging (found at laparoscopy/surgery) that the model flags."""

    n_missed: int
    n_flagged: int
    proportion: float
    ci_lower: float
    ci_upper: float
    confidence_level: float
    threshold: float
    detection_methods: tuple[str, ...]
    n_missing_score: int

    title: ClassVar[str] = "Metastases missed at imaging that the model flags"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "flagged": self.n_flagged,
                    "missed at imaging": self.n_missed,
                    "proportion": self.proportion,
                    "CI lower (Wilson)": self.ci_lower,
                    "CI upper (Wilson)": self.ci_upper,
                    "threshold": self.threshold,
                }
            ]
        )

    def formatted(self) -> str:
        """``25/38 = 65.8% (95% CI 49.9-78.8%)``."""
        return (
            f"{self.n_flagged}/{self.n_missed} = {self.proportion:.1%} "
            f"({self.confidence_level:.0%} CI {self.ci_lower:.1%}-{self.ci_upper:.1%})"
        )


def missed_at_imaging_flagged(
    labels: ArrayLike,
    detection_method: ArrayLike,
    scores: ArrayLike,
    *,
    threshold: float,
    missed_methods: Sequence[str] = MISSED_AT_IMAGING_METHODS,
    confidence_level: float = 0.95,
) -> MissedAtImagingResult | NotComputable:
    """n flagged / n missed: metastatic patients (label 1) detected by one of
    ``missed_methods`` (case-insensitive) whose score >= ``threshold``. Patients without a
    score are left out and counted in ``n_missing_score``."""
    label_array, _ = binary_labels(labels)
    score_array = as_float_array(scores, name="scores")
    methods = pd.Series(np.asarray(detection_method, dtype=object))
    check_same_length(labels=label_array, scores=score_array, detection_method=methods.to_numpy())
    wanted = {method.strip().lower() for method in missed_methods}
    normalised = methods.map(lambda value: str(value).strip().lower() if pd.notna(value) else None)
    missed = (label_array == 1) & normalised.isin(wanted).to_numpy()
    if not np.isfinite(threshold):
        return NotComputable(
            "Missed at imaging", "no decision threshold is available", ("threshold",)
        )
    scored = missed & np.isfinite(score_array)
    n_missed = int(scored.sum())
    if n_missed == 0:
        return NotComputable(
            "Missed at imaging",
            "no metastatic patient with a score was detected by " + " or ".join(sorted(wanted)),
            ("patients with metastases found at " + "/".join(sorted(wanted)),),
        )
    n_flagged = int((score_array[scored] >= threshold).sum())
    lower, upper = wilson_interval(n_flagged, n_missed, confidence_level=confidence_level)
    return MissedAtImagingResult(
        n_missed=n_missed,
        n_flagged=n_flagged,
        proportion=n_flagged / n_missed,
        ci_lower=lower,
        ci_upper=upper,
        confidence_level=confidence_level,
        threshold=float(threshold),
        detection_methods=tuple(sorted(wanted)),
        n_missing_score=int((missed & ~np.isfinite(score_array)).sum()),
    )
