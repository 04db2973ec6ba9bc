"""A job split across workers: its parts run as Celery ``group``s of ``chain``s (e.g. preprocess
on the cpu queue, then score on the gpu queue), so N workers share one job.

The job's task plans the parts (``split``), publishes them (``publish_parts``) and returns
``PARTS_RUNNING``: the job stays running, and the part that finishes last settles it with the
result of ``finish(job, part results)``. The guarantees of a job hold for each part: a part is
acknowledged late and redelivered when its worker dies, runs once at a time (``claim_part``:
a second message for a part that is running well is refused), retries a transient error, and
beats the job's heartbeat while it works; the sweeper publishes again a part whose worker died
(stale heartbeat) or that the queue lost (``republish_lost_parts``). A part's work must be
idempotent (scoring skips the patients already scored), so a part run again after a kill
finishes what is left. A part whose worker died ``PMPD_JOB_MAX_WORKERS_LOST`` times (in its cpu
step or its gpu step) fails the job with the patients it was on, instead of taking down worker
after worker for ever.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import chain, current_app, group
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .dispatch import registered_task, republish_after
from .files import fresh_scratch, scratch_root
from .models import (
    Job,
    JobPart,
    JobStatus,
    RunningElsewhere,
    max_workers_lost,
    workers_lost_message,
)
from .runner import (
    PARTS_RUNNING,
    TRANSIENT_ERRORS,
    JobCancelled,
    UserFacingError,
    _give_up_message,
    _Heartbeat,
    _settle,
    defer_redelivery,
    retry_countdown,
)
from .tasks import reliable_task

log = logging.getLogger(__name__)

__all__ = [
    "PARTS_RUNNING",
    "PartAbandoned",
    "PlannedPart",
    "hand_over",
    "part_task",
    "run_parts_here",
    "run_warming",
    "split",
]

PartWork = Callable[[Job, dict[str, Any], Path], dict[str, Any]]
Finish = Callable[[Job, list[dict[str, Any]]], dict[str, Any]]
# What a part's payload is about, for a person: "patients PDAC-001, PDAC-002".
Describe = Callable[[dict[str, Any]], str]


class PartAbandoned(Exception):
    """The part's workers died ``PMPD_JOB_MAX_WORKERS_LOST`` times: it is not run again."""

    def __init__(self, part: JobPart) -> None:
        super().__init__(f"part {part.index} of job {part.job_id}")
        self.part = part


@dataclass(frozen=True)
class PlannedPart:
    payload: dict[str, Any]
    size: int


def split(job: Job, planned: Sequence[PlannedPart], *, tasks: Sequence[str]) -> list[JobPart]:
    """The job's parts, created once: an attempt after a worker died keeps the parts (and what
    they finished) of the attempt before."""
    with transaction.atomic():
        Job.objects.select_for_update().filter(pk=job.pk).first()
        existing = list(JobPart.objects.filter(job=job))
        if existing:
            return existing
        return JobPart.objects.bulk_create(
            JobPart(job=job, index=index, payload=part.payload, size=part.size, tasks=list(tasks))
            for index, part in enumerate(planned)
        )


def _signature(part: JobPart):
    steps = [current_app.signature(name, args=[part.pk], immutable=True) for name in part.tasks]
    return steps[0] if len(steps) == 1 else chain(*steps)


def publish_parts(parts: Sequence[JobPart]) -> int:
    """Hand the parts that are not done to the queues, as one group; returns how many."""
    waiting = [part for part in parts if part.status != JobPart.Status.DONE]
    if not waiting:
        return 0
    if current_app.conf.task_always_eager:
        # Eager tasks (tests, the embedded default without a worker) run here and now; Celery
        # refuses an eager chain inside a task, so the steps run one after the other.
        for part in waiting:
            for name in part.tasks:
                registered_task(name).apply(args=[part.pk], throw=True)
    else:
        group(_signature(part) for part in waiting).apply_async()
    JobPart.objects.filter(pk__in=[part.pk for part in waiting]).update(published_at=timezone.now())
    return len(waiting)


def hand_over(job: Job, parts: Sequence[JobPart], finish: Finish) -> Any:
    """Publish the job's parts that are not done and return ``PARTS_RUNNING`` (the last part
    settles the job); the job's result at once when every part is already done (a job retried
    after its parts finished)."""
    if all(part.status == JobPart.Status.DONE for part in parts):
        return finish(job, [part.result for part in parts])
    publish_parts(parts)
    return PARTS_RUNNING


