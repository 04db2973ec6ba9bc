"""Training a model version: the shell around ``inference.pmpd.train.cross_validate``.

The training set is a cohort's patients that have images and a known metastasis label
("yes" or "no"); patients whose images the engine refuses are left out and listed with the
reason. The fold checkpoints and model cards go to storage under ``models/<version id>/``;
each training patient gets its out-of-fold prediction (from the one fold model that never saw
it, with that model's Grad-CAM), stored as ``PatientPrediction(source="out_of_fold")`` with
its fold. Last, the version's operating point is locked (:mod:`inference.operating_point`):
the fold thresholds that made the stored calls and the maxstat MRS cut-point of these
out-of-fold predictions, stored on the version and in its card.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import QuerySet

from inference.pmpd.preprocess import PreprocessConfig, PreprocessError
from inference.pmpd.preprocess import PreprocessedPatient as Patches
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.jobs.runner import TRANSIENT_ERRORS, UserFacingError

from .cache import preprocessed_for, with_images
from .models import ModelVersion, PatientPrediction
from .operating_point import lock_operating_point
from .predictions import save_overlays, upsert_prediction
from .registry import preprocess_config_of, train_config_of
from .storage import json_safe, store_local_file

log = logging.getLogger(__name__)

Progress = Callable[[int, str], None]

LABELLED = ("yes", "no")
# Share of the job's progress bar: preprocessing, then cross-validation, then storing.
PREPROCESS_SHARE, TRAIN_SHARE = 10.0, 80.0


@dataclass
class TrainingSet:
    """The patients a version trains on, their patches and labels, and who was left out."""

    patients: list[Patient] = field(default_factory=list)
    patches: list[Patches] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    site_labels: list[list[float]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def n_metastatic(self) -> int:
        return int(sum(self.labels))


def site_targets(patient: Patient) -> list[float]:
    """The site head's targets (none, liver, lung, peritoneum): 0/1, NaN where unknown.

    A patient without metastasis has none = 1 and no site; a metastatic patient whose sites
    are unknown has none = 0 and the three sites unknown.
    """
    if patient.metastasis_at_diagnosis == "no":
        return [1.0, 0.0, 0.0, 0.0]
    if patient.site_unknown:
        return [0.0, math.nan, math.nan, math.nan]
    return [
        0.0,
        float(patient.site_liver),
        float(patient.site_lung),
        float(patient.site_peritoneum),
    ]


def training_candidates(cohort: Cohort) -> QuerySet[Patient]:
    """The cohort's patients with images and a metastasis label of yes or no."""
    labelled = cohort.patients.filter(metastasis_at_diagnosis__in=LABELLED)
    return with_images(labelled).order_by("study_id")


def check_class_sizes(n_metastatic: int, n_without: int, n_folds: int) -> None:
    """Stratified folds need each class at least ``n_folds`` times."""
    if min(n_metastatic, n_without) < n_folds:
        raise UserFacingError(
            f"{n_folds}-fold cross-validation needs at least {n_folds} patients with and "
            f"{n_folds} without metastasis at diagnosis, each with a CT and its mask; there are "
            f"{n_metastatic} and {n_without}."
        )


def collect_training_set(
    cohort: Cohort, config: PreprocessConfig, progress: Callable[[int, int], None]
) -> TrainingSet:
    """Preprocess (or read from the cache) every candidate; ``progress(done, total)``."""
    candidates = list(training_candidates(cohort))
    training_set = TrainingSet()
    for done, patient in enumerate(candidates, start=1):
        try:
            patches = preprocessed_for(patient, config)
        except PreprocessError as exc:
            training_set.skipped.append({"study_id": patient.study_id, "reason": str(exc)})
        else:
            training_set.patients.append(patient)
            training_set.patches.append(patches)
            training_set.labels.append(int(patient.metastasis_at_diagnosis == "yes"))
            training_set.site_labels.append(site_targets(patient))
        progress(done, len(candidates))
    return training_set


def _begin(version_id: int) -> ModelVersion | None:
    """Lock the version and mark it training; None when it is already ready (a redelivered
    task after success has nothing to do)."""
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update(of=("self",)).get(pk=version_id)
        if version.status == ModelVersion.Status.READY:
            return None
        if version.trained_on is None:
            raise UserFacingError("The cohort this version was to be trained on was deleted.")
        version.status = ModelVersion.Status.TRAINING
        version.save(update_fields=["status"])
    return version


