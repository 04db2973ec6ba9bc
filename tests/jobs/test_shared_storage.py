"""The media store as an S3-compatible bucket (issue 14, item 5), against a real S3 server:
SeaweedFS started by the test on free ports (skipped, with the reason, when it cannot start).

With the bucket as Django's default storage, a cohort is scored through it: the canonical
volumes are read from the bucket, the preprocessing cache, Grad-CAM overlays and predictions
written to it, nothing written under MEDIA_ROOT, and the local copies the engine needs exist
only inside the job's scratch folder while it runs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from engine_fixtures import add_phantom_patient, make_random_version, phantom
from seaweed import SeaweedUnavailable, s3_client, seaweed_s3

from inference import storage as engine_storage
from inference.jobs import create_scoring, execute_scoring
from inference.models import PatientPrediction
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
