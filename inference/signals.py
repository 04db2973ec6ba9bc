"""The engine's receivers of job signals, connected at start-up (``InferenceConfig.ready``).

Kept apart from :mod:`inference.jobs` so that starting Django (the web, every management
command) does not import the training and scoring code with SciPy and pandas behind them:
a receiver imports what it needs when it runs.
"""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from pmpd_web.jobs.models import Job, job_stopped


@receiver(job_stopped)
def training_stopped(sender, *, job: Job, status: str, **kwargs: Any) -> None:
    """A training job that gave up or was cancelled leaves its version failed, not
    "training" forever."""
    if job.kind == Job.Kind.TRAINING and job.parameters.get("model_version"):
        from .training import mark_failed

        mark_failed(job.parameters["model_version"])
