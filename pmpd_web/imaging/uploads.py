"""Receiving image uploads: a session, its declared files, their resumable chunks, and the
finish that queues the ingest job. Used by the API, the pages and the ``ingest_images`` command.

Chunks are stored through Django's storage API as objects under
``image-uploads/<upload>/<file>/``, named by their offset; a file's ``received_bytes`` says
where the next chunk starts, which is how an interrupted upload resumes. Where the media store
is an S3 bucket, the chunks are written as the parts of one multipart upload instead, which the
last chunk completes (:mod:`.multipart`): the file arrives as one object. The raw files hold
identifying data: they are deleted once the ingest has finished with them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone

from pmpd_web.accounts.models import acting_user
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.cohorts.vocabulary import STUDY_ID_PATTERN
from pmpd_web.jobs.dispatch import start_on_commit
from pmpd_web.jobs.models import Job, job_stopped
from pmpd_web.jobs.runner import UserFacingError

from . import multipart
from .models import ImageUpload, UploadFile

READ_BLOCK = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ChunkConflict(UserFacingError):
    """A chunk that does not start where the file's received bytes end."""

    def __init__(self, message: str, *, received_bytes: int) -> None:
        super().__init__(message)
        self.received_bytes = received_bytes


class TooLarge(UserFacingError):
    """Over a size limit of the settings."""


@dataclass(frozen=True)
class DeclaredFile:
    name: str
    size: int
    sha256: str = ""
    study_id: str = ""


def clean_name(name: str) -> str:
    """An uploaded name as a label: forward slashes, no control characters, no empty parts.
    It is shown to the coordinator and read for a study ID; it never becomes a path."""
    text = _CONTROL.sub("", str(name)).replace("\\", "/")
    return "/".join(part for part in text.split("/") if part not in ("", "."))[-512:]


def create_upload(
    *,
    cohort: Cohort,
    user: Any,
    patient: Patient | None = None,
    label_pancreas: int = 1,
    label_tumour: int = 2,
    confirm_shared_source: bool = False,
) -> ImageUpload:
    """A new upload session into ``cohort`` (for one patient, or in bulk when ``patient`` is
    None), with the upload's label convention; ``confirm_shared_source`` lets a scan already
    stored for another patient of the cohort in (README "Images")."""
    if patient is not None and patient.cohort_id != cohort.pk:
        raise UserFacingError("This patient is not in this cohort.")
    for name, value in (("pancreas", label_pancreas), ("tumour", label_tumour)):
        if not isinstance(value, int) or not 1 <= value <= 65535:
            raise UserFacingError(f"The {name} label must be a whole number from 1 to 65535.")
    if label_pancreas == label_tumour:
        raise UserFacingError("The pancreas and tumour labels must differ.")
    return ImageUpload.objects.create(
        cohort=cohort,
        patient=patient,
        uploaded_by=acting_user(user),
        label_pancreas=label_pancreas,
        label_tumour=label_tumour,
        confirm_shared_source=bool(confirm_shared_source),
    )


def _require_receiving(upload: ImageUpload) -> None:
    if upload.status != ImageUpload.Status.RECEIVING:
        raise UserFacingError(
            f"Upload #{upload.pk} is {upload.get_status_display().lower()}: it takes no more files."
        )


