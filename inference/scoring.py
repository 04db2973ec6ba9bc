"""Scoring a cohort with a model version's five-fold ensemble: the shell around
``inference.pmpd.gradcam.score_and_explain`` (the ensemble's scores and Grad-CAM).

The cohort is split into parts of ``PMPD_SCORING_PATIENTS_PER_PART`` patients
(``plan_scoring``); each part is preprocessed on the cpu queue and then scored on the gpu queue,
its patients' patches in shared batches (``pmpd_web.jobs.parts``), so N GPU workers share one
cohort. Idempotent and resumable: a patient whose prediction under this version already has the
current input hash is skipped, so a part whose worker died finishes on another worker with
every patient scored exactly once. A training patient of the version keeps its
out-of-fold prediction (the ensemble has seen it: its score would be in-sample). A patient
whose images the engine refuses is listed in the result with the reason; the others are scored.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from inference.pmpd.preprocess import PreprocessedPatient as Patches
from inference.pmpd.preprocess import PreprocessError
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.jobs.models import Job
from pmpd_web.jobs.runner import UserFacingError

from .cache import input_hash_for, preprocessed_for, with_images
from .models import ModelVersion, PatientPrediction
from .predictions import draw_patient_overlays, store_overlays, upsert_prediction
from .registry import fold_models_of, patient_call_rule_of, preprocess_config_of

log = logging.getLogger(__name__)


def _prediction_values(
    patches: Patches, result: Any, gradcam_files: list[str], *, code_version: str
) -> dict[str, Any]:
    """The stored fields of a patient's ensemble prediction."""
    return {
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
    }


def score_patients_with(
    patients: list[tuple[Patient, Patches]],
    version: ModelVersion,
    fold_models: list[Any],
    *,
    code_version: str,
    seconds: dict[str, float] | None = None,
) -> list[PatientPrediction]:
    """Score several patients' un-rotated patches with every fold model in shared batches,
    with the ensemble's Grad-CAM over each scored slice from the same forward passes
    (``score_and_explain``), and store both: the overlays, then the predictions in one
    transaction. ``seconds``, when given, receives the time of each stage: "score_and_explain"
    (the models) and "store" (overlays drawn and written, predictions saved)."""
    from inference.pmpd.gradcam import score_and_explain
    from inference.pmpd.predict import PredictConfig

    if not patients:
        return []
    started = time.perf_counter()
    stacks = [patches.inference_patches() for _, patches in patients]
    results, heatmaps = score_and_explain(
        stacks,
        fold_models,
        config=PredictConfig(patient_call_rule=patient_call_rule_of(version)),
    )
    scored = time.perf_counter()
    overlays = draw_patient_overlays(list(zip(stacks, heatmaps, strict=True)))
    gradcam_files = [
        store_overlays(version, patient, drawn, patches.selected_slices)
        for (patient, patches), drawn in zip(patients, overlays, strict=True)
    ]
    # The part's predictions in one transaction: one commit, and a worker that dies here
    # leaves none of them (the part, run again, scores them all; the overlays are replaced).
    stored = []
    with transaction.atomic():
        for (patient, patches), result, files in zip(patients, results, gradcam_files, strict=True):
            values = _prediction_values(patches, result, files, code_version=code_version)
            stored.append(
                upsert_prediction(
                    patient, version, source=PatientPrediction.Source.ENSEMBLE, values=values
                )
            )
    for patient, _ in patients:
        log.info("Scored %s with model version %s", patient.study_id, version.pk)
    if seconds is not None:
        seconds["score_and_explain"] = scored - started
        seconds["store"] = time.perf_counter() - scored
    return stored


def _scored_meanwhile(patient: Patient, version: ModelVersion, wanted_hash: str) -> bool:
    return PatientPrediction.objects.filter(
        patient=patient, model_version=version, input_hash=wanted_hash
    ).exists()


def patients_per_part() -> int:
    return max(1, int(getattr(settings, "PMPD_SCORING_PATIENTS_PER_PART", 4)))


@dataclass(frozen=True)
class ScoringPlan:
    """Who a scoring job scores: the patients to score, in parts, and those it leaves."""

    version_id: int
    total: int
    to_score: list[int]
    already_scored: int
    kept_out_of_fold: int

    def summary(self) -> dict[str, Any]:
        return {
            "model_version": self.version_id,
            "patients": self.total,
            "already_scored": self.already_scored,
            "kept_out_of_fold": self.kept_out_of_fold,
        }

    def parts(self) -> list[list[int]]:
        size = patients_per_part()
        return [self.to_score[start : start + size] for start in range(0, len(self.to_score), size)]


def ready_version(version_id: int) -> ModelVersion:
    version = ModelVersion.objects.get(pk=version_id)
    if version.status != ModelVersion.Status.READY:
        raise UserFacingError(
            f"Model version {version.name} is {version.get_status_display().lower()}; only a "
            "ready version can score."
        )
    return version


