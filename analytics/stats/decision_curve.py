"""Decision-curve analysis (Vickers & Elkin, Med Decis Making 2006;26:565-574).

At a threshold probability p_t (the risk of metastasis above which one would act, e.g. refer
for laparoscopy), a strategy that acts on the patients it flags has the net benefit

    NB(p_t) = TP / n - FP / n * p_t / (1 - p_t),

true positives counted as a benefit and false positives weighted by the odds of the threshold.
"Treat all" flags everyone: NB = prevalence - (1 - prevalence) p_t / (1 - p_t); "treat none"
flags no one: NB = 0. A score that is a probability (the MRS) flags the patients whose score
is at or above p_t; a fixed rule (CA19-9 > 500 U/mL, a risk group) flags the same patients at
every threshold, so its curve is a straight decreasing line. Patients missing the outcome or
a strategy's input are left out of that strategy (counted in ``n_missing``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._base import NotComputable, StatResult, as_float_array, binary_labels

__all__ = ["DEFAULT_THRESHOLDS", "DecisionCurveResult", "decision_curve", "net_benefit"]

DEFAULT_THRESHOLDS = tuple(round(value, 2) for value in np.arange(0.01, 1.0, 0.01))
TREAT_ALL, TREAT_NONE = "treat all", "treat none"


def net_benefit(labels: np.ndarray, flagged: np.ndarray, threshold: float) -> float:
    """NB of flagging ``flagged`` (bool) among cases with 0/1 ``labels`` at ``threshold``."""
    n = labels.size
    true_positive = np.count_nonzero(flagged & (labels == 1))
    false_positive = np.count_nonzero(flagged & (labels == 0))
    return true_positive / n - false_positive / n * threshold / (1.0 - threshold)


@dataclass(frozen=True, eq=False)
class DecisionCurveResult(StatResult):
    """Net benefit of each strategy over the thresholds (long frame: threshold, strategy)."""

    thresholds: np.ndarray
    net_benefit: dict[str, np.ndarray]
    n: dict[str, int]
    n_missing: dict[str, int]
    prevalence: float
    outcome: str

    title: ClassVar[str] = "Decision curves (net benefit, Vickers & Elkin 2006)"

    def to_frame(self) -> pd.DataFrame:
        return pd.concat(
            [
                pd.DataFrame(
                    {
                        "strategy": name,
                        "threshold probability": self.thresholds,
                        "net benefit": values,
                        "n": self.n[name],
                    }
                )
                for name, values in self.net_benefit.items()
            ],
            ignore_index=True,
        )


def decision_curve(
    labels: ArrayLike,
    strategies: Mapping[str, ArrayLike],
    *,
    thresholds: ArrayLike = DEFAULT_THRESHOLDS,
    outcome: str = "metastasis",
) -> DecisionCurveResult | NotComputable:
    """Net benefit of each strategy, of treat all and of treat none.

    A strategy is probabilities in [0, 1] (flagged where >= the threshold) or the 0/1
    (True/False) flags of a fixed rule, which the same comparison keeps fixed since every
    threshold lies strictly between 0 and 1; missing entries (NaN / None) leave the patient
    out of that strategy.
    """
    label_array, bad = binary_labels(labels)
    if bad:
        return NotComputable(
            "Decision curves", f"labels must be 0 or 1; found {', '.join(bad[:5])}", ("labels",)
        )
    grid = np.asarray(thresholds, dtype=float)
    if grid.size == 0 or np.any((grid <= 0) | (grid >= 1)):
        raise ValueError("threshold probabilities must lie strictly between 0 and 1")
    known = ~np.isnan(label_array)
    if known.sum() == 0:
        return NotComputable("Decision curves", "no patient has a known outcome", ("outcome",))
    y_all = label_array[known].astype(int)
    curves = {
        TREAT_ALL: np.array([net_benefit(y_all, np.ones(y_all.size, bool), t) for t in grid]),
        TREAT_NONE: np.zeros(grid.size),
    }
    sizes = {TREAT_ALL: int(y_all.size), TREAT_NONE: int(y_all.size)}
    missing = {TREAT_ALL: 0, TREAT_NONE: 0}
    for name, values in strategies.items():
        scores = as_float_array(
            [np.nan if v is None else float(v) for v in np.asarray(values, dtype=object)],
            name=name,
        )
        present = known & ~np.isnan(scores)
        y = label_array[present].astype(int)
        sizes[name], missing[name] = int(present.sum()), int((known & np.isnan(scores)).sum())
        if y.size == 0:
            curves[name] = np.full(grid.size, np.nan)
            continue
        chosen = scores[present]
        curves[name] = np.array([net_benefit(y, chosen >= t, t) for t in grid])
    return DecisionCurveResult(
        thresholds=grid,
        net_benefit=curves,
        n=sizes,
        n_missing=missing,
        prevalence=float(y_all.mean()),
        outcome=outcome,
    )
