"""A model version's locked operating point: computed once at the end of training and stored
on the version (and in its card); read by the analytics and by the patient page.

The point itself and its rules are :mod:`analytics.stats.operating_point` (no Django). Here:
:func:`lock_operating_point` computes it from the version's stored out-of-fold predictions and
its development cohort's survival (the MRS cut-point is maxstat on the out-of-fold MRS);
:func:`operating_point_of` reads it; :func:`reading_for` is one patient's reading at it (the
call, the rule in words, the MRS against the locked cut, the MRS group and the risk group).
``manage.py lock_operating_points`` locks the versions trained before the point existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import transaction

from analytics.stats import (
    CA19_9_THRESHOLD_U_PER_ML,
    FoldCall,
    OperatingPoint,
)
from analytics.stats import (
    lock_operating_point as lock_point,
)
from analytics.stats._base import jsonable

from .models import ModelVersion, PatientPrediction
from .registry import patient_call_rule_of

__all__ = ["Reading", "lock_operating_point", "operating_point_of", "reading_for"]


def _development_data(version: ModelVersion) -> tuple[list[float], list[float], list[float]]:
    """Overall survival (days, death 1/0) and out-of-fold MRS of the training patients; a
    patient without follow-up is kept as missing (maxstat drops incomplete rows)."""
    rows = PatientPrediction.objects.filter(
        model_version=version, source=PatientPrediction.Source.OUT_OF_FOLD
    ).values_list(
        "metastasis_risk_score", "patient__overall_survival_days", "patient__vital_status"
    )
    time, event, mrs = [], [], []
    for score, days, status in rows:
        mrs.append(float(score))
        time.append(float(days) if days is not None else np.nan)
        event.append({"dead": 1.0, "alive": 0.0}.get(status or "", np.nan))
    return time, event, mrs


def compute_operating_point(version: ModelVersion) -> OperatingPoint:
    """The locked point of ``version`` from its stored thresholds and out-of-fold predictions."""
    time, event, mrs = _development_data(version)
    cohort = version.trained_on
    return lock_point(
        model_version=version.name,
        rule=patient_call_rule_of(version),
        fold_thresholds=version.thresholds,
        time=time,
        event=event,
        metastasis_risk_score=mrs,
        development_cohort=cohort.name if cohort is not None else "",
    )


def lock_operating_point(version: ModelVersion) -> OperatingPoint:
    """Compute and store the point on the version and in its card."""
    point = compute_operating_point(version)
    stored = jsonable(point.to_dict())
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        locked.operating_point = stored
        locked.card = {**(locked.card or {}), "operating_point": stored}
        locked.save(update_fields=["operating_point", "card"])
    version.operating_point, version.card = locked.operating_point, locked.card
    return point


def operating_point_of(version: ModelVersion | None) -> OperatingPoint | None:
    """The version's locked point, ``None`` when it has none (not trained, or not locked)."""
    if version is None or not version.operating_point:
        return None
    return OperatingPoint.from_dict(version.operating_point)


@dataclass(frozen=True)
class Reading:
    """One patient's reading at the locked operating point of a model version."""

    model_version: str
    operating_point: OperatingPoint | None
    predicted_metastasis: bool | None
    rule_in_words: str
    fold_calls: tuple[FoldCall, ...]
    metastasis_risk_score: float
    mrs_cutpoint: float | None
    mrs_against_cut: str
    mrs_group: str | None
    ca19_9_group: str | None
    risk_group: str
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        values = jsonable(
            {name: getattr(self, name) for name in self.__dataclass_fields__}  # type: ignore[attr-defined]
        )
        values["operating_point"] = (
            None if self.operating_point is None else self.operating_point.label
        )
        return values


def _rule_in_words(point: OperatingPoint, calls: tuple[FoldCall, ...], call: bool) -> str:
    outcome = "metastasis predicted" if call else "no metastasis predicted"
    if len(calls) == 1:
        only = calls[0]
        side = "at or above" if only.positive else "below"
        return (
            f"fold model {only.fold + 1} (the one that held this patient out): "
            f"{only.positive_fraction:.0%} of slices positive, {side} its patient threshold "
            f"{only.patient_threshold:.2f}: {outcome}"
        )
    above = sum(c.positive for c in calls)
    if point.rule == "fold_majority":
        return f"{above} of {len(calls)} fold models above their thresholds: {outcome}"
    mean_fraction = float(np.mean([c.positive_fraction for c in calls]))
    mean_threshold = float(np.mean([c.patient_threshold for c in calls]))
    return (
        f"mean share of positive slices {mean_fraction:.0%} against the mean patient threshold "
        f"{mean_threshold:.2f} ({above} of {len(calls)} fold models above their own): {outcome}"
    )


def _ca19_9_group(value: float | None) -> str | None:
    if value is None:
        return None
    return "high" if float(value) > CA19_9_THRESHOLD_U_PER_ML else "low"


def reading_for(prediction: PatientPrediction) -> Reading:
    """The call, the rule in words, the MRS against the locked cut and the groups.

    The call is recomputed from the stored slice probabilities at the locked thresholds (an
    out-of-fold prediction by the one fold model that held the patient out); it is the stored
    call unless the version was re-locked since, which a note says.
    """
    version = prediction.model_version
    point = operating_point_of(version)
    mrs = float(prediction.metastasis_risk_score)
    ca_group = _ca19_9_group(prediction.patient.ca19_9_u_per_ml)
    if point is None:
        return Reading(
            model_version=version.name,
            operating_point=None,
            predicted_metastasis=prediction.predicted_metastasis,
            rule_in_words=f"{version.name} has no locked operating point: stored call only",
            fold_calls=(),
            metastasis_risk_score=mrs,
            mrs_cutpoint=None,
            mrs_against_cut="no locked MRS cut-point",
            mrs_group=None,
            ca19_9_group=ca_group,
            risk_group="unknown",
        )
    if prediction.source != PatientPrediction.Source.OUT_OF_FOLD:
        call, calls = point.calls(prediction.slice_probabilities)
    elif prediction.fold is not None:
        call, calls = point.calls(prediction.slice_probabilities[:1], [prediction.fold])
    else:
        call, calls = None, ()
    notes: list[str] = []
    if call is None:
        call = prediction.predicted_metastasis
        words = "the stored call (the fold of this out-of-fold prediction is not recorded)"
    else:
        words = _rule_in_words(point, calls, call)
        if call != prediction.predicted_metastasis:
            notes.append("the stored call differs: it was made before the point was locked")
    cut = point.mrs_cutpoint
    if cut is None:
        mrs_group, against = None, f"no locked MRS cut-point ({point.mrs_cutpoint_reason})"
    else:
        mrs_group = "low" if mrs <= cut else "high"
        side = "at or below" if mrs <= cut else "above"
        against = f"MRS {mrs:.3f} is {side} the locked cut-point {cut:.3f}: {mrs_group} MRS"
    if mrs_group is None or ca_group is None:
        risk = "unknown"
    elif mrs_group == ca_group:
        risk = mrs_group
    else:
        risk = "mid"
    return Reading(
        model_version=version.name,
        operating_point=point,
        predicted_metastasis=call,
        rule_in_words=words,
        fold_calls=calls,
        metastasis_risk_score=mrs,
        mrs_cutpoint=cut,
        mrs_against_cut=against,
        mrs_group=mrs_group,
        ca19_9_group=ca_group,
        risk_group=risk,
        notes=tuple(notes),
    )
