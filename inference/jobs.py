"""Starting and running the engine's jobs. Pages, the API, management commands and the demo all
start work here; the Celery tasks and the commands run it through the same ``execute_*``
functions (``run_job``: status, progress and errors on the job row)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction, acting_user
from pmpd_web.cohorts.models import Cohort
from pmpd_web.jobs.dispatch import start_on_commit
from pmpd_web.jobs.models import FINISHED, Job
from pmpd_web.jobs.parts import PlannedPart, hand_over, run_parts_here, split
from pmpd_web.jobs.runner import ProgressCallback, UserFacingError, run_job

from .models import ModelVersion
from .registry import TrainingChoices, default_name, new_model_version
from .scoring import merge_scoring, plan_scoring, score_part
from .training import check_class_sizes, train_model_version, training_candidates

OnProgress = Callable[[int, str], None] | None
# Named rather than imported: the tasks module imports this one.
TRAINING_TASK = "inference.tasks.gpu_train_model"
SCORING_TASK = "inference.tasks.gpu_score_cohort"
# A scoring job's parts: preprocessed on the cpu queue, then scored on the gpu queue.
SCORING_PART_TASKS = ("inference.tasks.cpu_preprocess_part", "inference.tasks.gpu_score_part")


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
            created_by=acting_user(user),
            phrase="Waiting for a GPU worker",
            task=TRAINING_TASK,
        )
        version = new_model_version(
            cohort,
            name=name.strip() or default_name(cohort),
            user=user,
            train_config=train_config,
            preprocess_config=preprocess_config,
            job=job,
        )
        Job.objects.filter(pk=job.pk).update(parameters={"model_version": version.pk})
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
    with transaction.atomic():
        version = create_training(cohort, user=user, choices=choices, name=name)
        start_on_commit(version.job)
    return version


def unfinished_scorings(cohort: Cohort, version: ModelVersion) -> QuerySet[Job]:
    """Scoring jobs of ``cohort`` with ``version`` that are queued or running, oldest first."""
    return (
        Job.objects.filter(
            kind=Job.Kind.SCORING, cohort=cohort, parameters__model_version=version.pk
        )
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
                f"{busy.get_status_display().lower()}): wait for it to finish, or retry or "
                f"cancel it on its page, /jobs/{busy.pk}/."
            )
        job = Job.objects.create(
            kind=Job.Kind.SCORING,
            cohort=cohort,
            created_by=acting_user(user),
            phrase=f"Waiting for a GPU worker to score with {version.name}"[:200],
            task=SCORING_TASK,
            parameters={"model_version": version.pk},
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
    with transaction.atomic():
        job = create_scoring(cohort, version, user=user)
        start_on_commit(job)
    return job


def training_work(job: Job, progress: ProgressCallback) -> dict[str, Any]:
    """The body of a training job: cross-validate ``parameters["model_version"]``."""
    return train_model_version(job.parameters["model_version"], progress)


def scoring_work(job: Job, progress: ProgressCallback, *, here: bool = False) -> Any:
    """The body of a scoring job: score the job's cohort with ``parameters["model_version"]``.

    The cohort is split into parts (once: a resumed job keeps its parts and what they did),
    handed to the workers as a group of chains (preprocess on cpu, score on gpu); the last part
    to finish settles the job. ``here``: run the parts in this process instead (commands)."""
    version_id = job.parameters["model_version"]
    parts = list(job.parts.all())
    if not parts:
        plan = plan_scoring(job.cohort_id, version_id)
        if not plan.to_score:
            return merge_scoring(job.update_status(result=plan.summary()), [])
        job = job.update_status(
            progress=0,
            phrase=f"Scoring {len(plan.to_score)} of {plan.total} patients",
            result=plan.summary(),
        )
        planned = [
            PlannedPart({"model_version": version_id, "patients": chunk}, len(chunk))
            for chunk in plan.parts()
        ]
        parts = split(job, planned, tasks=SCORING_PART_TASKS)
    if here:
        return run_parts_here(job, parts, score_part, merge_scoring, progress)
    # Said before publishing: the parts may finish (and settle the job) at once.
    progress(job.progress, f"{len(parts)} part(s) of the cohort handed to the workers")
    return hand_over(job, parts, merge_scoring)


def _reporting(
    work: Callable[[Job, ProgressCallback], dict[str, Any]], on_progress: OnProgress
) -> Callable[[Job, ProgressCallback], dict[str, Any]]:
    """``work`` that also tells ``on_progress`` (a command's progress bar)."""

    def reporting_work(job: Job, progress: ProgressCallback) -> dict[str, Any]:
        def report(percent: int, phrase: str) -> None:
            progress(percent, phrase)
            if on_progress is not None:
                on_progress(percent, phrase)

        return work(job, report)

    return reporting_work


def execute_training(job_id: int, *, on_progress: OnProgress = None) -> None:
    """Run a training job here and now (commands and the demo; the task runs the same work)."""
    run_job(job_id, _reporting(training_work, on_progress))


def execute_scoring(job_id: int, *, on_progress: OnProgress = None) -> None:
    """Run a scoring job here and now (commands and the demo; the task runs the same work)."""
    run_job(job_id, _reporting(functools.partial(scoring_work, here=True), on_progress))