def declare_files(upload: ImageUpload, files: Iterable[DeclaredFile]) -> list[UploadFile]:
    """Declare files before sending them. Declaring a file again (same name, size and study
    ID) returns the one already declared, with its received bytes: that is how a client that
    lost its state (a reloaded page) resumes. Limits of the settings are enforced here."""
    files = list(files)
    with transaction.atomic():
        upload = ImageUpload.objects.select_for_update().get(pk=upload.pk)
        _require_receiving(upload)
        existing = {(f.client_name, f.size_bytes, f.study_id): f for f in upload.files.all()}
        total = sum(f.size_bytes for f in existing.values())
        count = len(existing)
        patient_ids = None
        result, new = [], []
        for declared in files:
            name = clean_name(declared.name)
            if not name:
                raise UserFacingError("Every file needs a name.")
            size = declared.size
            if not isinstance(size, int) or size < 0:
                raise UserFacingError(f"{name}: the size must be a whole number of bytes.")
            if size > settings.PMPD_UPLOAD_MAX_FILE_BYTES:
                raise TooLarge(
                    f"{name}: {size} bytes is over the limit of "
                    f"{settings.PMPD_UPLOAD_MAX_FILE_BYTES} bytes per file."
                )
            sha256 = (declared.sha256 or "").lower()
            if sha256 and not _HEX64.match(sha256):
                raise UserFacingError(f"{name}: sha256 must be 64 hexadecimal characters.")
            study_id = (declared.study_id or "").strip()
            if upload.patient_id is not None:
                if study_id and study_id != upload.patient.study_id:
                    raise UserFacingError(
                        f"{name}: this upload is for patient {upload.patient.study_id}, "
                        f"not {study_id}."
                    )
                study_id = ""
            elif study_id:
                if not re.match(STUDY_ID_PATTERN, study_id):
                    raise UserFacingError(f"{name}: {study_id!r} is not a study ID.")
                if patient_ids is None:
                    patient_ids = set(
                        Patient.objects.filter(cohort_id=upload.cohort_id).values_list(
                            "study_id", flat=True
                        )
                    )
                if study_id not in patient_ids:
                    raise UserFacingError(
                        f"{name}: study ID {study_id!r} is not a patient of this cohort "
                        "(import the clinical table first)."
                    )
            key = (name, size, study_id)
            if key in existing:
                result.append(existing[key])
                continue
            total += size
            count += 1
            if total > settings.PMPD_UPLOAD_MAX_BYTES:
                raise TooLarge(
                    f"The upload would hold {total} bytes, over the limit of "
                    f"{settings.PMPD_UPLOAD_MAX_BYTES} bytes per upload."
                )
            if count > settings.PMPD_UPLOAD_MAX_FILES:
                raise TooLarge(
                    f"The upload would hold {count} files, over the limit of "
                    f"{settings.PMPD_UPLOAD_MAX_FILES} per upload."
                )
            upload_file = UploadFile(
                upload=upload, client_name=name, size_bytes=size, sha256=sha256, study_id=study_id
            )
            existing[key] = upload_file
            new.append(upload_file)
            result.append(upload_file)
        UploadFile.objects.bulk_create(new, batch_size=1000)
        for upload_file in new:
            upload_file.stored_name = chunk_prefix(upload_file)
        UploadFile.objects.bulk_update(new, ["stored_name"], batch_size=1000)
    return result


def chunk_prefix(upload_file: UploadFile) -> str:
    return f"image-uploads/{upload_file.upload_id}/{upload_file.pk}/"


def _read_exactly(stream: BinaryIO, length: int) -> bytes:
    parts, remaining = [], length
    while remaining > 0:
        block = stream.read(min(READ_BLOCK, remaining))
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


def receive_chunk(
    upload_file: UploadFile, *, offset: int, length: int, stream: BinaryIO
) -> UploadFile:
    """Store ``length`` bytes of ``stream`` at ``offset`` of the file. The offset must be the
    file's received bytes (ChunkConflict tells the client where to resume otherwise)."""
    if length <= 0:
        raise UserFacingError("A chunk needs a body (Content-Length).")
    if length > settings.PMPD_UPLOAD_CHUNK_MAX_BYTES:
        raise TooLarge(
            f"A chunk of {length} bytes is over the limit of "
            f"{settings.PMPD_UPLOAD_CHUNK_MAX_BYTES} bytes: send smaller chunks."
        )
    upload_file = UploadFile.objects.select_related("upload").get(pk=upload_file.pk)
    _check_chunk(upload_file, offset=offset, length=length)
    # The body is read before the row is locked: a slow client holds no lock.
    data = _read_exactly(stream, length)
    if len(data) != length:
        raise UserFacingError(
            f"{upload_file.client_name}: the chunk arrived incomplete ({len(data)} of {length} "
            "bytes); send it again."
        )
    with transaction.atomic():
        locked = (
            UploadFile.objects.select_for_update().select_related("upload").get(pk=upload_file.pk)
        )
        _check_chunk(locked, offset=offset, length=length)
        bucket = multipart.bucket_storage()
        if bucket is None:
            name = default_storage.save(
                f"{chunk_prefix(locked)}{offset:016d}.part", ContentFile(data)
            )
            locked.chunks = [*locked.chunks, [offset, length, name]]
        else:
            _receive_part(bucket, locked, offset=offset, data=data)
        locked.received_bytes = offset + length
        locked.save(update_fields=["chunks", "received_bytes", "multipart"])
        # The session's last activity, which `expire_uploads` reads.
        ImageUpload.objects.filter(pk=locked.upload_id).update(updated_at=timezone.now())
    return locked


