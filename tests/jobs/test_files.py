"""What jobs write (issue 9, item 9): the record of written files that a retry and the sweeper
remove, the jobs' scratch folders, and ``manage.py orphan_files``."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from engine_fixtures import make_prediction, make_ready_version
from factories import make_patient
from tablemaker import rows, to_csv

from pmpd_web.cohorts.importer import upload_table
from pmpd_web.jobs import dispatch
from pmpd_web.jobs.files import (
    forget_written,
    record_written,
    scratch_folder,
    unreferenced_files,
)
from pmpd_web.jobs.models import Job, JobStatus
from pmpd_web.jobs.tasks import job_task

pytestmark = pytest.mark.django_db


def orphan_command(*args: str) -> tuple[list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("orphan_files", "--older-than-minutes", "0", *args, stdout=out, stderr=err)
    return out.getvalue().split(), err.getvalue()


def test_orphan_files_lists_only_what_no_row_references(cohort, members):
    upload_table(cohort=cohort, user=members["coordinator"], data=to_csv(rows(2)), filename="t.csv")
    patient = make_patient(cohort, "P-1")
    make_prediction(patient, make_ready_version(cohort, name="v1"))
    orphan = default_storage.save("series/cohort-1/P-1/left-by-a-kill.dcm", ContentFile(b"x"))
    listed, summary = orphan_command()
    assert listed == [orphan] and "Found 1 file(s)" in summary
    assert default_storage.exists(orphan)
    removed, summary = orphan_command("--delete")
    assert removed == [orphan] and "Removed 1" in summary
    assert not default_storage.exists(orphan)
    assert orphan_command() == ([], "Found 0 file(s) that no row references.\n")


def test_files_being_written_are_not_orphans(cohort, settings):
    fresh = default_storage.save("series/fresh.dcm", ContentFile(b"x"))
    assert unreferenced_files(older_than=timedelta(minutes=5)) == []
    old = time.time() - 3600
    os.utime(settings.MEDIA_ROOT / fresh, (old, old))
    job = Job.objects.create(kind=Job.Kind.IMAGE_INGEST, cohort=cohort, status=JobStatus.RUNNING)
    record_written(job.pk, [fresh])
    assert unreferenced_files(older_than=timedelta(minutes=5)) == []  # its commit will
    job.update_status(JobStatus.FAILED)
    assert unreferenced_files(older_than=timedelta(minutes=5)) == [fresh]


COMMITTED = []


@job_task
def killed_then_fine(job, progress):
    written = default_storage.save(f"series/attempt-{job.attempts}.dcm", ContentFile(b"x"))
    record_written(job.pk, [written])
    if job.attempts == 1:
        assert scratch_folder(job.pk).is_dir()
        (scratch_folder(job.pk) / "volume.nii.gz").write_bytes(b"scratch")
        raise KeyError("the attempt dies here")
    forget_written(job.pk)  # the commit references it
    COMMITTED.append(written)
    return {}


def test_a_retry_removes_what_the_earlier_attempt_wrote_and_did_not_commit(cohort):
    job = Job.objects.create(kind=Job.Kind.ANALYSIS, cohort=cohort, task=killed_then_fine.name)
    killed_then_fine.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == "failed" and job.written_files == []
    assert not default_storage.exists("series/attempt-1.dcm")
    assert not scratch_folder(job.pk).exists()
    assert job.can_retry
    dispatch.retry(job)
    job.refresh_from_db()
    assert job.status == "succeeded" and default_storage.exists(COMMITTED[-1])


def test_the_sweeper_removes_what_dead_attempts_left(cohort):
    dead = Job.objects.create(kind=Job.Kind.IMAGE_INGEST, cohort=cohort)
    written = default_storage.save("series/dead.dcm", ContentFile(b"x"))
    record_written(dead.pk, [written])
    dead.update_status(JobStatus.CANCELLED)
    folder = scratch_folder(dead.pk)
    folder.mkdir(parents=True)
    old = time.time() - 3600
    os.utime(folder, (old, old))
    report = dispatch.sweep()
    assert report.files_removed == 1 and not default_storage.exists(written)
    assert report.scratch_removed == [folder.name] and not folder.exists()


@pytest.mark.parametrize("in_flight", [0, 1, 3])
def test_save_all_recorded_records_first_and_reports_each_file_as_it_is_written(cohort, in_flight):
    """Issue 10 (ingest speed): a series' files are recorded on the job in one update before
    any is written; when producing a file fails half-way, the files already written are known
    to the caller (the ingest deletes them) and recorded on the job (a retry deletes them).
    The same with a writer thread writing while the next files are produced (``in_flight``):
    the files handed to it before the failure are written and reported, in order."""
    from pmpd_web.jobs.files import save_all_recorded

    job = Job.objects.create(kind=Job.Kind.IMAGE_INGEST, cohort=cohort, status=JobStatus.RUNNING)
    names = [f"series/half/{i}.dcm" for i in range(4)]

    def contents():
        for i in range(2):
            yield ContentFile(b"slice %d" % i)
        raise RuntimeError("encoding failed")

    saved: list[str] = []
    with pytest.raises(RuntimeError):
        save_all_recorded(job.pk, names, contents(), saved, in_flight=in_flight)
    assert saved == names[:2] and all(default_storage.exists(n) for n in saved)
    assert not default_storage.exists(names[2])
    job.refresh_from_db()
    assert job.written_files == names


def test_save_all_recorded_with_a_writer_thread_keeps_order_and_reports_a_failed_write(
    cohort, monkeypatch
):
    """The writer thread's writes: every name in order when all succeed; a write that fails
    raises in the caller after the writes started before it finished, and the files written
    are the ones reported."""
    from pmpd_web.jobs import files

    job = Job.objects.create(kind=Job.Kind.IMAGE_INGEST, cohort=cohort, status=JobStatus.RUNNING)
    names = [f"series/threaded/{i}.dcm" for i in range(9)]
    saved: list[str] = []
    files.save_all_recorded(
        job.pk, names, (ContentFile(b"%d" % i) for i in range(9)), saved, in_flight=3
    )
    assert saved == names
    assert [default_storage.open(n).read() for n in names] == [b"%d" % i for i in range(9)]

    storage = default_storage._wrapped  # the file-system storage behind the lazy object
    real_save = storage.save

    def failing_save(name, content, *args, **kwargs):
        if name.endswith("/5.dcm"):
            raise OSError("disk full")
        return real_save(name, content, *args, **kwargs)

    monkeypatch.setattr(storage, "save", failing_save)
    names = [f"series/failing/{i}.dcm" for i in range(9)]
    saved = []
    with pytest.raises(OSError, match="disk full"):
        files.save_all_recorded(
            job.pk, names, (ContentFile(b"%d" % i) for i in range(9)), saved, in_flight=3
        )
    assert names[5] not in saved and names[:5] == saved[:5]
    assert all(default_storage.exists(n) for n in saved)
    assert not any(default_storage.exists(n) for n in names if n not in saved)
