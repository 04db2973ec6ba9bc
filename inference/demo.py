"""The engine's part of the local demo: train a small model on the demo cohort and score it.

Small CPU settings (ResNet10 on 64-pixel patches, the method's six rotations per slice, at
most eight epochs): a few minutes for the 120-patient phantom demo cohort on two idle cores.
A second run reuses what exists: nothing is done when an active ready version trained on the cohort
has scored every patient with images.
"""

from __future__ import annotations

from typing import Any

from pmpd_web.cohorts.models import Cohort
from pmpd_web.jobs.models import JobStatus
from pmpd_web.jobs.runner import UserFacingError

from .cache import with_images
from .console import progress_bar, report_scoring, report_training
from .jobs import (
    create_scoring,
    create_training,
    execute_scoring,
    execute_training,
    unfinished_scorings,
)
from .models import ModelVersion
from .registry import TrainingChoices, activate

# Small enough for two CPU cores (three to four minutes idle), large enough to learn the
# phantom's signal. No early stopping: the inner validation split of ~19 patients is too noisy
# to stop on (it stopped most folds at epoch one); eight epochs with the cosine schedule run to
# its end. bench_train_cpu.py with 6 such epochs: out-of-fold patient AUROC 0.925 (seed 0) and
# 0.814 (the demo's seed 2025). Smaller patches or phantoms (48 px, a 64 matrix) learned nothing
# (AUROC ~0.5): the tumour margin and texture are then a pixel or two wide.
DEMO_TRAINING = TrainingChoices(
    depth=10,
    input_size=64,
    max_epochs=8,
    n_folds=5,
    seed=0,
    batch_size=64,
    learning_rate=1e-3,
    early_stopping_metric="none",
)


def demo_version_name(cohort: Cohort) -> str:
    return f"PMPD demo ({cohort.name})"[:120]


def _unscored(cohort: Cohort, version: ModelVersion) -> int:
    return with_images(cohort.patients.all()).exclude(predictions__model_version=version).count()


def run_demo_engine(cohort: Cohort, *, stdout: Any) -> ModelVersion | None:
    """Train (or reuse) the demo model version on ``cohort``, make it active, and score the
    cohort; returns the version, or None when no patient of the cohort has images yet.

    ``stdout`` takes the summary lines (a management command's ``self.stdout``); the progress
    bars go to the terminal (stderr). Raises ``UserFacingError`` when training or scoring fails.
    """
    if not with_images(cohort.patients.all()).exists():
        stdout.write(f"{cohort.name}: no patient has images yet; the PMPD model is not trained.")
        return None
    active = ModelVersion.objects.filter(
        trained_on=cohort, is_active=True, status=ModelVersion.Status.READY
    ).first()
    if active is not None and _unscored(cohort, active) == 0:
        stdout.write(f"{cohort.name}: scored by the active version {active.name} already.")
        return active

    name = demo_version_name(cohort)
    version = ModelVersion.objects.filter(name=name, status=ModelVersion.Status.READY).first()
    if version is None:
        # A demo training that was interrupted or failed leaves its row behind: start afresh.
        ModelVersion.objects.filter(name=name).delete()
        version = create_training(cohort, user=None, choices=DEMO_TRAINING, name=name)
        stdout.write(
            f"Training {name}: ResNet{DEMO_TRAINING.depth} on {DEMO_TRAINING.input_size}-pixel "
            f"patches, 5-fold cross-validation, up to {DEMO_TRAINING.max_epochs} epochs."
        )
        with progress_bar("Training the demo PMPD model") as progress:
            execute_training(version.job_id, on_progress=progress)
        version.refresh_from_db()
        job = version.job
        if job.status != "succeeded" or version.status != ModelVersion.Status.READY:
            raise UserFacingError(f"The demo training failed: {job.error or job.phrase}")
        report_training(stdout, version, job.result)
    if not version.is_active:
        version = activate(version, None)
        stdout.write(f"{version.name} is the active model version.")

    # A demo run interrupted while scoring (Ctrl-C) leaves its job unfinished; it scores here
    # and now, in this process, so no worker will ever finish that one.
    for stale in unfinished_scorings(cohort, version):
        stale.update_status(JobStatus.CANCELLED, phrase="Interrupted demo run")
    job = create_scoring(cohort, version, user=None)
    with progress_bar(f"Scoring {cohort.name}") as progress:
        execute_scoring(job.pk, on_progress=progress)
    job.refresh_from_db()
    if job.status != "succeeded":
        raise UserFacingError(f"The demo scoring failed: {job.error or job.phrase}")
    report_scoring(stdout, cohort.name, version, job.result)
    return version