def republish_lost_parts() -> list[int]:
    """Publish again the parts of running jobs whose worker died (stale heartbeat) or that no
    worker took within ``PMPD_JOB_REPUBLISH_AFTER_SECONDS`` (the sweeper calls this)."""
    now = timezone.now()
    with transaction.atomic():
        # Locked, and a part being claimed skipped: its claim decides, not this older look.
        candidates = JobPart.objects.select_for_update(skip_locked=True, of=("self",)).filter(
            job__status=JobStatus.RUNNING,
            status__in=[JobPart.Status.QUEUED, JobPart.Status.RUNNING],
        )
        lost = [
            part
            for part in candidates
            if part.worker_lost
            or (
                part.status == JobPart.Status.QUEUED
                and (part.published_at is None or now - part.published_at > republish_after())
            )
        ]
        # A dead worker is counted; the claim of the copy gives the part up once there were
        # too many. Queued again: a copy still waiting in a long queue is not sent a second
        # time at the next sweep, and the dead worker's redelivered message may take it too.
        JobPart.objects.filter(pk__in=[part.pk for part in lost if part.worker_lost]).update(
            workers_lost=F("workers_lost") + 1
        )
        JobPart.objects.filter(pk__in=[part.pk for part in lost]).update(
            status=JobPart.Status.QUEUED
        )
    publish_parts(lost)
    return [part.pk for part in lost]


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


def claim_part(part_id: int, message_id: str) -> JobPart | None:
    """Take the part for this message; ``None`` when it must not run: it is done, its job is
    no longer running (cancelled, failed, finished), or another worker runs it well (for the
    redelivery of the message that worker runs: ``RunningElsewhere``, look again later).
    ``PartAbandoned`` when its workers died too often (the caller fails the job)."""
    with transaction.atomic():
        part = JobPart.objects.select_for_update().select_related("job").get(pk=part_id)
        if part.status == JobPart.Status.DONE or part.job.status != JobStatus.RUNNING:
            return None
        if part.status == JobPart.Status.RUNNING and not part.worker_lost:
            if message_id and message_id == part.message_id:
                raise RunningElsewhere(f"part {part.index} of job {part.job_id}")
            return None
        if part.status == JobPart.Status.RUNNING:  # its worker died
            part.workers_lost += 1
        if part.workers_lost >= max_workers_lost():
            part.status = JobPart.Status.QUEUED  # a retry of the job runs it again
            part.save(update_fields=["status", "workers_lost"])
            abandoned = True
        else:
            abandoned = False
            part.status = JobPart.Status.RUNNING
            part.attempts += 1
            part.heartbeat_at = timezone.now()
            part.message_id = message_id[:64]
            part.worker = _worker_name()
            part.save()
    if abandoned:
        raise PartAbandoned(part)
    return part


def _doing(part: JobPart, describe: Describe | None) -> str:
    total = JobPart.objects.filter(job_id=part.job_id).count()
    what = describe(part.payload) if describe is not None else ""
    return f"on part {part.index + 1} of {total}" + (f" ({what})" if what else "")


def give_up(part: JobPart, describe: Describe | None = None) -> None:
    """Fail the part's job: its workers died too often while on it (the error names the part
    and, through ``describe``, what it holds)."""
    log.error(
        "job %s part %s: its worker died %s times; the job is given up",
        part.job_id,
        part.index,
        part.workers_lost,
    )
    _settle(
        part.job,
        JobStatus.FAILED,
        error=workers_lost_message(part.workers_lost, _doing(part, describe)),
        phrase="Failed",
    )


def run_warming(
    part_id: int, warm: Callable[[dict[str, Any]], int], describe: Describe | None = None
) -> int:
    """Run a part's cpu step ``warm(payload)`` (work done ahead of its gpu step so the GPU finds
    it ready; the gpu step does what is missing). Not claimed (the gpu step claims), but a
    worker that died in it is counted: the step marks its start and clears the mark at its end,
    so a mark found at the next start means a dead worker. Returns what ``warm`` returns (0 for a
    part done, whose job stopped, or given up)."""
    with transaction.atomic():
        part = JobPart.objects.select_for_update().select_related("job").get(pk=part_id)
        if part.status == JobPart.Status.DONE or part.job.status != JobStatus.RUNNING:
            return 0
        if part.warming_at is not None:
            part.workers_lost += 1
        part.warming_at = timezone.now()
        part.save(update_fields=["workers_lost", "warming_at"])
    try:
        if part.workers_lost >= max_workers_lost():
            give_up(part, describe)
            return 0
        return warm(part.payload)
    finally:
        JobPart.objects.filter(pk=part.pk).update(warming_at=None)


class _PartBeat:
    """What the heartbeat thread stamps: the part, and its job (alive while a part works)."""

    def __init__(self, part: JobPart) -> None:
        self.part = part
        self.pk = f"{part.job_id}-part-{part.index}"

    def beat(self) -> None:
        now = timezone.now()
        JobPart.objects.filter(pk=self.part.pk).update(heartbeat_at=now)
        Job.objects.filter(pk=self.part.job_id, status=JobStatus.RUNNING).update(heartbeat_at=now)


def part_scratch(part: JobPart) -> Path:
    """The part's own scratch folder (beside its job's; the sweeper removes it with the job's)."""
    return scratch_root() / f"job-{part.job_id}-part-{part.index}"


