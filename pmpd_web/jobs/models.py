"""The Job row behind every long piece of work: status, progress and a message for the user.

Every transition goes through :meth:`Job.update_status`, which locks the row, refuses illegal
transitions and stamps the times, so the page, the API and the worker agree on one story.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    JobStatus.QUEUED: {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED},
    # A running job goes back to queued when its worker died and the task is redelivered.
    JobStatus.RUNNING: {JobStatus.RUNNING, JobStatus.QUEUED} | FINISHED,
    JobStatus.SUCCEEDED: set(),
    JobStatus.FAILED: {JobStatus.QUEUED},  # an explicit retry
    JobStatus.CANCELLED: set(),
}


class IllegalTransition(Exception):
    pass


class Job(models.Model):
    class Kind(models.TextChoices):
        TABLE_IMPORT = "table_import", "Clinical table import"
        IMAGE_INGEST = "image_ingest", "Image ingest"
        PREPROCESS = "preprocess", "Preprocessing"
        TRAINING = "training", "Model training"
        SCORING = "scoring", "Cohort scoring"
        ANALYSIS = "analysis", "Analysis"
        SEGMENTATION_TRAINING = "segmentation_training", "Segmentation model training"
        SEGMENTATION = "segmentation", "Automatic segmentation"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    cohort = models.ForeignKey(
        "cohorts.Cohort", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    phrase = models.CharField(max_length=200, default="Waiting for a worker")
    error = models.TextField(blank=True, help_text="What went wrong, in words for the user")
    result = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(progress__lte=100), name="job_progress_at_most_100"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def update_status(
        self,
        status: str | None = None,
        *,
        progress: int | None = None,
        phrase: str | None = None,
        error: str | None = None,
        result: dict | None = None,
    ) -> Job:
        """The single way a job changes state. Locks the row; returns the fresh job."""
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=self.pk)
            new_status = status or job.status
            if new_status not in ALLOWED_TRANSITIONS[job.status]:
                raise IllegalTransition(f"A {job.status} job cannot become {new_status}.")
            now = timezone.now()
            if new_status == JobStatus.RUNNING and job.status != JobStatus.RUNNING:
                job.attempts += 1
                job.started_at = job.started_at or now
            if new_status in FINISHED:
                job.finished_at = now
                if new_status == JobStatus.SUCCEEDED:
                    progress = 100
            if new_status == JobStatus.QUEUED:
                job.finished_at = None
                job.error = ""
            if progress is not None:
                job.progress = max(0, min(100, int(progress)))
            if phrase is not None:
                job.phrase = phrase[:200]
            if error is not None:
                job.error = error
            if result is not None:
                job.result = result
            job.status = new_status
            job.save()
        for field in ("status", "progress", "phrase", "error", "result", "attempts"):
            setattr(self, field, getattr(job, field))
        self.started_at, self.finished_at = job.started_at, job.finished_at
        return job
