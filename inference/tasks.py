"""Celery tasks of the engine. They take primary keys, are idempotent (a redelivered task
finishes what is left, never duplicates) and run through ``run_job``.

The job tasks are written with ``job_task`` (one retry policy for every job); ``gpu_*`` tasks
are routed to the gpu queue (``pmpd_web.celery``), the rest to the cpu queue.
"""

from __future__ import annotations

import logging
from typing import Any

from inference.pmpd.preprocess import PreprocessConfig, PreprocessError
from pmpd_web.cohorts.models import Patient
from pmpd_web.jobs.parts import part_task, run_warming
from pmpd_web.jobs.runner import TRANSIENT_ERRORS, retry_countdown
from pmpd_web.jobs.tasks import job_task, reliable_task

from .cache import preprocessed_for
from .jobs import scoring_work, training_work
from .models import ModelVersion
from .registry import preprocess_config_of
from .scoring import merge_scoring, preprocess_part, score_part
from .segmentation_jobs import (
    merge_segmentation,
    predict_part,
    segmentation_training_work,
    segmentation_work,
)

log = logging.getLogger(__name__)

SHOWN_PATIENTS = 10


def part_patients(payload: dict[str, Any]) -> str:
    """The study IDs of a part's patients, for the error of a part given up (its workers died
    while on it): the person knows which scan to look at."""
    ids = list(
        Patient.objects.filter(pk__in=payload.get("patients", []))
        .order_by("study_id")
        .values_list("study_id", flat=True)
    )
    if not ids:
        return ""
    shown = ", ".join(ids[:SHOWN_PATIENTS])
    more = f" and {len(ids) - SHOWN_PATIENTS} more" if len(ids) > SHOWN_PATIENTS else ""
    return f"patient{'s' if len(ids) > 1 else ''} {shown}{more}"


@job_task
def gpu_train_model(job, progress):
    """Cross-validate a model version on its cohort (see ``inference.training``)."""
    return training_work(job, progress)


@job_task
def gpu_score_cohort(job, progress):
    """Split a cohort's scoring into parts for the workers (see ``inference.scoring``)."""
    return scoring_work(job, progress)


@job_task
def gpu_train_segmentation_model(job, progress):
    """Train an nnU-Net v2 on the cohort's approved masks (see ``inference.segmentation_jobs``)."""
    return segmentation_training_work(job, progress)


@job_task
def gpu_predict_masks(job, progress):
    """Split a cohort's mask prediction into parts for the GPU workers; each mask becomes an
    automatic mask version needing review (see ``inference.segmentation_jobs``)."""
    return segmentation_work(job, progress)


@part_task(finish=merge_segmentation, describe=part_patients)
def gpu_predict_masks_part(job, payload, scratch):
    """Predict the masks of one part of a cohort with nnU-Net (the gpu step)."""
    return predict_part(job, payload, scratch)


@part_task(finish=merge_scoring, describe=part_patients)
def gpu_score_part(job, payload, scratch):
    """Score one part of a cohort, its patients' patches in shared batches (the gpu step)."""
    return score_part(job, payload, scratch)


@reliable_task
def cpu_preprocess_part(self, part_id: int) -> int:
    """Preprocess one part of a cohort before its gpu step (the next task of its chain), so the
    GPU finds the patches ready. A part already done, or whose job stopped, is skipped; a part
    whose workers died too often while on it fails its job (``run_warming``)."""

    def warm(payload: dict[str, Any]) -> int:
        try:
            return preprocess_part(payload)
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            # A cache warmer: the gpu step preprocesses what is missing and reports the error,
            # so the chain goes on.
            log.exception("part %s: preprocessing failed; the scoring step will try again", part_id)
            return 0

    try:
        return run_warming(part_id, warm, part_patients)
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from exc


@reliable_task
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
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from exc
    except PreprocessError as exc:
        log.warning("patient %s cannot be preprocessed: %s", patient.study_id, exc)
        return {"patient": patient_id, "error": str(exc)}
    return {"patient": patient_id, "input_hash": patches.input_hash}