def _receive_part(bucket: Any, upload_file: UploadFile, *, offset: int, data: bytes) -> None:
    """A chunk into the file's multipart upload (begun by its first chunk). Chunks that
    together hold less than S3's smallest part wait in ``chunks`` as objects of their own; the
    last chunk completes the upload, and ``chunks`` then names the one object. A file in one
    chunk (a DICOM instance of a series) is one plain object, written by one request."""
    last = offset + len(data) == upload_file.size_bytes
    if offset == 0 and last:
        name = bucket.save(f"{chunk_prefix(upload_file)}{0:016d}.part", ContentFile(data))
        upload_file.chunks = [[0, len(data), name]]
        return
    state = upload_file.multipart or multipart.start(bucket, f"{chunk_prefix(upload_file)}received")
    waiting = list(upload_file.chunks)
    if sum(length for _, length, _ in waiting) + len(data) < multipart.PART_MIN_BYTES and not last:
        name = bucket.save(f"{chunk_prefix(upload_file)}{offset:016d}.part", ContentFile(data))
        upload_file.chunks = [*waiting, [offset, len(data), name]]
        upload_file.multipart = state
        return
    body = [_read_stored(name) for _, _, name in waiting]
    state = multipart.add_part(bucket, state, b"".join([*body, data]))
    # Deleted once the row no longer names them (a rolled-back request sends them again).
    transaction.on_commit(lambda: [bucket.delete(name) for _, _, name in waiting])
    if last:
        upload_file.chunks = [[0, upload_file.size_bytes, multipart.complete(bucket, state)]]
        upload_file.multipart = {}
    else:
        upload_file.chunks = []
        upload_file.multipart = state


def _read_stored(name: str) -> bytes:
    with default_storage.open(name, "rb") as handle:
        return handle.read()


def _check_chunk(upload_file: UploadFile, *, offset: int, length: int) -> None:
    _require_receiving(upload_file.upload)
    if offset != upload_file.received_bytes:
        raise ChunkConflict(
            f"{upload_file.client_name}: this chunk starts at byte {offset} but "
            f"{upload_file.received_bytes} bytes have been received; resume from there.",
            received_bytes=upload_file.received_bytes,
        )
    if offset + length > upload_file.size_bytes:
        raise UserFacingError(
            f"{upload_file.client_name}: the chunk ends at byte {offset + length}, beyond the "
            f"declared size of {upload_file.size_bytes} bytes."
        )


def store_local_file(upload_file: UploadFile, path: Path, *, save: bool = True) -> None:
    """Store a file from the server's disk as the whole content of ``upload_file`` (the
    ``ingest_images`` command and the demo); ``save=False`` leaves saving the row to the
    caller (a bulk update)."""
    with path.open("rb") as handle:
        name = default_storage.save(f"{chunk_prefix(upload_file)}{0:016d}.part", File(handle))
    upload_file.chunks = [[0, upload_file.size_bytes, name]]
    upload_file.received_bytes = upload_file.size_bytes
    if save:
        upload_file.save(update_fields=["chunks", "received_bytes"])


