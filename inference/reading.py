"""One reading of a patient's PMPD result: the call with its rule in words, the fold models'
scores and how far they agree, and the plain-words statement of any signal that disagrees.

The patient page, the predictions table and the patients table take the call from
:func:`patient_reading` only, so the call at a model version's locked operating point replaces
the stored call in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .models import ModelVersion, PatientPrediction
from .operating_point import reading_for
from .registry import patient_call_rule_of

SITE_LABELS = {
    "none": "No metastasis",
    "liver": "Liver",
    "lung": "Lung",
    "peritoneum": "Peritoneum",
}
# A fold spread wider than this, on the 0-1 MRS scale, is read as "the fold models disagree".
WIDE_FOLD_SPREAD = 0.3


@dataclass(frozen=True)
class FoldReading:
    """One fold model's score and, when its thresholds are known, its own call."""

    fold: int  # 1-based, as the model card and the pages name folds
    metastasis_risk_score: float
    positive_fraction: float | None = None
    patient_threshold: float | None = None
    calls_metastasis: bool | None = None

    @property
    def position_percent(self) -> float:
        return 100.0 * min(max(self.metastasis_risk_score, 0.0), 1.0)


@dataclass
class PatientReading:
    """The call, the rule that made it, and the fold models behind it."""

    predicted_metastasis: bool
    operating_point: str
    rule: str
    folds: list[FoldReading]
    out_of_fold: bool
    held_out_by_fold: int | None
    agreement: str
    site_head: tuple[str, float] | None
    votes: int | None = None
    disagreements: list[str] = field(default_factory=list)

    @property
    def call(self) -> str:
        return "Metastasis predicted" if self.predicted_metastasis else "No metastasis predicted"

    @property
    def short_call(self) -> str:
        return "metastasis" if self.predicted_metastasis else "no metastasis"

    @property
    def signals_agree(self) -> bool:
        return not self.disagreements


def fold_thresholds(version: ModelVersion) -> dict[int, dict[str, float]]:
    return {int(row.get("fold", k)): row for k, row in enumerate(version.thresholds or [])}


def fold_holding_out(version: ModelVersion, study_id: str) -> int | None:
    """The 0-based fold whose test set held the patient out, from the model card."""
    for fold in (version.card or {}).get("folds", []):
        if study_id in fold.get("test_ids", []):
            return int(fold["fold"])
    return None


def _fold_readings(
    prediction: PatientPrediction, folds: list[int], thresholds: dict[int, dict[str, float]]
) -> list[FoldReading]:
    readings = []
    scores = list(prediction.mrs_per_fold or [prediction.metastasis_risk_score])
    for position, fold in enumerate(folds):
        row = thresholds.get(fold)
        probabilities = (
            np.asarray(prediction.slice_probabilities[position], dtype=float)
            if position < len(prediction.slice_probabilities)
            else np.asarray([])
        )
        fraction = threshold = called = None
        if row is not None and probabilities.size:
            fraction = float(np.mean(probabilities >= row["slice_threshold"]))
            threshold = float(row["patient_threshold"])
            called = fraction >= threshold
        score = scores[position] if position < len(scores) else prediction.metastasis_risk_score
        readings.append(FoldReading(fold + 1, float(score), fraction, threshold, called))
    return readings


def _rule(version: ModelVersion, folds: list[FoldReading], out_of_fold: bool) -> str:
    if any(f.calls_metastasis is None for f in folds):
        return "the fold thresholds of this model version are not recorded"
    if out_of_fold:
        f = folds[0]
        above = "above" if f.calls_metastasis else "below"
        return (
            f"fold model {f.fold}, which never saw this patient, is {above} its threshold "
            f"(positive fraction {f.positive_fraction:.2f} against {f.patient_threshold:.2f})"
        )
    votes = sum(bool(f.calls_metastasis) for f in folds)
    if patient_call_rule_of(version) == "mean_fraction":
        mean_fraction = float(np.mean([f.positive_fraction for f in folds]))
        mean_threshold = float(np.mean([f.patient_threshold for f in folds]))
        return (
            f"mean positive fraction {mean_fraction:.2f} against the mean threshold "
            f"{mean_threshold:.2f} ({votes} of {len(folds)} fold models above their thresholds)"
        )
    return (
        f"{votes} of {len(folds)} fold models above their thresholds "
        "(metastasis when at least half are)"
    )