def _release(part: JobPart) -> None:
    """The part is not running any more (it failed or its job stopped): a retry of the job
    runs it again at once."""
    JobPart.objects.filter(pk=part.pk, status=JobPart.Status.RUNNING).update(
        status=JobPart.Status.QUEUED
    )


def _finish_part(part: JobPart, result: dict[str, Any], finish: Finish) -> None:
    """Store the part's result; the last part of the job settles it."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=part.job_id)
        JobPart.objects.filter(pk=part.pk).update(
            status=JobPart.Status.DONE, result=result, heartbeat_at=timezone.now()
        )
        if job.status != JobStatus.RUNNING:
            return
        parts = list(JobPart.objects.filter(job=job).order_by("index"))
        total = sum(p.size for p in parts)
        done = sum(p.size for p in parts if p.status == JobPart.Status.DONE)
        if done < total:
            job.update_status(
                progress=int(100 * done / total), phrase=f"{done} of {total} done by the workers"
            )
            return
        _settle(
            job, JobStatus.SUCCEEDED, phrase="Done", result=finish(job, [p.result for p in parts])
        )


def run_part(
    part_id: int,
    work: PartWork,
    finish: Finish,
    *,
    task: Any = None,
    describe: Describe | None = None,
) -> None:
    """Run ``work(job, payload, scratch)`` for the part, as ``run_job`` runs a job's work."""
    message_id = str(getattr(getattr(task, "request", None), "id", None) or "")
    try:
        part = claim_part(part_id, message_id)
    except RunningElsewhere:
        defer_redelivery(task, f"part {part_id}")
        return
    except PartAbandoned as exc:
        give_up(exc.part, describe)
        return
    if part is None:
        log.info("part %s has nothing to do (done, running elsewhere, or its job stopped)", part_id)
        return
    job = part.job
    try:
        with fresh_scratch(part_scratch(part)) as scratch, _Heartbeat(_PartBeat(part)):
            result = work(job, part.payload, scratch)
    except JobCancelled:
        _release(part)
        return
    except UserFacingError as exc:
        _release(part)
        _settle(job, JobStatus.FAILED, error=str(exc), phrase="Failed")
        return
    except TRANSIENT_ERRORS as exc:
        retries = task.request.retries if task is not None else 0
        if task is None or retries >= task.max_retries:
            log.exception("job %s part %s: giving up", job.pk, part.index)
            _release(part)
            _settle(
                job, JobStatus.FAILED, error=_give_up_message(exc, part.attempts), phrase="Failed"
            )
            return
        JobPart.objects.filter(pk=part.pk).update(
            status=JobPart.Status.QUEUED, published_at=timezone.now()
        )
        raise task.retry(exc=exc, countdown=retry_countdown(retries)) from exc
    except Exception as exc:
        log.exception("job %s part %s failed", job.pk, part.index)
        _release(part)
        _settle(
            job,
            JobStatus.FAILED,
            error=f"Internal error ({type(exc).__name__}); the administrators can see the log.",
            phrase="Failed",
        )
        return
    _finish_part(part, result, finish)


def part_task(*, finish: Finish, describe: Describe | None = None):
    """Turn ``work(job, payload, scratch) -> result`` into the Celery task ``task(part_id)``
    (same module and name, so routing by name applies), with the platform's delivery and retry
    settings; ``finish(job, results)`` makes the job's result from its parts';
    ``describe(payload)`` says what a part holds, for the error of a part given up."""

    def decorate(work: PartWork):
        def task(self, part_id: int) -> None:
            run_part(part_id, work, finish, task=self, describe=describe)

        task.__name__, task.__qualname__ = work.__name__, work.__qualname__
        task.__module__, task.__doc__ = work.__module__, work.__doc__
        return reliable_task(task)

    return decorate


def run_parts_here(job: Job, parts: Sequence[JobPart], work: PartWork, finish: Finish, progress):
    """Run the parts one after the other in this process (a command, the demo): the same work
    and the same settlement, without a queue. ``progress(percent, phrase)`` after each."""
    total = sum(part.size for part in parts) or 1
    done = 0
    for part in parts:
        if part.status != JobPart.Status.DONE:
            try:
                part = claim_part(part.pk, "")
            except PartAbandoned as exc:
                raise UserFacingError(
                    workers_lost_message(exc.part.workers_lost, _doing(exc.part, None))
                ) from None
            if part is None:
                raise JobCancelled()
            with fresh_scratch(part_scratch(part)) as scratch:
                result = work(job, part.payload, scratch)
            JobPart.objects.filter(pk=part.pk).update(status=JobPart.Status.DONE, result=result)
        done += part.size
        progress(int(100 * done / total), f"{done} of {total} done")
    return finish(job, list(JobPart.objects.filter(job=job).values_list("result", flat=True)))