def mark_failed(version_id: int) -> None:
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version_id)
        if version.status == ModelVersion.Status.TRAINING:
            version.status = ModelVersion.Status.FAILED
            version.save(update_fields=["status"])


def train_model_version(version_id: int, progress: Progress) -> dict[str, Any]:
    """Cross-validate the version on its cohort and store everything it produces.

    ``progress(percent, phrase)`` hears about preprocessing (patients), every epoch of every
    fold, and storing the out-of-fold predictions. Returns the job's result: patients used,
    left out (with reasons), and the pooled out-of-fold metrics.
    """
    version = _begin(version_id)
    if version is None:
        ready = ModelVersion.objects.get(pk=version_id)
        return {"model_version": ready.pk, "name": ready.name, "already_trained": True}
    try:
        return _train(version, progress)
    except TRANSIENT_ERRORS:
        raise
    except Exception:
        mark_failed(version_id)
        raise


def _preprocessing_progress(progress: Progress) -> Callable[[int, int], None]:
    """``collect_training_set``'s (done, total) as the job's first PREPROCESS_SHARE percent."""

    def report(done: int, total: int) -> None:
        progress(
            int(PREPROCESS_SHARE * done / max(total, 1)),
            f"Preprocessing: {done} of {total} patients",
        )

    return report


def _training_progress(progress: Progress, label: str) -> Callable[[int, int, str, float], None]:
    """``cross_validate``'s progress as the job's next TRAIN_SHARE percent."""

    def report(fold: int, epoch: int, message: str, percent: float) -> None:
        progress(int(PREPROCESS_SHARE + TRAIN_SHARE * percent / 100.0), f"{label}: {message}")

    return report


def _train(version: ModelVersion, progress: Progress) -> dict[str, Any]:
    from inference.pmpd.train import cross_validate

    cohort = version.trained_on
    train_config = train_config_of(version)
    preprocess_config = preprocess_config_of(version)

    training_set = collect_training_set(
        cohort, preprocess_config, _preprocessing_progress(progress)
    )
    n = len(training_set.patients)
    check_class_sizes(
        training_set.n_metastatic, n - training_set.n_metastatic, train_config.n_folds
    )

    training = _training_progress(progress, f"Training on {n} patients")
    with tempfile.TemporaryDirectory(prefix="pmpd-train-") as folder:
        result = cross_validate(
            training_set.patches,
            training_set.labels,
            train_config,
            training,
            patient_ids=[p.study_id for p in training_set.patients],
            site_labels=np.asarray(training_set.site_labels, dtype=np.float32),
            output_dir=folder,
            preprocess_config=preprocess_config.to_dict(),
        )
        files = []
        for fold in result.folds:
            checkpoint = Path(fold.checkpoint_path)
            files.append(store_local_file(f"models/{version.pk}/{checkpoint.name}", checkpoint))
            card = checkpoint.with_suffix(".json")
            store_local_file(f"models/{version.pk}/{card.name}", card)
        _store_out_of_fold(version, training_set, result, progress)

    card = _model_card(version, training_set, result)
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        locked.status = ModelVersion.Status.READY
        locked.files = files
        locked.thresholds = json_safe(
            [{"fold": f.fold, **f.thresholds.to_dict()} for f in result.folds]
        )
        locked.metrics = json_safe(
            {
                "pooled": result.metrics,
                "folds": [{"fold": f.fold, **f.metrics} for f in result.folds],
            }
        )
        locked.card = card
        locked.data_hash = result.data_hash
        locked.code_version = result.code_version[:64]
        locked.save()
    point = lock_operating_point(locked)
    return json_safe(
        {
            "model_version": version.pk,
            "name": version.name,
            "patients": n,
            "metastatic": training_set.n_metastatic,
            "skipped": training_set.skipped,
            "metrics": result.metrics,
            "operating_point": point.label,
            "seconds": round(result.seconds, 1),
        }
    )