def upload_local_path(
    *,
    cohort: Cohort,
    user: Any,
    path: Path,
    patient: Patient | None = None,
    label_pancreas: int = 1,
    label_tumour: int = 2,
    confirm_shared_source: bool = False,
    include: Callable[[Path], bool] | None = None,
    on_file: Callable[[int, int], None] | None = None,
) -> ImageUpload:
    """An upload of a folder (every file under it, named by its path relative to the folder,
    so its sub-folders can name study IDs; ``include`` may select by that relative path) or of
    one file (a ZIP...) from the server's disk. ``on_file(n_done, n_total)`` reports progress.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not p.is_symlink()
            and (include is None or include(p.relative_to(path)))
        )
        names = [str(p.relative_to(path)) for p in files]
    elif path.is_file():
        files, names = [path], [path.name]
    else:
        raise UserFacingError(f"{path} is neither a folder nor a file.")
    if not files:
        raise UserFacingError(f"{path} holds no file.")
    upload = create_upload(
        cohort=cohort,
        user=user,
        patient=patient,
        label_pancreas=label_pancreas,
        label_tumour=label_tumour,
        confirm_shared_source=confirm_shared_source,
    )
    declared = declare_files(
        upload,
        [DeclaredFile(name=n, size=p.stat().st_size) for n, p in zip(names, files, strict=True)],
    )
    for index, (upload_file, file_path) in enumerate(zip(declared, files, strict=True), start=1):
        store_local_file(upload_file, file_path, save=False)
        if on_file is not None:
            on_file(index, len(files))
    UploadFile.objects.bulk_update(declared, ["chunks", "received_bytes"], batch_size=500)
    return upload


def run_now(
    upload: ImageUpload, user: Any, progress: Callable[[int, str], None] | None = None
) -> Job:
    """Finish the upload and run its ingest job in this process (commands, the demo)."""
    from pmpd_web.jobs.runner import run_job

    from .ingest import ingest_upload

    job = finish_upload(upload, user, queue=False)

    def work(job, job_progress):
        def both(percent: int, phrase: str) -> None:
            job_progress(percent, phrase)
            if progress is not None:
                progress(percent, phrase)

        return ingest_upload(upload, both)

    run_job(job.pk, work)
    job.refresh_from_db()
    return job


def finish_upload(upload: ImageUpload, user: Any, *, queue: bool = True) -> Job:
    """All files received: queue the ingest job on the cpu queue (``queue=False`` only creates
    the job, for a caller that runs it itself)."""
    from .tasks import ingest_upload_task

    with transaction.atomic():
        upload = ImageUpload.objects.select_for_update().get(pk=upload.pk)
        _require_receiving(upload)
        files = list(upload.files.all())
        if not files:
            raise UserFacingError("This upload has no files.")
        incomplete = [f for f in files if f.received_bytes != f.size_bytes]
        if incomplete:
            names = ", ".join(f.client_name for f in incomplete[:5])
            raise UserFacingError(
                f"{len(incomplete)} file(s) not completely received yet: {names}"
                f"{'...' if len(incomplete) > 5 else ''}."
            )
        job = Job.objects.create(
            kind=Job.Kind.IMAGE_INGEST,
            cohort_id=upload.cohort_id,
            created_by=acting_user(user),
            phrase="Waiting for a worker",
            task=ingest_upload_task.name,
            parameters={"upload": upload.pk},
        )
        ImageUpload.objects.filter(pk=upload.pk).update(job=job, status=ImageUpload.Status.QUEUED)
        upload.files.update(status=UploadFile.Status.QUEUED, error="")
        if queue:
            start_on_commit(job)
    return job


@receiver(job_stopped)
def _ingest_stopped(sender, *, job, status, **kwargs) -> None:
    """An ingest that gave up or was cancelled does not stay "queued" or "processing", and its
    received files (they may identify the patient) are deleted: the files are uploaded again."""
    if job.kind != job.Kind.IMAGE_INGEST:
        return
    reason = "Cancelled" if status == "cancelled" else (job.error or "Failed")
    unfinished = [ImageUpload.Status.QUEUED, ImageUpload.Status.PROCESSING]
    for upload in ImageUpload.objects.filter(job=job, status__in=unfinished):
        ImageUpload.objects.filter(pk=upload.pk).update(
            status=ImageUpload.Status.FAILED, error=reason
        )
        upload.files.filter(
            status__in=[UploadFile.Status.QUEUED, UploadFile.Status.PROCESSING]
        ).update(status=UploadFile.Status.FAILED, error=reason[:500])
        purge_received(upload)


def purge_received(upload: ImageUpload) -> None:
    """Delete the raw chunks of an upload (they may hold identifying data), and abort the
    multipart uploads of files still being received (S3 deletes their parts)."""
    bucket = multipart.bucket_storage()
    for upload_file in upload.files.all():
        for _, _, name in upload_file.chunks:
            default_storage.delete(name)
        if upload_file.multipart and bucket is not None:
            multipart.abort(bucket, upload_file.multipart)
    upload.files.update(chunks=[], multipart={})


def expire_stale_uploads(*, older_than: timedelta, dry_run: bool = False) -> list[ImageUpload]:
    """Uploads still receiving files with no activity for ``older_than``: their raw chunks are
    deleted (they may hold identifying data and fill the disk) and each is marked failed with
    the reason, unless ``dry_run``. With an S3 media store, multipart uploads begun that long
    ago that no receiving file writes to any more are aborted too. Returns the uploads
    concerned."""
    cutoff = timezone.now() - older_than
    stale = list(
        ImageUpload.objects.filter(status=ImageUpload.Status.RECEIVING, updated_at__lt=cutoff)
        .select_related("cohort", "patient")
        .order_by("pk")
    )
    if dry_run:
        return stale
    hours = older_than.total_seconds() / 3600
    for upload in stale:
        with transaction.atomic():
            locked = ImageUpload.objects.select_for_update().get(pk=upload.pk)
            if locked.status != ImageUpload.Status.RECEIVING or locked.updated_at >= cutoff:
                continue  # a chunk arrived meanwhile
            purge_received(locked)
            locked.files.filter(status=UploadFile.Status.RECEIVING).update(
                status=UploadFile.Status.FAILED, error="expired before it was complete"
            )
            locked.status = ImageUpload.Status.FAILED
            locked.error = (
                f"Expired: no file arrived for {hours:g} hours, so the partial files were "
                "deleted. Start a new upload."
            )
            locked.save(update_fields=["status", "error", "updated_at"])
    bucket = multipart.bucket_storage()
    if bucket is not None:
        receiving = UploadFile.objects.filter(upload__status=ImageUpload.Status.RECEIVING).exclude(
            multipart={}
        )
        multipart.abort_abandoned(
            bucket,
            prefix="image-uploads/",
            started_before=cutoff,
            keep={f.multipart["upload_id"] for f in receiving.only("multipart")},
        )
    return stale