def _agreement(folds: list[FoldReading], out_of_fold: bool, held_out_by: int | None) -> str:
    if out_of_fold:
        where = f"fold model {held_out_by + 1}" if held_out_by is not None else "one fold model"
        return (
            f"Out-of-fold score: {where} never saw this patient during training; one model, "
            "so no agreement between fold models to show."
        )
    scores = [f.metastasis_risk_score for f in folds]
    low, high = min(scores), max(scores)
    votes = [f.calls_metastasis for f in folds if f.calls_metastasis is not None]
    spread = f"their MRS ranges from {low:.2f} to {high:.2f}"
    if votes and all(votes) or votes and not any(votes):
        verdict = "metastasis" if votes[0] else "no metastasis"
        head = f"All {len(folds)} fold models agree on {verdict}"
    elif votes:
        head = f"The fold models disagree: {sum(votes)} of {len(votes)} call metastasis"
    else:
        head = f"{len(folds)} fold models"
    if high - low > WIDE_FOLD_SPREAD:
        spread += ", a wide spread: the score is uncertain"
    return f"{head}; {spread}."


def _site_head(prediction: PatientPrediction) -> tuple[str, float] | None:
    known = {k: float(v) for k, v in (prediction.site_probabilities or {}).items() if v is not None}
    if not known:
        return None
    name = max(known, key=known.__getitem__)
    return SITE_LABELS.get(name, name), known[name]


def patient_reading(prediction: PatientPrediction) -> PatientReading:
    """The patient's reading under the prediction's model version: the call at its locked
    operating point (``inference.operating_point.reading_for``; the stored call for a version
    without one), the rule in words, the fold scores and their agreement."""
    version = prediction.model_version
    out_of_fold = prediction.source == PatientPrediction.Source.OUT_OF_FOLD
    thresholds = fold_thresholds(version)
    held_out_by = fold_holding_out(version, prediction.patient.study_id) if out_of_fold else None
    if out_of_fold:
        folds = [held_out_by if held_out_by is not None else -1]
    else:
        folds = list(range(max(len(prediction.slice_probabilities), len(prediction.mrs_per_fold))))
    readings = _fold_readings(prediction, folds, thresholds)
    if out_of_fold and held_out_by is None:
        readings = [FoldReading(0, prediction.metastasis_risk_score)]
    votes = (
        sum(bool(f.calls_metastasis) for f in readings)
        if all(f.calls_metastasis is not None for f in readings)
        else None
    )
    locked = reading_for(prediction)
    if locked.operating_point is not None and locked.predicted_metastasis is not None:
        called, rule = locked.predicted_metastasis, locked.rule_in_words
        point = f"the locked operating point of model version {version.name}"
    else:
        called, rule = prediction.predicted_metastasis, _rule(version, readings, out_of_fold)
        point = (
            f"the stored call of model version {version.name} (fold thresholds chosen at "
            "training; no operating point locked: manage.py lock_operating_points)"
        )
    reading = PatientReading(
        predicted_metastasis=called,
        operating_point=point,
        rule=rule,
        folds=readings,
        out_of_fold=out_of_fold,
        held_out_by_fold=None if held_out_by is None else held_out_by + 1,
        agreement=_agreement(readings, out_of_fold, held_out_by),
        site_head=_site_head(prediction),
        votes=votes,
    )
    reading.disagreements = _fold_and_site_disagreements(reading)
    return reading


def _fold_and_site_disagreements(reading: PatientReading) -> list[str]:
    said = []
    if (
        reading.votes is not None
        and not reading.out_of_fold
        and 0 < reading.votes < len(reading.folds)
    ):
        said.append(
            f"The fold models are split: {reading.votes} of {len(reading.folds)} call metastasis."
        )
    if reading.site_head is not None:
        label, probability = reading.site_head
        if reading.predicted_metastasis and label == SITE_LABELS["none"]:
            said.append(
                f"The metastasis-site head rates \u201cNo metastasis\u201d most likely "
                f"({probability:.2f}) while the call is metastasis."
            )
        elif not reading.predicted_metastasis and label != SITE_LABELS["none"]:
            said.append(
                f"The metastasis-site head rates {label.lower()} most likely ({probability:.2f}) "
                "while the call is no metastasis."
            )
    return said


def mrs_and_risk_disagreements(
    reading: PatientReading,
    *,
    metastasis_risk_score: float,
    cutpoint: float | None,
    risk_group: str | None,
) -> list[str]:
    """What the MRS against its cut and the risk group say against the call, in words."""
    said = []
    if cutpoint is not None:
        above = metastasis_risk_score > cutpoint
        if reading.predicted_metastasis and not above:
            said.append(
                f"The MRS ({metastasis_risk_score:.3f}) is at or below the cut "
                f"({cutpoint:.3f}), in the low MRS group, while the call is metastasis."
            )
        elif not reading.predicted_metastasis and above:
            said.append(
                f"The MRS ({metastasis_risk_score:.3f}) is above the cut ({cutpoint:.3f}), "
                "in the high MRS group, while the call is no metastasis."
            )
    if risk_group == "low" and reading.predicted_metastasis:
        said.append("The risk group is low while the call is metastasis.")
    elif risk_group == "high" and not reading.predicted_metastasis:
        said.append("The risk group is high while the call is no metastasis.")
    return said