def shuffled_labels_check(
    cohort: Cohort, choices: Any, *, seed: int, progress: Progress
) -> dict[str, Any]:
    """A negative control: cross-validate exactly as a training of ``choices`` on ``cohort``
    would, but with the patients' labels (metastasis and sites together) randomly permuted
    with ``seed``. Nothing is stored. A pipeline that leaks no label information gives an
    out-of-fold AUROC near 0.5; returns the pooled metrics, patients and seconds."""
    from inference.pmpd.train import cross_validate

    train_config, preprocess_config = choices.configs()
    training_set = collect_training_set(
        cohort, preprocess_config, _preprocessing_progress(progress)
    )
    n = len(training_set.patients)
    check_class_sizes(
        training_set.n_metastatic, n - training_set.n_metastatic, train_config.n_folds
    )
    order = np.random.default_rng(seed).permutation(n)
    result = cross_validate(
        training_set.patches,
        np.asarray(training_set.labels)[order],
        train_config,
        _training_progress(progress, f"Shuffled labels, {n} patients"),
        patient_ids=[p.study_id for p in training_set.patients],
        site_labels=np.asarray(training_set.site_labels, dtype=np.float32)[order],
        preprocess_config=preprocess_config.to_dict(),
    )
    return json_safe(
        {"patients": n, "metrics": result.metrics, "seconds": round(result.seconds, 1)}
    )


def _store_out_of_fold(
    version: ModelVersion,
    training_set: TrainingSet,
    result: Any,
    progress: Progress,
) -> None:
    """Each training patient's out-of-fold prediction and its fold model's Grad-CAM."""
    from inference.pmpd.gradcam import gradcam
    from inference.pmpd.predict import load_fold_models
    from inference.pmpd.train import code_version

    fold_models = load_fold_models([f.checkpoint_path for f in result.folds])
    version_of_code = code_version()[:64]
    total = len(result.out_of_fold)
    for done, (patient, patches, oof) in enumerate(
        zip(training_set.patients, training_set.patches, result.out_of_fold, strict=True), start=1
    ):
        inference_patches = patches.inference_patches()
        fold_model = fold_models[oof.fold]
        heatmaps = gradcam(fold_model.model, inference_patches)
        gradcam_files = save_overlays(
            version, patient, inference_patches, heatmaps, patches.selected_slices
        )
        upsert_prediction(
            patient,
            version,
            source=PatientPrediction.Source.OUT_OF_FOLD,
            values={
                "metastasis_risk_score": oof.metastasis_risk_score,
                "fold": oof.fold,
                "mrs_std": None,
                "mrs_min": None,
                "mrs_max": None,
                "mrs_per_fold": [oof.metastasis_risk_score],
                "positive_fraction": oof.positive_fraction,
                "predicted_metastasis": oof.predicted_metastasis,
                "site_probabilities": oof.site_probabilities,
                "slice_indices": list(patches.selected_slices),
                "slice_probabilities": [oof.slice_probabilities],
                "n_slices": len(oof.slice_probabilities),
                "fewer_than_4_tumour_slices": patches.fewer_than_4_tumour_slices,
                "gradcam_files": gradcam_files,
                "input_hash": patches.input_hash,
                "code_version": version_of_code,
            },
        )
        progress(
            int(
                PREPROCESS_SHARE
                + TRAIN_SHARE
                + (100 - PREPROCESS_SHARE - TRAIN_SHARE) * done / total
            ),
            f"Storing out-of-fold predictions: {done} of {total} patients",
        )


def _model_card(version: ModelVersion, training_set: TrainingSet, result: Any) -> dict[str, Any]:
    """The version's card: what it is, what it learned from, how each fold did."""
    from inference.pmpd.model import SITE_NAMES

    first = result.folds[0].model_card
    cohort = version.trained_on
    return json_safe(
        {
            "model": first["model"],
            "name": version.name,
            "n_folds": len(result.folds),
            "model_config": first["model_config"],
            "train_config": first["train_config"],
            "preprocess_config": first["preprocess_config"],
            "data_hash": result.data_hash,
            "code_version": result.code_version,
            "site_names": list(SITE_NAMES),
            "intended_use": first["intended_use"],
            "trained_on": {
                "cohort_id": cohort.pk,
                "cohort_name": cohort.name,
                "is_synthetic": cohort.is_synthetic,
                "n_patients": len(training_set.patients),
                "n_metastatic": training_set.n_metastatic,
                "skipped": training_set.skipped,
            },
            "metrics": result.metrics,
            "seconds": round(result.seconds, 1),
            "folds": [
                {
                    "fold": fold.fold,
                    "best_epoch": fold.best_epoch,
                    "epochs_run": fold.epochs_run,
                    "history": fold.history,
                    "thresholds": fold.thresholds.to_dict(),
                    "metrics": fold.metrics,
                    "n_train": len(fold.train_ids),
                    "n_validation": len(fold.validation_ids),
                    "n_test": len(fold.test_ids),
                    "train_ids": fold.train_ids,
                    "validation_ids": fold.validation_ids,
                    "test_ids": fold.test_ids,
                }
                for fold in result.folds
            ],
        }
    )