def plan_scoring(cohort_id: int, version_id: int) -> ScoringPlan:
    """The patients of the cohort with images that need scoring (no current prediction under
    the version; a training patient's out-of-fold prediction is kept)."""
    cohort = Cohort.objects.get(pk=cohort_id)
    version = ready_version(version_id)
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
    to_score, already_scored, kept_out_of_fold = [], 0, 0
    for patient in patients:
        current = stored.get(patient.pk)
        if current is not None and current.source == PatientPrediction.Source.OUT_OF_FOLD:
            kept_out_of_fold += 1
            continue
        try:
            up_to_date = current is not None and current.input_hash == input_hash_for(
                patient, config
            )
        except PreprocessError:
            up_to_date = False  # the part that scores it lists the reason
        if up_to_date:
            already_scored += 1
        else:
            to_score.append(patient.pk)
    return ScoringPlan(version.pk, len(patients), to_score, already_scored, kept_out_of_fold)


def _patients_to_score(version: ModelVersion, patient_ids: list[int], skipped: list) -> tuple:
    """The part's patients that still need scoring, with their input hash; counts the others
    (another delivery of the part got there first) and lists the refused ones in ``skipped``."""
    config = preprocess_config_of(version)
    wanted, already_scored = [], 0
    for patient in Patient.objects.filter(pk__in=patient_ids).order_by("study_id"):
        try:
            input_hash = input_hash_for(patient, config)
        except PreprocessError as exc:
            skipped.append({"study_id": patient.study_id, "reason": str(exc)})
            continue
        if _scored_meanwhile(patient, version, input_hash):
            already_scored += 1
        else:
            wanted.append(patient)
    return wanted, already_scored


def preprocess_part(part_payload: dict[str, Any]) -> int:
    """Fill the preprocessing cache for a part's patients (the cpu step before scoring);
    returns how many were preprocessed. A refused patient is left for the scoring step to
    list with its reason."""
    version = ModelVersion.objects.get(pk=part_payload["model_version"])
    config = preprocess_config_of(version)
    patients, _ = _patients_to_score(version, part_payload["patients"], [])
    done = 0
    for patient in patients:
        try:
            preprocessed_for(patient, config, inference_only=True)
            done += 1
        except PreprocessError as exc:
            log.warning("patient %s cannot be preprocessed: %s", patient.study_id, exc)
    return done


@functools.cache
def _code_version() -> str:
    """The code version predictions record, asked once per worker process (``git describe``
    takes a while, and a worker's code does not change while it runs)."""
    from inference.pmpd.train import code_version

    return code_version()[:64]


def score_part(job: Job, payload: dict[str, Any], scratch: Path | None) -> dict[str, Any]:
    """Score a part's patients (the gpu step); the part's result."""
    started = time.perf_counter()
    version = ready_version(payload["model_version"])
    config = preprocess_config_of(version)
    skipped: list[dict[str, str]] = []
    patients, already_scored = _patients_to_score(version, payload["patients"], skipped)
    # A patient with a stored score is scored again because its CT or approved mask changed:
    # the preprocessing cache is keyed by the volumes' content, so the old inputs were stale.
    inputs_changed = sorted(
        PatientPrediction.objects.filter(model_version=version, patient__in=patients).values_list(
            "patient__study_id", flat=True
        )
    )
    ready: list[tuple[Patient, Patches]] = []
    for patient in patients:
        try:
            ready.append((patient, preprocessed_for(patient, config, inference_only=True)))
        except PreprocessError as exc:
            skipped.append({"study_id": patient.study_id, "reason": str(exc)})
    fold_models = fold_models_of(version) if ready else []
    # Where the scoring step spends its time (the benchmark adds them up over the parts).
    seconds = {"prepare": time.perf_counter() - started, "score_and_explain": 0.0, "store": 0.0}
    if ready:
        score_patients_with(
            ready, version, fold_models, code_version=_code_version(), seconds=seconds
        )
    return {
        "scored": [patient.study_id for patient, _ in ready],
        "already_scored": already_scored,
        "fewer_than_4_tumour_slices": [
            patient.study_id for patient, patches in ready if patches.fewer_than_4_tumour_slices
        ],
        "skipped": skipped,
        "rescored_inputs_changed": inputs_changed,
        "seconds": {stage: round(value, 4) for stage, value in seconds.items()},
    }


def merge_scoring(job: Job, part_results: list[dict[str, Any]]) -> dict[str, Any]:
    """The scoring job's result: the plan's counts and what the parts did."""
    result = dict(job.result)
    result["scored"] = sum(len(part["scored"]) for part in part_results)
    result["already_scored"] = result.get("already_scored", 0) + sum(
        part["already_scored"] for part in part_results
    )
    result["fewer_than_4_tumour_slices"] = sorted(
        name for part in part_results for name in part["fewer_than_4_tumour_slices"]
    )
    result["skipped"] = [entry for part in part_results for entry in part["skipped"]]
    result["rescored_inputs_changed"] = sorted(
        name for part in part_results for name in part.get("rescored_inputs_changed", [])
    )
    result["parts"] = len(part_results)
    # The scoring steps' time by stage, summed over the parts (what the workers spent).
    result["scoring_step_seconds"] = {
        stage: round(sum(part.get("seconds", {}).get(stage, 0.0) for part in part_results), 3)
        for stage in ("prepare", "score_and_explain", "store")
    }
    return result
