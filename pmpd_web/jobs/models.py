"""The Job row behind every long piece of work: status, progress and a message for the user.

Every transition goes through :meth:`Job.update_status`, which locks the row, refuses illegal
transitions and stamps the times, so the page, the API and the worker agree on one story.

The row is the source of truth for starting work too (a transactional outbox): it names its task
and holds its inputs (``task``, ``parameters``); ``published_at`` says when it was last handed to
the queue, so a job the queue never received is published again (``pmpd_web.jobs.dispatch``).
A running job's worker stamps ``heartbeat_at``; a stale heartbeat means the worker died.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.dispatch import Signal
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


# Sent once when a job becomes failed or cancelled (``job``, ``status``): the apps put what the
# job was doing back in a state the user can act on (an import "committing", an upload
# "queued", a version "training").
job_stopped = Signal()


class RunningElsewhere(Exception):
    """The redelivery of the message that started a job (or part) whose worker still beats:
    the broker gave the message out again while its first delivery is still being worked on
    (a Redis visibility timeout shorter than the work, a consumer that lost its connection).
    Taking it over would run the work twice at once; dropping it would lose the message should
    that worker die after all. The caller checks again once the heartbeat would be stale
    (``pmpd_web.jobs.runner.defer_redelivery``)."""


def heartbeat_stale_after() -> timedelta:
    """A running job whose worker has not written for this long is taken as lost."""
    return timedelta(seconds=int(getattr(settings, "PMPD_JOB_HEARTBEAT_STALE_SECONDS", 120)))


def max_workers_lost() -> int:
    """A job (or part) whose worker died this many times is failed instead of run again: work
    that kills its worker every time (out of memory on one huge scan, a crashing library) would
    otherwise go round the workers for ever, taking each down in turn."""
    return max(1, int(getattr(settings, "PMPD_JOB_MAX_WORKERS_LOST", 3)))


def workers_lost_message(times: int, doing: str = "") -> str:
    """The error of a job given up because its worker kept dying (``doing``: where it was, e.g.
    "on part 4 of 12 (patient PDAC-017)")."""
    doing = f" {doing}" if doing else ""
    return (
        f"The worker stopped {times} times{doing} before finishing (killed, out of memory, or "
        "its host went down), so the job is not started again by itself. The administrators can "
        "see why in the worker's log; Retry starts it once more."
    )


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
    parameters = models.JSONField(
        default=dict, blank=True, help_text="The job's inputs: primary keys and choices"
    )
    result = models.JSONField(default=dict, blank=True)
    task = models.CharField(max_length=120, blank=True, help_text="The Celery task running it")
    published_at = models.DateTimeField(
        null=True, blank=True, help_text="When the job was last handed to the queue"
    )
    message_id = models.CharField(
        max_length=64, blank=True, help_text="The queue message the running attempt came from"
    )
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    written_files = models.JSONField(
        default=list,
        blank=True,
        help_text="Storage names the running attempt wrote and no row references yet",
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    workers_lost = models.PositiveSmallIntegerField(
        default=0, help_text="How many times its worker died mid-run (reset by a retry)"
    )
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

    @property
    def worker_lost(self) -> bool:
        """Running, but its worker stopped writing its heartbeat (killed, or its host down)."""
        if self.status != JobStatus.RUNNING:
            return False
        last = self.heartbeat_at or self.started_at or self.updated_at
        return last is not None and timezone.now() - last > heartbeat_stale_after()

    @property
    def waiting_for_queue(self) -> bool:
        """Queued, but the queue never received it (it was unreachable when the job started)."""
        return self.status == JobStatus.QUEUED and bool(self.task) and self.published_at is None

    @property
    def can_retry(self) -> bool:
        """Only a job that names its task can be queued again (a command's job runs in place).
        A failed ingest cannot: its received files were deleted (they may identify the
        patient), so the files are uploaded again."""
        if self.status == JobStatus.FAILED and self.kind == Job.Kind.IMAGE_INGEST:
            return False
        waiting = self.status in (JobStatus.FAILED, JobStatus.QUEUED) or self.worker_lost
        return waiting and bool(self.task)

    @property
    def can_cancel(self) -> bool:
        return not self.finished

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
            previous = job.status
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
            if new_status == JobStatus.RUNNING:
                job.heartbeat_at = now
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
        self._copy_from(job)
        if new_status != previous and new_status in (JobStatus.FAILED, JobStatus.CANCELLED):
            job_stopped.send(sender=Job, job=job, status=new_status)
        return job

    def claim(self, message_id: str) -> bool:
        """Take the job for the queue message ``message_id``; ``False`` when it must not run.

        A queued job is claimed. A running job is taken over only when its heartbeat is
        stale (its worker died); a second message for a job that is running well (the sweeper
        published it again while it waited in a long queue) is refused, so a job never runs
        twice at once. The redelivery of the message that started it, while its worker still
        beats, raises ``RunningElsewhere``: the caller looks again later. A job whose worker died
        ``PMPD_JOB_MAX_WORKERS_LOST`` times is failed with the reason instead (``False``).
        """
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=self.pk)
            if job.finished:
                return False
            if job.status == JobStatus.RUNNING and not job.worker_lost:
                if message_id and message_id == job.message_id:
                    raise RunningElsewhere(f"job {job.pk}")
                return False
            now = timezone.now()
            gave_up = False
            if job.status == JobStatus.RUNNING:  # its worker died
                job.workers_lost += 1
                gave_up = job.workers_lost >= max_workers_lost()
            if gave_up:
                job.status = JobStatus.FAILED
                job.finished_at = now
                job.phrase = "Failed"
                job.error = workers_lost_message(job.workers_lost)
            else:
                job.attempts += 1
                job.status = JobStatus.RUNNING
                job.started_at = job.started_at or now
                job.heartbeat_at = now
                job.message_id = message_id[:64]
                job.phrase = "Started"
            job.save()
        self._copy_from(job)
        if gave_up:
            job_stopped.send(sender=Job, job=job, status=JobStatus.FAILED)
            return False
        return True

    def beat(self) -> None:
        """Stamp the heartbeat (the worker is alive)."""
        Job.objects.filter(pk=self.pk).update(heartbeat_at=timezone.now())

    def _copy_from(self, job: Job) -> None:
        for field in (
            "status",
            "progress",
            "phrase",
            "error",
            "result",
            "attempts",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "message_id",
            "workers_lost",
        ):
            setattr(self, field, getattr(job, field))


class JobPart(models.Model):
    """One share of a job split across workers (a chunk of a cohort's patients): its inputs,
    whether it is done, its heartbeat while a worker runs it, and its result. The job is done
    when every part is (``pmpd_web.jobs.parts``)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="parts")
    index = models.PositiveIntegerField()
    payload = models.JSONField(default=dict, help_text="The part's inputs (primary keys)")
    size = models.PositiveIntegerField(default=1, help_text="Units of work, for the progress")
    tasks = models.JSONField(
        default=list, help_text="The Celery tasks that run the part, in order (a chain)"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    result = models.JSONField(default=dict, blank=True)
    message_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="Who ran it (host, pid)")
    attempts = models.PositiveSmallIntegerField(default=0)
    workers_lost = models.PositiveSmallIntegerField(
        default=0, help_text="How many times a worker died while on it (reset by a job retry)"
    )
    warming_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When its cpu step (preprocessing ahead of the gpu step) started; cleared when "
        "that step ends, so one still set at the next start means its worker died",
    )
    published_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="job_part_unique_index")
        ]

    def __str__(self) -> str:
        return f"Part {self.index} of job {self.job_id} ({self.status})"

    @property
    def worker_lost(self) -> bool:
        if self.status != JobPart.Status.RUNNING:
            return False
        return self.heartbeat_at is None or (
            timezone.now() - self.heartbeat_at > heartbeat_stale_after()
        )
