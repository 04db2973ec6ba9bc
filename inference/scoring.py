"""Scoring a cohort with a model version's five-fold ensemble: the shell around
``inference.pmpd.predict.score_patient`` and ``inference.pmpd.gradcam.ensemble_gradcam``.

Idempotent and resumable: a patient whose prediction under this version already has the
current input hash is skipped, so a job whose worker died mid-way finishes on another worker
with every patient scored exactly once. A training patient of the version keeps its
out-of-fold prediction (the ensemble has seen it: its score would be in-sample). A patient
whose images the engine refuses is listed in the result with the reason; the others are scored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from inference.pmpd.preprocess import PreprocessedPatient as Patches
from inference.pmpd.preprocess import PreprocessError
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.jobs.runner import UserFacingError

from .cache import input_hash_for, preprocessed_for, with_images
from .models import ModelVersion, PatientPrediction
from .predictions import save_overlays, upsert_prediction
from .registry import fold_models_of, patient_call_rule_of, preprocess_config_of

log = logging.getLogger(__name__)

Progress = Callable[[int, str], None]


def score_patient_with(
    patient: Patient,
    version: ModelVersion,
    patches: Patches,
    fold_models: list[Any],
    *,
    code_version: str,
) -> PatientPrediction:
    """Score one patient's un-rotated patches with every fold model, draw the ensemble's
    Grad-CAM over each scored slice, and store both."""
    from inference.pmpd.gradcam import ensemble_gradcam
    from inference.pmpd.predict import PredictConfig, score_patient

    inference_patches = patches.inference_patches()
    result = score_patient(
        inference_patches,
        fold_models,
        config=PredictConfig(patient_call_rule=patient_call_rule_of(version)),
    )
    heatmaps = ensemble_gradcam(fold_models, inference_patches)
    gradcam_files = save_overlays(
        version, patient, inference_patches, heatmaps, patches.selected_slices
    )
    return upsert_prediction(
        patient,
        version,
        source=PatientPrediction.Source.ENSEMBLE,
        values={
            "metastasis_risk_score": result.metastasis_risk_score,
            "mrs_std": result.mrs_std,
            "mrs_min": result.mrs_min,
            "mrs_max": result.mrs_max,
            "mrs_per_fold": list(result.mrs_per_fold),
            "positive_fraction": result.positive_fraction,
            "predicted_metastasis": result.predicted_metastasis,
            "site_probabilities": result.site_probabilities,
            "slice_indices": list(patches.selected_slices),
            "slice_probabilities": result.slice_probabilities.tolist(),
            "n_slices": result.n_slices,
            "fewer_than_4_tumour_slices": patches.fewer_than_4_tumour_slices,
            "gradcam_files": gradcam_files,
            "input_hash": patches.input_hash,
            "code_version": code_version,
        },
    )


def _scored_meanwhile(patient: Patient, version: ModelVersion, wanted_hash: str) -> bool:
    return PatientPrediction.objects.filter(
        patient=patient, model_version=version, input_hash=wanted_hash
    ).exists()


def score_cohort(cohort_id: int, version_id: int, progress: Progress) -> dict[str, Any]:
    """Score every patient of the cohort that has images; returns the job's result."""
    from inference.pmpd.train import code_version

    cohort = Cohort.objects.get(pk=cohort_id)
    version = ModelVersion.objects.get(pk=version_id)
    if version.status != ModelVersion.Status.READY:
        raise UserFacingError(
            f"Model version {version.name} is {version.get_status_display().lower()}; only a "
            "ready version can score."
        )
    config = preprocess_config_of(version)
    patients = list(with_images(cohort.patients.all()).order_by("study_id"))
    if not patients:
        raise UserFacingError(
            f"No patient of {cohort.name} has images yet: upload CTs with their masks first."
        )
    stored = {
        row.patient_id: row
        for row in PatientPrediction.objects.filter(
            model_version=version, patient__cohort=cohort
        ).only("patient_id", "source", "input_hash")
    }
    fold_models: list[Any] | None = None
    version_of_code = code_version()[:64]
    scored: list[str] = []
    already_scored = 0
    kept_out_of_fold = 0
    fewer_than_4: list[str] = []
    inputs_changed: list[str] = []
    skipped: list[dict[str, str]] = []
    total = len(patients)
    for done, patient in enumerate(patients, start=1):
        current = stored.get(patient.pk)
        try:
            out_of_fold = (
                current is not None and current.source == PatientPrediction.Source.OUT_OF_FOLD
            )
            wanted = None if out_of_fold else input_hash_for(patient, config)
            if out_of_fold:
                kept_out_of_fold += 1
            elif (current is not None and current.input_hash == wanted) or _scored_meanwhile(
                patient, version, wanted
            ):
                # Up to date, or another delivery of this job (a worker thought dead) got
                # there first.
                already_scored += 1
            else:
                patches = preprocessed_for(patient, config)
                if fold_models is None:
                    progress(int(100 * (done - 1) / total), f"Loading {version.name}")
                    fold_models = fold_models_of(version)
                score_patient_with(
                    patient, version, patches, fold_models, code_version=version_of_code
                )
                scored.append(patient.study_id)
                if current is not None:
                    inputs_changed.append(patient.study_id)
                if patches.fewer_than_4_tumour_slices:
                    fewer_than_4.append(patient.study_id)
                log.info("Scored %s with model version %s", patient.study_id, version.pk)
        except PreprocessError as exc:
            skipped.append({"study_id": patient.study_id, "reason": str(exc)})
        progress(int(100 * done / total), f"{done} of {total} patients done")
    return {
        "model_version": version.pk,
        "patients": total,
        "scored": len(scored),
        "already_scored": already_scored,
        "kept_out_of_fold": kept_out_of_fold,
        "fewer_than_4_tumour_slices": fewer_than_4,
        # Re-scored because the CT or the approved mask changed since the stored score: the
        # preprocessing cache is keyed by the volumes' content, so the old inputs were stale.
        "rescored_inputs_changed": inputs_changed,
        "skipped": skipped,
    }
