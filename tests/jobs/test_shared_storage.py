"""The media store as an S3-compatible bucket (issue 14, item 5), against a real S3 server:
SeaweedFS started by the test on free ports (skipped, with the reason, when it cannot start).

An upload's chunks are written as the parts of one S3 multipart upload (small chunks gathered
to S3's 5 MiB smallest part), completed by the last chunk; an abandoned upload, a cancelled
ingest and a multipart upload no row refers to leave no object and no pending upload.

With the bucket as Django's default storage, a cohort is scored through it: the canonical
volumes are read from the bucket, the preprocessing cache, Grad-CAM overlays and predictions
written to it, nothing written under MEDIA_ROOT, and the local copies the engine needs exist
only inside the job's scratch folder while it runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from engine_fixtures import add_phantom_patient, make_random_version, phantom
from seaweed import SeaweedUnavailable, s3_client, seaweed_s3

from inference import storage as engine_storage
from inference.jobs import create_scoring, execute_scoring
from inference.models import PatientPrediction
from pmpd_web.imaging.models import ImageUpload, UploadFile
from pmpd_web.imaging.uploads import (
    DeclaredFile,
    chunk_prefix,
    create_upload,
    declare_files,
    expire_stale_uploads,
    finish_upload,
    receive_chunk,
)
from pmpd_web.jobs import dispatch
from pmpd_web.jobs.files import job_scratch
from pmpd_web.jobs.models import Job
from pmpd_web.shared_storage import S3_BACKEND, s3_storage

# A SeaweedFS server per module: outside the fast loop, like the Orthanc peer.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    try:
        with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as endpoint:
            yield endpoint
    except SeaweedUnavailable as exc:
        pytest.skip(f"no S3 server for this test: {exc}")


@pytest.fixture
def bucket_storage(s3_endpoint, settings, tmp_path):
    """A fresh bucket as the default storage; MEDIA_ROOT an empty folder that must stay so."""
    bucket = f"pmpd-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.PMPD_JOB_SCRATCH_DIR = tmp_path / "scratch"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": s3_storage(
            bucket=bucket,
            endpoint_url=s3_endpoint,
            access_key="pmpd-test",
            secret_key="pmpd-test-secret",
            region="us-east-1",
        ),
    }
    yield bucket


def _keys(endpoint: str, bucket: str) -> set[str]:
    listing = s3_client(endpoint).list_objects_v2(Bucket=bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


def _files_under(folder) -> list[Path]:
    return [path for path in Path(folder).rglob("*") if path.is_file()]


def test_the_file_system_stays_the_embedded_default(settings):
    assert settings.STORAGES["default"]["BACKEND"].endswith("FileSystemStorage")
    assert s3_storage(bucket="") is None
    entry = s3_storage(bucket="site-media", endpoint_url="http://s3:8333")
    assert entry["BACKEND"] == S3_BACKEND
    assert entry["OPTIONS"]["addressing_style"] == "path"
    assert entry["OPTIONS"]["file_overwrite"] is False


def test_without_boto3_the_file_system_store_still_takes_uploads(monkeypatch):
    """An install without boto3 (the GPU kit leaves the S3 client out) keeps the file-system
    store: asking whether the store is a bucket says no instead of failing on the import
    (django-storages raises ImproperlyConfigured, not ImportError, when boto3 is missing)."""
    import sys

    from pmpd_web.imaging import multipart

    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.delitem(sys.modules, "storages.backends.s3", raising=False)
    monkeypatch.delitem(sys.modules, "storages.backends.s3boto3", raising=False)
    assert multipart.bucket_storage() is None


@pytest.mark.django_db
def test_files_go_to_the_bucket_and_local_copies_only_to_the_job_scratch(
    bucket_storage, s3_endpoint, settings, tmp_path
):
    assert default_storage.__class__.__name__ == "S3Storage"
    name = default_storage.save("volumes/1/1/ct.nii.gz", ContentFile(b"volume bytes"))
    assert name in _keys(s3_endpoint, bucket_storage)
    # A second file under the same name gets its own name, as on a file system.
    assert default_storage.save(name, ContentFile(b"other")) != name
    # A re-run replaces what it wrote under the same name.
    assert engine_storage.replace_file(name, b"new bytes") == name
    with default_storage.open(name, "rb") as handle:
        assert handle.read() == b"new bytes"

    job = Job.objects.create(kind=Job.Kind.SCORING)
    with job_scratch(job) as scratch, engine_storage.local_path(name) as local:
        assert local.is_relative_to(scratch), "the local copy is in the job's scratch folder"
        assert local.name.endswith(".nii.gz") and local.read_bytes() == b"new bytes"
    assert not scratch.exists()
    assert not _files_under(settings.MEDIA_ROOT)


@pytest.mark.django_db
def test_a_cohort_is_scored_through_the_bucket(
    bucket_storage, s3_endpoint, settings, cohort, members
):
    patients = [add_phantom_patient(cohort, phantom(index), label="unknown") for index in range(2)]
    version = make_random_version(cohort)
    job = create_scoring(cohort, version, user=members["coordinator"])
    execute_scoring(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.result["scored"] == 2
    keys = _keys(s3_endpoint, bucket_storage)
    for patient in patients:
        prediction = PatientPrediction.objects.get(patient=patient, model_version=version)
        assert prediction.gradcam_files and set(prediction.gradcam_files) <= keys
        assert any(key.startswith(f"preprocessed/{patient.pk}/") for key in keys)
    assert any(key.startswith(f"models/{version.pk}/") for key in keys)
    assert not _files_under(settings.MEDIA_ROOT)


MIB = 1024 * 1024


def _send(upload_file, content: bytes, sizes: list[int], *, start: int = 0, capture):
    """Send the chunks of ``sizes`` of ``content`` from ``start``, each request's on-commit
    work run as after its real commit."""
    offset = start
    for size in sizes:
        with capture(execute=True):
            upload_file = receive_chunk(
                upload_file,
                offset=offset,
                length=size,
                stream=io.BytesIO(content[offset : offset + size]),
            )
        offset += size
    return upload_file


def _under(endpoint: str, bucket: str, prefix: str) -> set[str]:
    return {key for key in _keys(endpoint, bucket) if key.startswith(prefix)}


def _pending_uploads(endpoint: str, bucket: str) -> list[dict]:
    return s3_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _declared(cohort, members, size: int) -> UploadFile:
    upload = create_upload(cohort=cohort, user=members["coordinator"])
    (upload_file,) = declare_files(upload, [DeclaredFile(name="ct.zip", size=size)])
    return upload_file


@pytest.mark.django_db
def test_an_upload_in_chunks_arrives_as_one_object_written_as_multipart_parts(
    bucket_storage, s3_endpoint, cohort, members, django_capture_on_commit_callbacks, tmp_path
):
    capture = django_capture_on_commit_callbacks
    content = os.urandom(13 * MIB + 12_345)
    upload_file = _declared(cohort, members, len(content))
    prefix = chunk_prefix(upload_file)
    client = s3_client(s3_endpoint)

    # Two chunks of 2 MiB, under S3's smallest part: they wait as objects of their own.
    upload_file = _send(upload_file, content, [2 * MIB, 2 * MIB], capture=capture)
    state = upload_file.multipart
    assert state["parts"] == [] and len(upload_file.chunks) == 2
    assert _under(s3_endpoint, bucket_storage, prefix) == {n for _, _, n in upload_file.chunks}
    # A third makes 6 MiB: part 1, the waiting objects deleted; 6 MiB more: part 2.
    upload_file = _send(upload_file, content, [2 * MIB, 6 * MIB], start=4 * MIB, capture=capture)
    parts = client.list_parts(Bucket=bucket_storage, Key=state["key"], UploadId=state["upload_id"])
    assert [part["Size"] for part in parts["Parts"]] == [6 * MIB, 6 * MIB]
    assert upload_file.chunks == [] and not _under(s3_endpoint, bucket_storage, prefix)
    # The last chunk (1 MiB and a bit, the one part S3 takes under 5 MiB) completes the file.
    upload_file = _send(upload_file, content, [MIB + 12_345], start=12 * MIB, capture=capture)
    upload_file.refresh_from_db()
    assert upload_file.received_bytes == len(content) and upload_file.multipart == {}
    ((offset, length, name),) = upload_file.chunks
    assert (offset, length, name) == (0, len(content), state["name"])
    assert _under(s3_endpoint, bucket_storage, prefix) == {name}
    assert client.get_object(Bucket=bucket_storage, Key=name)["Body"].read() == content
    assert not _pending_uploads(s3_endpoint, bucket_storage)
    # The ingest reads the one object as the whole file (a local copy in its scratch folder).
    from pmpd_web.imaging.intake import _local_file

    assert _local_file(upload_file, tmp_path).read_bytes() == content


@pytest.mark.django_db
def test_an_abandoned_upload_leaves_no_object_and_no_multipart_upload(
    bucket_storage, s3_endpoint, cohort, members, django_capture_on_commit_callbacks
):
    content = os.urandom(8 * MIB)
    upload_file = _declared(cohort, members, len(content))
    upload_file = _send(
        upload_file, content, [6 * MIB, MIB], capture=django_capture_on_commit_callbacks
    )
    assert len(upload_file.multipart["parts"]) == 1 and len(upload_file.chunks) == 1
    # A multipart upload begun by a request whose transaction then rolled back: no row knows it.
    orphan = s3_client(s3_endpoint).create_multipart_upload(
        Bucket=bucket_storage, Key="image-uploads/999/999/received"
    )
    assert len(_pending_uploads(s3_endpoint, bucket_storage)) == 2

    (expired,) = expire_stale_uploads(older_than=timedelta(0))
    expired.refresh_from_db()
    assert expired.status == ImageUpload.Status.FAILED
    assert not _under(s3_endpoint, bucket_storage, "image-uploads/")
    assert not _pending_uploads(s3_endpoint, bucket_storage), orphan["UploadId"]
    assert UploadFile.objects.get(pk=upload_file.pk).multipart == {}


@pytest.mark.django_db
def test_a_cancelled_ingest_deletes_the_uploaded_object(
    bucket_storage, s3_endpoint, cohort, members, django_capture_on_commit_callbacks
):
    content = os.urandom(3 * MIB)
    upload_file = _declared(cohort, members, len(content))
    upload_file = _send(
        upload_file, content, [MIB, 2 * MIB], capture=django_capture_on_commit_callbacks
    )
    assert len(_under(s3_endpoint, bucket_storage, "image-uploads/")) == 1
    job = finish_upload(upload_file.upload, members["coordinator"], queue=False)
    dispatch.cancel(job)
    assert not _under(s3_endpoint, bucket_storage, "image-uploads/")
    assert not _pending_uploads(s3_endpoint, bucket_storage)


@pytest.mark.django_db
def test_a_file_in_one_chunk_is_one_plain_object(
    bucket_storage, s3_endpoint, cohort, members, django_capture_on_commit_callbacks
):
    content = os.urandom(300_000)  # a DICOM instance: one request, no multipart upload
    upload_file = _declared(cohort, members, len(content))
    upload_file = _send(
        upload_file, content, [len(content)], capture=django_capture_on_commit_callbacks
    )
    ((offset, length, name),) = upload_file.chunks
    assert (offset, length) == (0, len(content)) and upload_file.multipart == {}
    body = s3_client(s3_endpoint).get_object(Bucket=bucket_storage, Key=name)["Body"].read()
    assert body == content
    assert not _pending_uploads(s3_endpoint, bucket_storage)


@pytest.mark.django_db
def test_on_the_file_system_each_chunk_stays_a_file_of_its_own(settings, tmp_path, cohort, members):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    content = os.urandom(3000)
    upload_file = _declared(cohort, members, len(content))
    upload_file = _send(upload_file, content, [1000, 1000, 1000], capture=_no_capture)
    assert upload_file.multipart == {}
    assert [chunk[:2] for chunk in upload_file.chunks] == [[0, 1000], [1000, 1000], [2000, 1000]]
    assert (
        b"".join((Path(settings.MEDIA_ROOT) / n).read_bytes() for *_, n in upload_file.chunks)
        == content
    )


@contextlib.contextmanager
def _no_capture(execute: bool):
    yield
