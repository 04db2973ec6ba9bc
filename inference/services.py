"""What the pages and the API show of the engine's results: a patient's prediction with its
reading (call, rule, fold scores: ``inference.reading``), sites and Grad-CAM slices, and model
cards trimmed to what a user may see.

The patient page draws ``inference/_patient_prediction.html`` through the
``pmpd_prediction_panel`` tag (``inference/templatetags/inference_panels.py``) with the context
of ``prediction_context(user, patient)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.urls import reverse

from pmpd_web.accounts.permissions import Action, can
from pmpd_web.cohorts.models import Patient

from .models import ModelVersion, PatientPrediction
from .reading import SITE_LABELS, PatientReading, fold_thresholds, patient_reading
from .registry import can_view_training_patients

RESEARCH_USE_ONLY = (
    "Research use only: PMPD is a second reader that assists radiologists and clinicians, "
    "never a replacement."
)


@dataclass
class ScoredSlice:
    """One of the scored slices: where it is, its probability, its Grad-CAM overlay."""

    position: int
    slice_index: int
    probability: float
    overlay_url: str | None


@dataclass
class PredictionView:
    """A patient's PMPD result as a person reads it: the reading (call, rule, fold scores)
    and the detail behind it (sites, scored slices)."""

    prediction: PatientPrediction
    model_version: ModelVersion
    version_source: str
    synthetic: bool
    reading: PatientReading
    metastasis_risk_score: float
    positive_fraction: float
    sites: list[tuple[str, float]]
    slices: list[ScoredSlice]
    fewer_than_4_tumour_slices: bool
    n_slices: int
    notes: list[str] = field(default_factory=list)

    @property
    def out_of_fold(self) -> bool:
        return self.reading.out_of_fold

    @property
    def predicted_metastasis(self) -> bool:
        return self.reading.predicted_metastasis


def chosen_prediction(
    patient: Patient, model_version: ModelVersion | None
) -> tuple[PatientPrediction | None, str]:
    """The prediction the patient page reads, and why that version: the given one, else the
    active one, else the latest that scored the patient."""
    predictions = PatientPrediction.objects.filter(patient=patient).select_related("model_version")
    if model_version is not None:
        return predictions.filter(model_version=model_version).first(), "the chosen model version"
    active = predictions.filter(model_version__is_active=True).first()
    if active is not None:
        return active, "the active model version"
    latest = predictions.order_by("-updated_at", "-pk").first()
    return latest, "the latest model version that scored this patient"


def prediction_view(
    prediction: PatientPrediction,
    *,
    version_source: str = "the chosen model version",
    with_overlays: bool = True,
) -> PredictionView:
    """The reading of one stored prediction (its version's thresholds give the call's basis).

    ``with_overlays`` false (the role may not view images) leaves out the Grad-CAM overlays:
    they show the CT under the heat map."""
    version = prediction.model_version
    patient = prediction.patient
    per_slice = np.asarray(prediction.slice_probabilities, dtype=float).reshape(
        -1, prediction.n_slices
    )
    slice_means = per_slice.mean(axis=0) if per_slice.size else np.zeros(prediction.n_slices)
    slices = [
        ScoredSlice(
            position=position,
            slice_index=int(slice_index),
            probability=float(slice_means[position]),
            overlay_url=reverse(
                "inference-gradcam",
                kwargs={
                    "cohort_id": patient.cohort_id,
                    "study_id": patient.study_id,
                    "prediction_id": prediction.pk,
                    "index": position,
                },
            )
            if with_overlays and position < len(prediction.gradcam_files)
            else None,
        )
        for position, slice_index in enumerate(prediction.slice_indices)
    ]
    notes = []
    if prediction.fewer_than_4_tumour_slices:
        plural = "s" if prediction.n_slices != 1 else ""
        notes.append(
            f"Scored from {prediction.n_slices} tumour slice{plural}: fewer than the 4 the "
            "method uses (the paper reports such patients separately)."
        )
    return PredictionView(
        prediction=prediction,
        model_version=version,
        version_source=version_source,
        synthetic=version.is_synthetic or patient.cohort.is_synthetic,
        reading=patient_reading(prediction),
        metastasis_risk_score=prediction.metastasis_risk_score,
        positive_fraction=prediction.positive_fraction,
        sites=[
            (label, float(prediction.site_probabilities[name]))
            for name, label in SITE_LABELS.items()
            if prediction.site_probabilities.get(name) is not None
        ],
        slices=slices,
        fewer_than_4_tumour_slices=prediction.fewer_than_4_tumour_slices,
        n_slices=prediction.n_slices,
        notes=notes,
    )


def prediction_context(
    user: Any, patient: Patient, model_version: ModelVersion | None = None
) -> dict[str, Any]:
    """Context for ``{% include "inference/_patient_prediction.html" %}`` on the patient page.

    Shows the prediction of ``model_version`` if given, else of the active version, else the
    latest one. Returns ``{"pmpd_prediction": {...}}`` with ``allowed`` false (the include then
    shows nothing) when the user's role in the patient's cohort may not view results.
    """
    if not can(user, patient.cohort_id, Action.VIEW_RESULTS):
        return {"pmpd_prediction": {"allowed": False}}
    prediction, source = chosen_prediction(patient, model_version)
    if prediction is None:
        return {
            "pmpd_prediction": {
                "allowed": True,
                "view": None,
                "research_use_only": RESEARCH_USE_ONLY,
                "message": "No PMPD model version has scored this patient yet.",
            }
        }
    prediction.patient = patient
    return {
        "pmpd_prediction": {
            "allowed": True,
            "view": prediction_view(
                prediction,
                version_source=source,
                with_overlays=can(user, patient.cohort_id, Action.VIEW_IMAGES),
            ),
            "research_use_only": RESEARCH_USE_ONLY,
            "message": "",
        }
    }


def card_for(user: Any, version: ModelVersion) -> dict[str, Any]:
    """The version's model card without what the user may not see: the study IDs of the folds
    and of the patients left out (unless they may view the training cohort's patients), and the
    training cohort's name (unless they are a member of it)."""
    card = dict(version.card or {})
    if not can_view_training_patients(user, version):
        card["folds"] = [
            {k: v for k, v in fold.items() if k not in {"train_ids", "validation_ids", "test_ids"}}
            for fold in card.get("folds", [])
        ]
        if "trained_on" in card:
            trained_on = dict(card["trained_on"])
            trained_on["skipped"] = len(trained_on.get("skipped", []))
            card["trained_on"] = trained_on
    member = version.trained_on_id is not None and can(
        user, version.trained_on_id, Action.VIEW_COHORT
    )
    if "trained_on" in card and not member:
        card["trained_on"] = {
            k: v for k, v in card["trained_on"].items() if k not in {"cohort_id", "cohort_name"}
        }
    if "operating_point" in card and not member:
        card["operating_point"] = {
            k: v for k, v in card["operating_point"].items() if k != "development_cohort"
        }
    return card


def trained_on_label(user: Any, version: ModelVersion) -> str:
    """The training cohort's name for its members; a neutral phrase for everyone else."""
    if version.trained_on_id is None:
        return "a deleted cohort"
    if can(user, version.trained_on_id, Action.VIEW_COHORT):
        return version.trained_on.name
    return "a cohort you are not a member of"


METRIC_COLUMNS = (
    ("patient_auroc_mrs", "Patient AUROC (MRS)"),
    ("patient_auroc_positive_fraction", "Patient AUROC (positive fraction)"),
    ("slice_auroc", "Slice AUROC"),
    ("accuracy", "Accuracy"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
)


def metrics_table(version: ModelVersion) -> dict[str, Any]:
    """The cross-validation metrics as a table: one row per fold (on its held-out patients),
    then the pooled out-of-fold row; with each fold's thresholds."""
    metrics = version.metrics or {}
    thresholds = fold_thresholds(version)
    rows = []
    for fold in metrics.get("folds", []):
        number = int(fold.get("fold", len(rows)))
        row = thresholds.get(number, {})
        rows.append(
            {
                "label": f"Fold {number + 1}",
                "values": [fold.get(key) for key, _ in METRIC_COLUMNS],
                "slice_threshold": row.get("slice_threshold"),
                "patient_threshold": row.get("patient_threshold"),
            }
        )
    pooled = metrics.get("pooled", {})
    return {
        "columns": [label for _, label in METRIC_COLUMNS],
        "folds": rows,
        "pooled": [pooled.get(key) for key, _ in METRIC_COLUMNS],
        "fold_auroc_mean": pooled.get("fold_patient_auroc_mean"),
        "fold_auroc_std": pooled.get("fold_patient_auroc_std"),
    }
