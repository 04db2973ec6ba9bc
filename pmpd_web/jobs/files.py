"""What a job writes, so that a killed worker leaves nothing behind.

Two places: the job's scratch folder (``scratch_folder``: temporary files, removed when the
attempt ends and again by the next attempt or the sweeper when a killed worker could not), and
storage names written before the transaction that references them commits (``save_recorded``
before that commit, ``forget_written`` inside it). A retry, a redelivered message and the
sweeper delete what an attempt recorded and never committed (``discard_written``).
``unreferenced_files`` lists what no row references at all (``manage.py orphan_files``).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import models, transaction

log = logging.getLogger(__name__)


def scratch_root() -> Path:
    return Path(settings.PMPD_JOB_SCRATCH_DIR)


def scratch_folder(job_id: int) -> Path:
    """The job's own scratch folder (it exists while an attempt runs)."""
    return scratch_root() / f"job-{job_id}"


_current_scratch: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "job_scratch", default=None
)


def current_scratch() -> Path | None:
    """The scratch folder of the job (or job part) running here, None outside one: where the
    local copies of stored files go (with shared storage, the only local files a worker
    writes)."""
    return _current_scratch.get()


@contextlib.contextmanager
def fresh_scratch(folder: Path) -> Iterator[Path]:
    """``folder`` emptied and made the current scratch folder; removed on exit."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    token = _current_scratch.set(folder)
    try:
        yield folder
    finally:
        _current_scratch.reset(token)
        shutil.rmtree(folder, ignore_errors=True)


def job_scratch(job) -> contextlib.AbstractContextManager[Path]:
    """A fresh scratch folder for this attempt: what a killed attempt left is removed first."""
    return fresh_scratch(scratch_folder(job.pk))


def record_written(job_id: int | None, names: Iterable[str]) -> None:
    """Note storage names the job wrote that no committed row references yet."""
    names = list(names)
    if job_id is None or not names:
        return
    from .models import Job

    with transaction.atomic():
        job = Job.objects.select_for_update().only("written_files").get(pk=job_id)
        Job.objects.filter(pk=job_id).update(written_files=[*job.written_files, *names])


def save_recorded(job_id: int | None, name: str, content) -> str:
    """Save ``content`` to storage under ``name`` for the job, recorded first: a worker killed
    between the write and the record would leave a file nobody knows of (and the next attempt,
    writing the same name, would get another one)."""
    record_written(job_id, [name])
    saved = default_storage.save(name, content)
    if saved != name:
        record_written(job_id, [saved])
    return saved


def save_all_recorded(
    job_id: int | None,
    names: Sequence[str],
    contents: Iterable,
    saved_names: list[str],
    *,
    in_flight: int = 0,
) -> None:
    """``save_recorded`` for many files: every name recorded first in one update (one record per
    file costs a locked read, a rewrite of the growing list and a commit each), then each
    content saved; a name the storage changed is recorded at once. ``contents`` may be a
    generator (one file in memory at a time). Each saved name is appended to ``saved_names``
    as soon as it is written, so a caller that fails half-way knows what to delete.

    With ``in_flight`` > 0 the files are written by one writer thread while the caller's
    generator produces the next ones (at most ``in_flight`` produced and not yet written): the
    writes (system calls, or uploads to an object store) release the GIL, so producing and
    writing overlap. Names are still appended in order, and a failure on either side waits
    for the writes already started before it is raised.
    """
    record_written(job_id, names)
    if in_flight <= 0:
        for name, content in zip(names, contents, strict=True):
            _saved(job_id, name, default_storage.save(name, content), saved_names)
        return
    pending: collections.deque[tuple[str, Future]] = collections.deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage-writer") as writer:
        try:
            for name, content in zip(names, contents, strict=True):
                pending.append((name, writer.submit(default_storage.save, name, content)))
                if len(pending) > in_flight:
                    done, future = pending.popleft()
                    _saved(job_id, done, future.result(), saved_names)
            while pending:
                done, future = pending.popleft()
                _saved(job_id, done, future.result(), saved_names)
        except BaseException:
            # The writes already handed to the thread finish (or fail) before the caller
            # hears of the failure: every file on disk is then in ``saved_names``.
            for done, future in pending:
                with contextlib.suppress(Exception):  # the first failure is the one raised
                    _saved(job_id, done, future.result(), saved_names)
            raise


def _saved(job_id: int | None, name: str, saved: str, saved_names: list[str]) -> None:
    if saved != name:
        record_written(job_id, [saved])
    saved_names.append(saved)


def forget_written(job_id: int | None) -> None:
    """Call inside the transaction that makes rows reference the written files."""
    if job_id is None:
        return
    from .models import Job

    Job.objects.filter(pk=job_id).update(written_files=[])


def discard_written(job) -> int:
    """Delete what an attempt of ``job`` recorded and did not commit; returns how many."""
    from .models import Job

    with transaction.atomic():
        locked = Job.objects.select_for_update().only("written_files").get(pk=job.pk)
        names = list(locked.written_files)
        if not names:
            return 0
        referenced = referenced_names()
        for name in names:
            if name not in referenced:
                default_storage.delete(name)
        Job.objects.filter(pk=job.pk).update(written_files=[])
    log.info("job %s: removed %d file(s) an earlier attempt left", job.pk, len(names))
    return len(names)


# Storage names kept in JSON or text fields rather than FileFields: (app label, model, field).
NAME_FIELDS = (
    ("imaging", "UploadFile", "stored_name"),
    ("imaging", "UploadFile", "chunks"),
    ("inference", "ModelVersion", "files"),
    ("inference", "PatientPrediction", "gradcam_files"),
)


def _names_in(value) -> Iterator[str]:
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _names_in(item)


def referenced_names() -> set[str]:
    """Every storage name a row references: all FileFields, and the fields in NAME_FIELDS."""
    names: set[str] = set()
    for model in apps.get_models():
        for field in model._meta.get_fields():
            if isinstance(field, models.FileField):
                names.update(
                    model._default_manager.exclude(**{field.name: ""})
                    .values_list(field.name, flat=True)
                    .iterator()
                )
    for app_label, model_name, field_name in NAME_FIELDS:
        model = apps.get_model(app_label, model_name)
        for value in model._default_manager.values_list(field_name, flat=True).iterator():
            names.update(_names_in(value))
    return names


def stored_names(root: Path) -> Iterator[str]:
    """Storage names of the files under the media folder, with forward slashes."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path.relative_to(root).as_posix()


def unreferenced_files(*, older_than: timedelta) -> list[str]:
    """Files under MEDIA_ROOT that no database row references, last written more than
    ``older_than`` ago (a file an upload or a job is writing right now is not yet referenced)
    and not recorded by an unfinished job (its commit will reference it)."""
    from .models import FINISHED, Job

    referenced = referenced_names()
    for written in Job.objects.exclude(status__in=FINISHED).values_list("written_files", flat=True):
        referenced.update(_names_in(written))
    root = Path(settings.MEDIA_ROOT)
    cutoff = time.time() - older_than.total_seconds()
    return [
        name
        for name in stored_names(root)
        if name not in referenced and (root / name).stat().st_mtime < cutoff
    ]
