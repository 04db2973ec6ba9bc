"""The locked operating point of a model version (PMPD_METHOD.md, "Training and patient-level
decision"; TRIPOD+AI 12e: the model is validated as it was fixed at development).

A model version has ONE operating point, fixed when it is trained:

- per fold, the slice threshold (a slice is positive when its probability is at or above it)
  and the patient threshold (a fold calls the patient positive when the fraction of positive
  slices is at or above it), both chosen by Youden's J on that fold's held-out patients;
- the rule that combines the folds' calls ("fold_majority": positive when at least half of the
  fold models call it; "mean_fraction": the mean positive fraction against the mean patient
  threshold);
- the MRS cut-point of the MRS groups: the maximally selected log-rank cut (maxstat, minprop
  0.1, low = MRS <= cut) of the development cohort's out-of-fold MRS.

Every other cohort is evaluated at this point. A threshold picked again on the analysed cohort
is tuning on the test set: it exists only as the sensitivity analysis labelled
:data:`RETUNED_LABEL`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._base import NotComputable, StatResult
from .cutpoints import CutpointResult, maxstat_cutpoint

__all__ = [
    "LOCKED_LABEL",
    "RETUNED_LABEL",
    "FoldCall",
    "FoldOperatingPoint",
    "OperatingPoint",
    "fold_calls",
    "lock_operating_point",
]

RETUNED_LABEL = "re-tuned on this cohort (optimistic)"
LOCKED_LABEL = "locked at training"
RULES = ("fold_majority", "mean_fraction")


@dataclass(frozen=True)
class FoldOperatingPoint:
    """One fold model's thresholds (Youden's J on its own held-out patients)."""

    fold: int
    slice_threshold: float
    patient_threshold: float


@dataclass(frozen=True)
class FoldCall:
    """What one fold model says of one patient at the locked thresholds."""

    fold: int
    positive_fraction: float
    patient_threshold: float
    positive: bool


@dataclass(frozen=True, eq=False)
class OperatingPoint(StatResult):
    """A model version's locked operating point (see the module docstring)."""

    model_version: str
    rule: str
    folds: tuple[FoldOperatingPoint, ...]
    mrs_cutpoint: float | None
    mrs_cutpoint_statistic: float | None = None
    mrs_cutpoint_p_corrected: float | None = None
    mrs_cutpoint_n: int = 0
    mrs_cutpoint_minprop: float = 0.1
    mrs_cutpoint_reason: str = ""
    development_cohort: str = ""
    name: str = LOCKED_LABEL
    notes: tuple[str, ...] = field(default_factory=tuple)

    title: ClassVar[str] = "Operating point"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")

    @property
    def slice_threshold(self) -> float:
        """The mean of the fold slice thresholds (the slice-level evaluation of scores averaged
        over the fold models)."""
        return float(np.mean([f.slice_threshold for f in self.folds])) if self.folds else np.nan

    @property
    def patient_threshold(self) -> float:
        return float(np.mean([f.patient_threshold for f in self.folds])) if self.folds else np.nan

    def rule_text(self) -> str:
        if self.rule == "fold_majority":
            return (
                f"metastasis when at least {(len(self.folds) + 1) // 2} of {len(self.folds)} "
                "fold models find the share of slices at or above their slice threshold at "
                "or above their patient threshold"
            )
        return (
            "metastasis when the mean share of positive slices is at or above the mean "
            f"patient threshold {self.patient_threshold:.3f}"
        )

    def values_text(self) -> str:
        folds = "; ".join(
            f"fold {f.fold + 1}: slice {f.slice_threshold:.3f}, patient {f.patient_threshold:.3f}"
            for f in self.folds
        )
        cut = (
            f"MRS cut {self.mrs_cutpoint:.4g}"
            if self.mrs_cutpoint is not None
            else f"no MRS cut ({self.mrs_cutpoint_reason or 'not computable'})"
        )
        return f"{folds}; {cut}"

    @property
    def label(self) -> str:
        """Name + values + model version: what every figure and table says."""
        return f"{self.name} ({self.model_version}): {self.values_text()}"

    def to_frame(self) -> pd.DataFrame:
        rows: list[dict[str, Any]] = [
            {
                "component": f"fold {f.fold + 1}",
                "slice threshold": f.slice_threshold,
                "patient threshold": f.patient_threshold,
            }
            for f in self.folds
        ]
        rows.append(
            {
                "component": "MRS cut-point (maxstat, development cohort, low = MRS <= cut)",
                "MRS cut-point": self.mrs_cutpoint,
                "maxstat statistic": self.mrs_cutpoint_statistic,
                "corrected p (Lau94)": self.mrs_cutpoint_p_corrected,
            }
        )
        frame = pd.DataFrame(rows)
        frame.insert(0, "operating point", self.name)
        frame.insert(1, "model version", self.model_version)
        frame.insert(2, "rule", self.rule)
        return frame

    def to_dict(self) -> dict[str, Any]:
        """The stored form (on the model version and in its card), with its label."""
        return {**super().to_dict(), "label": self.label}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> OperatingPoint:
        """The inverse of :meth:`to_dict` (what a model version stores)."""
        known = {name for name in cls.__dataclass_fields__ if name != "title"}
        kwargs = {key: value for key, value in values.items() if key in known}
        kwargs["folds"] = tuple(FoldOperatingPoint(**fold) for fold in values.get("folds", ()))
        kwargs["notes"] = tuple(values.get("notes", ()))
        return cls(**kwargs)

    def calls(
        self, slice_probabilities: Sequence[Sequence[float]], folds: Sequence[int] | None = None
    ) -> tuple[bool | None, tuple[FoldCall, ...]]:
        """The patient's call from its slice probabilities ``[fold model][slice]``; ``folds``
        names the fold of each row (default: rows are folds 0, 1, ...; an out-of-fold
        prediction has one row, from the fold that held the patient out)."""
        return fold_calls(self, slice_probabilities, folds)


