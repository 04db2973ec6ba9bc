"""Starting and running the engine's jobs. Pages, the API, management commands and the demo all
start work here; the Celery tasks and the commands run it through the same ``execute_*``
functions (``run_job``: status, progress and errors on the job row)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction
from pmpd_web.cohorts.models import Cohort
from pmpd_web.jobs.models import FINISHED, Job
from pmpd_web.jobs.runner import ProgressCallback, UserFacingError, run_job

from .models import ModelVersion
from .registry import TrainingChoices, default_name, new_model_version
from .scoring import score_cohort
from .training import check_class_sizes, train_model_version, training_candidates

OnProgress = Callable[[int, str], None] | None


def create_training(
    cohort: Cohort, *, user: Any, choices: TrainingChoices, name: str = ""
) -> ModelVersion:
    """A new version in status "training" with its job (queued, not yet sent to a worker).

    Refuses at once, with a message, what the training would refuse later: settings out of
    range, a taken name, too few labelled patients with images for the folds.
    """
    train_config, preprocess_config = choices.configs()
    labelled = training_candidates(cohort)
    n_metastatic = labelled.filter(metastasis_at_diagnosis="yes").count()
    check_class_sizes(n_metastatic, labelled.count() - n_metastatic, train_config.n_folds)
    with transaction.atomic():
        job = Job.objects.create(
            kind=Job.Kind.TRAINING,
            cohort=cohort,
            created_by=user if getattr(user, "is_authenticated", False) else None,
            phrase="Waiting for a GPU worker",
        )
        version = new_model_version(
            cohort,
            name=name.strip() or default_name(cohort),
            user=user,
            train_config=train_config,
            preprocess_config=preprocess_config,
            job=job,
        )
    audit(
        user,
        AuditAction.START_TRAINING,
        cohort=cohort,
        label=version.name,
        model_version=version.pk,
    )
    return version


def start_training(
    cohort: Cohort, *, user: Any, choices: TrainingChoices, name: str = ""
) -> ModelVersion:
    """``create_training`` and queue it on the gpu queue; returns the version (``.job``)."""
    from .tasks import gpu_train_model

    with transaction.atomic():
        version = create_training(cohort, user=user, choices=choices, name=name)
        job_id, version_id = version.job_id, version.pk
        transaction.on_commit(lambda: gpu_train_model.delay(job_id, version_id))
    return version


def unfinished_scorings(cohort: Cohort, version: ModelVersion) -> QuerySet[Job]:
    """Scoring jobs of ``cohort`` with ``version`` that are queued or running, oldest first."""
    return (
        Job.objects.filter(kind=Job.Kind.SCORING, cohort=cohort, result__model_version=version.pk)
        .exclude(status__in=FINISHED)
        .order_by("pk")
    )


def create_scoring(cohort: Cohort, version: ModelVersion, *, user: Any) -> Job:
    """A queued scoring job for the cohort (not yet sent to a worker)."""
    if version.status != ModelVersion.Status.READY:
        raise UserFacingError(
            f"Model version {version.name} is {version.get_status_display().lower()}; only a "
            "ready version can score."
        )
    # One scoring of a cohort with a version at a time: a second job would score the same
    # patients again beside the first (the rows stay unique, the work is wasted). Row locks
    # on the cohort make the check and the creation atomic across web processes.
    with transaction.atomic():
        Cohort.objects.select_for_update().filter(pk=cohort.pk).first()
        busy = unfinished_scorings(cohort, version).first()
        if busy is not None:
            raise UserFacingError(
                f"{cohort.name} is already being scored with {version.name} (job {busy.pk}, "
                f"{busy.get_status_display().lower()}): wait for it to finish."
            )
        job = Job.objects.create(
            kind=Job.Kind.SCORING,
            cohort=cohort,
            created_by=user if getattr(user, "is_authenticated", False) else None,
            phrase=f"Waiting for a GPU worker to score with {version.name}"[:200],
            result={"model_version": version.pk},
        )
        audit(
            user,
            AuditAction.START_SCORING,
            cohort=cohort,
            label=version.name,
            model_version=version.pk,
        )
    return job


def start_scoring(cohort: Cohort, version: ModelVersion, *, user: Any) -> Job:
    """``create_scoring`` and queue it on the gpu queue."""
    from .tasks import gpu_score_cohort

    with transaction.atomic():
        job = create_scoring(cohort, version, user=user)
        job_id, cohort_id, version_id = job.pk, cohort.pk, version.pk
        transaction.on_commit(lambda: gpu_score_cohort.delay(job_id, cohort_id, version_id))
    return job


def _reporting(progress: ProgressCallback, on_progress: OnProgress) -> ProgressCallback:
    def report(percent: int, phrase: str) -> None:
        progress(percent, phrase)
        if on_progress is not None:
            on_progress(percent, phrase)

    return report


def execute_training(job_id: int, model_version_id: int, *, on_progress: OnProgress = None) -> None:
    """Run a training job here and now (the task's body; commands call it directly)."""
    run_job(
        job_id,
        lambda job, progress: train_model_version(
            model_version_id, _reporting(progress, on_progress)
        ),
    )


def execute_scoring(
    job_id: int, cohort_id: int, model_version_id: int, *, on_progress: OnProgress = None
) -> None:
    """Run a scoring job here and now (the task's body; commands call it directly)."""
    run_job(
        job_id,
        lambda job, progress: score_cohort(
            cohort_id, model_version_id, _reporting(progress, on_progress)
        ),
    )
