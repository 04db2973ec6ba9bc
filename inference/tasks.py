"""Celery tasks of the engine. They take primary keys, are idempotent (a redelivered task
finishes what is left, never duplicates) and run through ``run_job``.

``gpu_*`` tasks are routed to the gpu queue (``pmpd_web.celery``), the rest to the cpu queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings

from inference.pmpd.preprocess import PreprocessConfig, PreprocessError
from pmpd_web.cohorts.models import Patient
from pmpd_web.jobs.runner import TRANSIENT_ERRORS

from .cache import preprocessed_for
from .jobs import execute_scoring, execute_training
from .models import ModelVersion
from .registry import preprocess_config_of
from .segmentation_jobs import execute_segmentation, execute_segmentation_training

log = logging.getLogger(__name__)

RETRY = {
    "bind": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "max_retries": settings.CELERY_TASK_MAX_RETRIES,
    "retry_backoff": True,
}


@shared_task(**RETRY)
def gpu_train_model(self, job_id: int, model_version_id: int) -> None:
    """Cross-validate a model version on its cohort (see ``inference.training``)."""
    execute_training(job_id, model_version_id)


@shared_task(**RETRY)
def gpu_score_cohort(self, job_id: int, cohort_id: int, model_version_id: int) -> None:
    """Score a cohort with a version's five-fold ensemble (see ``inference.scoring``)."""
    execute_scoring(job_id, cohort_id, model_version_id)


@shared_task(**RETRY)
def gpu_train_segmentation_model(self, job_id: int, segmentation_model_id: int) -> None:
    """Train an nnU-Net v2 on the cohort's approved masks (see ``inference.segmentation_jobs``)."""
    execute_segmentation_training(job_id, segmentation_model_id)


@shared_task(**RETRY)
def gpu_predict_masks(
    self, job_id: int, cohort_id: int, segmentation_model_id: int, study_ids: list[str]
) -> None:
    """Predict masks as automatic mask versions needing review."""
    execute_segmentation(job_id, cohort_id, segmentation_model_id, study_ids)


@shared_task(**RETRY)
def cpu_preprocess_patient(
    self, patient_id: int, model_version_id: int | None = None
) -> dict[str, Any]:
    """Fill the preprocessing cache for one patient, on a CPU worker, so that training and
    scoring on the GPU find the patches ready. Uses the preprocessing configuration of
    ``model_version_id``, else that of the active version, else the method's defaults.

    A cache warmer, not a job: no job row; a patient whose images the engine refuses is
    logged and reported in the return value, and training or scoring will list it again.
    """
    patient = Patient.objects.get(pk=patient_id)
    if model_version_id is not None:
        version = ModelVersion.objects.get(pk=model_version_id)
    else:
        version = ModelVersion.objects.filter(is_active=True).first()
    config = preprocess_config_of(version) if version is not None else PreprocessConfig()
    try:
        patches = preprocessed_for(patient, config)
    except PreprocessError as exc:
        log.warning("patient %s cannot be preprocessed: %s", patient.study_id, exc)
        return {"patient": patient_id, "error": str(exc)}
    return {"patient": patient_id, "input_hash": patches.input_hash}