def fold_calls(
    point: OperatingPoint,
    slice_probabilities: Sequence[Sequence[float]],
    folds: Sequence[int] | None = None,
) -> tuple[bool | None, tuple[FoldCall, ...]]:
    """Each fold model's call at the locked thresholds and the patient's call by the rule."""
    by_fold = {f.fold: f for f in point.folds}
    rows = [np.asarray(row, dtype=float) for row in slice_probabilities]
    fold_ids = list(folds) if folds is not None else list(range(len(rows)))
    if len(fold_ids) != len(rows):
        raise ValueError(f"{len(fold_ids)} fold ids for {len(rows)} rows of slice probabilities")
    calls = []
    for fold, row in zip(fold_ids, rows, strict=True):
        thresholds = by_fold.get(int(fold))
        if thresholds is None or row.size == 0:
            continue
        fraction = float(np.mean(row >= thresholds.slice_threshold))
        calls.append(
            FoldCall(
                fold=int(fold),
                positive_fraction=fraction,
                patient_threshold=thresholds.patient_threshold,
                positive=fraction >= thresholds.patient_threshold,
            )
        )
    if not calls:
        return None, ()
    if point.rule == "fold_majority":
        return sum(c.positive for c in calls) * 2 >= len(calls), tuple(calls)
    mean_fraction = np.mean([c.positive_fraction for c in calls])
    mean_threshold = np.mean([c.patient_threshold for c in calls])
    return bool(mean_fraction >= mean_threshold), tuple(calls)


def lock_operating_point(
    *,
    model_version: str,
    rule: str,
    fold_thresholds: Sequence[Mapping[str, float]],
    time: ArrayLike,
    event: ArrayLike,
    metastasis_risk_score: ArrayLike,
    development_cohort: str,
    minprop: float = 0.1,
) -> OperatingPoint:
    """Fix the operating point at the end of training.

    ``fold_thresholds``: per fold ``{"fold", "slice_threshold", "patient_threshold"}`` (the
    model version's stored thresholds); ``time``/``event``/``metastasis_risk_score``: overall
    survival and the out-of-fold MRS of the development cohort's patients.
    """
    folds = tuple(
        FoldOperatingPoint(
            fold=int(f["fold"]),
            slice_threshold=float(f["slice_threshold"]),
            patient_threshold=float(f["patient_threshold"]),
        )
        for f in fold_thresholds
    )
    cut = maxstat_cutpoint(
        time, event, metastasis_risk_score, minprop=minprop, variable="metastasis_risk_score"
    )
    common: dict[str, Any] = {
        "model_version": model_version,
        "rule": rule,
        "folds": folds,
        "development_cohort": development_cohort,
        "mrs_cutpoint_minprop": minprop,
    }
    if isinstance(cut, NotComputable):
        return OperatingPoint(mrs_cutpoint=None, mrs_cutpoint_reason=cut.reason, **common)
    assert isinstance(cut, CutpointResult)
    return OperatingPoint(
        mrs_cutpoint=cut.cutpoint,
        mrs_cutpoint_statistic=cut.statistic,
        mrs_cutpoint_p_corrected=cut.p_value_lau94,
        mrs_cutpoint_n=cut.n,
        **common,
    )
