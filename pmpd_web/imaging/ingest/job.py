"""The ingest job: intake, then each patient planned and staged, then one commit; on any problem
the upload fails with every reason and nothing changes."""

from __future__ import annotations

import contextlib
import gc
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pmpd_web.cohorts.models import Patient
from pmpd_web.jobs.files import scratch_folder
from pmpd_web.jobs.runner import TRANSIENT_ERRORS, ProgressCallback, UserFacingError

from ..intake import (
    Failures,
    IngestOptions,
    Item,
    assign_study_ids,
    link_metaimage_data,
    materialise,
    skip_non_images,
    use_dicomdir,
)
from ..models import ImageUpload
from ..models import UploadFile as UploadFileModel
from ..sniff import Kind
from .commit import commit_upload, mark_files
from .outputs import PatientFailed, PatientPlan
from .planning import prepare_patient, shared_source_message
from .staging import Staging

# Worker threads beside the job's own: compression, hashing and file writes release the GIL.
INGEST_THREADS = 2


def _fail(upload: ImageUpload, items: list[Item], failures: Failures) -> UserFacingError:
    for upload_file in upload.files.all():
        if upload_file.pk in failures.by_file and not any(
            i.upload_file.pk == upload_file.pk for i in items
        ):
            items.append(Item(upload_file, upload_file.client_name, (), Path(), Kind.UNKNOWN))
    mark_files(items, failures)
    messages = failures.messages()
    shown = "\n".join(messages[:10])
    more = f"\n... and {len(messages) - 10} more" if len(messages) > 10 else ""
    message = f"{len(failures.by_file)} file(s) failed; nothing was changed.\n{shown}{more}"
    ImageUpload.objects.filter(pk=upload.pk).update(
        status=ImageUpload.Status.FAILED, error=message[:8000]
    )
    return UserFacingError(message)


def _same_scan_for_two_patients(plans: list[PatientPlan], failures: Failures) -> None:
    """The shared-source check of ``planning`` between the patients of one bulk upload."""
    first: dict[str, str] = {}
    for plan in plans:
        for output in plan.cts:
            for key in (output.source_patient_key, output.source_study_key):
                if not key:
                    continue
                other = first.setdefault(key, plan.patient.study_id)
                if other != plan.patient.study_id:
                    failures.add(output.items[0].upload_file, shared_source_message(output, other))
                    break


@contextlib.contextmanager
def _worker_heap_frozen() -> Iterator[None]:
    """The objects that exist before the ingest left out of the garbage collector's walks
    until it ends. An ingest creates some 10^5 containers (datasets, elements, DICOM JSON),
    which set off collections of the oldest generation; each would walk the worker's whole
    heap too (Django, pydicom's and highdicom's tables of the standard: half a million
    objects, a few tenths of a second), though none of it becomes garbage here. A heap that
    something else froze is left to it."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def ingest_upload(upload: ImageUpload, progress: ProgressCallback) -> dict[str, Any]:
    """Ingest every file of ``upload`` (see the module docstring); returns the summary.

    Raises UserFacingError, after marking the upload and its files, when anything fails.
    """
    with _worker_heap_frozen():
        return _ingest(upload, progress)


def _ingest(upload: ImageUpload, progress: ProgressCallback) -> dict[str, Any]:
    options = IngestOptions.from_settings()
    upload = ImageUpload.objects.select_related("cohort", "patient", "uploaded_by").get(
        pk=upload.pk
    )
    ImageUpload.objects.filter(pk=upload.pk).update(status=ImageUpload.Status.PROCESSING, error="")
    upload.files.update(status=UploadFileModel.Status.PROCESSING, error="")
    staging = Staging(upload.job_id)
    failures = Failures()
    items: list[Item] = []
    transient = False
    try:
        with (
            tempfile.TemporaryDirectory(
                dir=_scratch_parent(upload, options), prefix="ingest-"
            ) as folder,
            ThreadPoolExecutor(max_workers=INGEST_THREADS) as pool,
        ):
            scratch = Path(folder)
            progress(2, "Reading the uploaded files")
            items = materialise(upload, scratch, options, failures)
            link_metaimage_data(items, scratch, failures)
            use_dicomdir(items)
            skip_non_images(items)
            assign_study_ids(upload, items, failures)
            if failures:
                raise _fail(upload, items, failures)
            by_patient: dict[str, list[Item]] = defaultdict(list)
            for item in items:
                if not item.skipped:
                    by_patient[item.study_id].append(item)
            patients = {
                p.study_id: p
                for p in Patient.objects.filter(cohort_id=upload.cohort_id, study_id__in=by_patient)
            }
            plans: list[PatientPlan] = []
            for index, study_id in enumerate(sorted(by_patient), start=1):
                progress(
                    5 + int(85 * (index - 1) / len(by_patient)),
                    f"Patient {study_id} ({index} of {len(by_patient)}): checking, de-identifying, "
                    "storing",
                )
                try:
                    plans.append(
                        prepare_patient(
                            patients[study_id],
                            by_patient[study_id],
                            upload=upload,
                            options=options,
                            staging=staging,
                            pool=pool,
                            scratch=scratch,
                        )
                    )
                except PatientFailed as exc:
                    for item, message in exc.problems:
                        failures.add(item.upload_file, message)
            if not upload.confirm_shared_source:
                _same_scan_for_two_patients(plans, failures)
            if failures:
                raise _fail(upload, items, failures)
            progress(92, "Saving the series in one transaction")
            summary = commit_upload(upload, plans, items, staging)
    except UserFacingError:
        staging.discard()
        raise
    except TRANSIENT_ERRORS:
        staging.discard()
        transient = True
        ImageUpload.objects.filter(pk=upload.pk).update(status=ImageUpload.Status.QUEUED)
        upload.files.update(status=UploadFileModel.Status.QUEUED)
        raise
    except Exception:
        staging.discard()
        ImageUpload.objects.filter(pk=upload.pk).update(
            status=ImageUpload.Status.FAILED,
            error="Internal error; the administrators can see the log. Nothing was changed.",
        )
        upload.files.update(status=UploadFileModel.Status.FAILED, error="Internal error")
        raise
    finally:
        if not transient:
            from ..uploads import purge_received

            purge_received(upload)
    return summary


def _scratch_parent(upload: ImageUpload, options: IngestOptions) -> str | None:
    """The job's scratch folder (removed by the next attempt or the sweeper when the worker is
    killed), else the configured work folder."""
    if upload.job_id is not None and scratch_folder(upload.job_id).is_dir():
        return str(scratch_folder(upload.job_id))
    return options.work_dir
