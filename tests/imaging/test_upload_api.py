"""The upload API as a browser or a script uses it: chunks with Content-Range or ?offset=,
resuming after an interruption, finishing into a job; and the pages that show it."""

from __future__ import annotations

import pytest
from factories import make_patient
from imagemaker import dicom_series, folder_files, small_patient, write_volume
from rest_framework.test import APIClient

from pmpd_web.imaging.models import ImageSeries, ImageUpload, UploadFile

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(members):
    client = APIClient()
    client.force_login(members["coordinator"])
    return client


@pytest.fixture
def patient_files(cohort, tmp_path):
    patient = small_patient()
    make_patient(cohort, patient.study_id)
    folder = tmp_path / "in" / patient.study_id
    dicom_series(patient, folder / "ct")
    write_volume(patient.mask, patient, folder / "mask.nii.gz")
    return patient, {k: v.read_bytes() for k, v in folder_files(tmp_path / "in").items()}


def put_chunk(api, url: str, data: bytes, start: int, size: int):
    return api.put(
        url,
        data,
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes {start}-{start + len(data) - 1}/{size}",
    )


@pytest.mark.slow
def test_resumable_chunked_upload_to_a_finished_ingest(
    api, cohort, patient_files, django_capture_on_commit_callbacks
):
    patient, files = patient_files
    base = f"/api/cohorts/{cohort.pk}/image-uploads/"
    created = api.post(base, {"label_pancreas": 1, "label_tumour": 2}, format="json")
    assert created.status_code == 201 and created.json()["status"] == "receiving"
    upload_id = created.json()["id"]
    declared = api.post(
        f"{base}{upload_id}/files/",
        {"files": [{"name": name, "size": len(data)} for name, data in files.items()]},
        format="json",
    ).json()
    assert [d["name"] for d in declared] == list(files) and all(
        d["received_bytes"] == 0 for d in declared
    )

    mask_name = next(n for n in files if n.endswith("mask.nii.gz"))
    mask = files[mask_name]
    mask_id = next(d["id"] for d in declared if d["name"] == mask_name)
    content = f"{base}{upload_id}/files/{mask_id}/content/"
    # The first chunk arrives; the second is lost (the connection drops mid-way).
    half = len(mask) // 2
    assert put_chunk(api, content, mask[:half], 0, len(mask)).json()["received_bytes"] == half
    # A chunk from the wrong place is refused with where to resume.
    wrong = put_chunk(api, content, mask[half + 10 :], half + 10, len(mask))
    assert wrong.status_code == 409 and wrong.json()["received_bytes"] == half
    # Finishing early is refused: the file is incomplete.
    early = api.post(f"{base}{upload_id}/finish/")
    assert early.status_code == 400 and "not completely received" in early.json()["detail"]
    # The page is reloaded: declaring the same files again tells what the server has.
    again = api.post(
        f"{base}{upload_id}/files/",
        {"files": [{"name": mask_name, "size": len(mask)}]},
        format="json",
    ).json()
    assert again[0]["id"] == mask_id and again[0]["received_bytes"] == half
    assert api.get(f"{base}{upload_id}/files/{mask_id}/").json()["received_bytes"] == half
    assert api.head(f"{base}{upload_id}/files/{mask_id}/").status_code == 200
    # Resume with ?offset= (the other way of saying where a chunk starts).
    resumed = api.post(
        f"{content}?offset={half}", mask[half:], content_type="application/octet-stream"
    )
    assert resumed.status_code == 200 and resumed.json()["received_bytes"] == len(mask)
    for item in declared:
        if item["id"] != mask_id:
            data = files[item["name"]]
            response = put_chunk(
                api, f"{base}{upload_id}/files/{item['id']}/content/", data, 0, len(data)
            )
            assert response.status_code == 200, response.content
    listed = api.get(f"{base}{upload_id}/").json()
    assert listed["n_files"] == len(files) and listed["received_bytes"] == listed["size_bytes"]

    with django_capture_on_commit_callbacks(execute=True):
        finished = api.post(f"{base}{upload_id}/finish/")
    assert finished.status_code == 202 and finished.json()["kind"] == "image_ingest"
    job = api.get(f"/api/jobs/{finished.json()['id']}/").json()
    assert job["status"] == "succeeded", job["error"]
    status = api.get(f"{base}{upload_id}/").json()
    assert status["status"] == "done" and status["summary"]["ct_added"] == 1
    assert {f["status"] for f in api.get(f"{base}{upload_id}/files/").json()} == {"done"}
    series = api.get(f"/api/cohorts/{cohort.pk}/image-series/?study_id={patient.study_id}").json()
    ct = next(s for s in series["results"] if s["modality"] == "CT")
    assert ct["is_selected"] and ct["has_mask"] and ct["n_instances"] == patient.ct.shape[0]
    # The upload takes no more chunks once finished.
    late = put_chunk(api, content, b"x", len(mask), len(mask) + 1)
    assert late.status_code in (400, 409)


def test_per_patient_upload_and_chunk_rules(api, cohort, patient_files, settings):
    patient, files = patient_files
    base = f"/api/cohorts/{cohort.pk}/image-uploads/"
    upload = api.post(base, {"study_id": patient.study_id}, format="json").json()
    assert upload["patient"] == patient.study_id and upload["confirm_shared_source"] is False
    confirmed = api.post(base, {"confirm_shared_source": True}, format="json").json()
    assert confirmed["confirm_shared_source"] is True
    assert api.post(base, {"study_id": "NOPE"}, format="json").status_code == 400
    assert (
        api.post(base, {"label_pancreas": 2, "label_tumour": 2}, format="json").status_code == 400
    )
    wrong_patient = api.post(
        f"{base}{upload['id']}/files/",
        {"files": [{"name": "a.dcm", "size": 3, "study_id": "OTHER"}]},
        format="json",
    )
    assert (
        wrong_patient.status_code == 400
        and "this upload is for patient" in wrong_patient.json()["detail"]
    )
    declared = api.post(
        f"{base}{upload['id']}/files/", {"files": [{"name": "a.dcm", "size": 3}]}, format="json"
    ).json()[0]
    content = f"{base}{upload['id']}/files/{declared['id']}/content/"
    assert put_chunk(api, content, b"abcd", 0, 3).status_code == 400  # beyond the declared size
    no_offset = api.put(content, b"abc", content_type="application/octet-stream")
    assert no_offset.status_code == 400 and "offset" in no_offset.json()["detail"]
    settings.PMPD_UPLOAD_CHUNK_MAX_BYTES = 2
    assert put_chunk(api, content, b"abc", 0, 3).status_code == 413
    assert UploadFile.objects.get(pk=declared["id"]).received_bytes == 0


@pytest.mark.slow
def test_pages_show_uploads_series_and_status(cohort, members, patient_files, client_for):
    from imagemaker import ingest

    patient, files = patient_files
    upload, job = ingest(cohort, members["coordinator"], files)
    assert job.status == "succeeded", job.error
    client = client_for(members["coordinator"])
    cohort_page = client.get(f"/cohorts/{cohort.pk}/").content.decode()
    assert "Images" in cohort_page and f"/cohorts/{cohort.pk}/images/" in cohort_page
    assert "1</span> of 1 patients with a CT" in cohort_page
    images = client.get(f"/cohorts/{cohort.pk}/images/").content.decode()
    assert (
        "pmpd/upload.js" in images and 'class="uploader"' in images and patient.study_id in images
    )
    detail = client.get(f"/cohorts/{cohort.pk}/images/uploads/{upload.pk}/").content.decode()
    assert "Done" in detail and "mask.nii.gz" in detail and "hx-get" not in detail
    ImageUpload.objects.filter(pk=upload.pk).update(status="processing")
    partial = client.get(
        f"/cohorts/{cohort.pk}/images/uploads/{upload.pk}/status/"
    ).content.decode()
    assert "hx-get" in partial and "every 2s" in partial
    mine = client.get(f"/cohorts/{cohort.pk}/patients/{patient.study_id}/images/").content.decode()
    assert "CT 2.5 mm portal venous" in mine and "pancreas + tumour" in mine
    assert f'data-study-id="{patient.study_id}"' in mine
    # A clinician sees the series but no uploader and no upload list.
    clinician = client_for(members["clinician"])
    seen = clinician.get(
        f"/cohorts/{cohort.pk}/patients/{patient.study_id}/images/"
    ).content.decode()
    assert "CT 2.5 mm portal venous" in seen and 'class="uploader"' not in seen
    card = clinician.get(f"/cohorts/{cohort.pk}/").content.decode()
    assert "Review images" in card and "Recent uploads" not in card


@pytest.mark.slow
def test_selecting_through_the_api(api, cohort, members, patient_files):
    from imagemaker import ingest

    _, files = patient_files
    ingest(cohort, members["coordinator"], files)
    ct = ImageSeries.objects.get(modality="CT")
    response = api.post(f"/api/cohorts/{cohort.pk}/image-series/{ct.pk}/select/")
    assert response.status_code == 200 and response.json()["picked_by"] == "coordinator"
    seg = ImageSeries.objects.get(modality="SEG")
    assert api.post(f"/api/cohorts/{cohort.pk}/image-series/{seg.pk}/select/").status_code == 400


def test_abandoned_uploads_expire_and_lose_their_partial_files(api, cohort, patient_files):
    from datetime import timedelta
    from io import StringIO

    from django.core.files.storage import default_storage
    from django.core.management import call_command
    from django.utils import timezone

    _, files = patient_files
    base = f"/api/cohorts/{cohort.pk}/image-uploads/"
    name, data = next(iter(files.items()))

    def half_sent() -> tuple[int, str]:
        upload_id = api.post(base, {}, format="json").json()["id"]
        declared = api.post(
            f"{base}{upload_id}/files/",
            {"files": [{"name": name, "size": len(data)}]},
            format="json",
        ).json()
        content = f"{base}{upload_id}/files/{declared[0]['id']}/content/"
        put_chunk(api, content, data[: len(data) // 2], 0, len(data))
        part = UploadFile.objects.get(pk=declared[0]["id"]).chunks[0][2]
        assert default_storage.exists(part)
        return upload_id, part

    abandoned, abandoned_part = half_sent()
    active, active_part = half_sent()
    ImageUpload.objects.filter(pk=abandoned).update(updated_at=timezone.now() - timedelta(hours=49))
    out = StringIO()
    call_command("expire_uploads", "--dry-run", stdout=out)
    assert f"would expire: upload #{abandoned} " in out.getvalue()
    assert f"#{active} " not in out.getvalue() and default_storage.exists(abandoned_part)

    call_command("expire_uploads", stdout=out)
    gone = ImageUpload.objects.get(pk=abandoned)
    assert gone.status == "failed" and "no file arrived for 48 hours" in gone.error
    assert not default_storage.exists(abandoned_part)
    assert gone.files.get().status == "failed" and gone.files.get().chunks == []
    # The upload still receiving is untouched, and a chunk keeps an upload fresh.
    assert ImageUpload.objects.get(pk=active).status == "receiving"
    assert default_storage.exists(active_part)
    # An expired upload takes no more chunks.
    file_id = gone.files.get().pk
    late = put_chunk(
        api, f"{base}{abandoned}/files/{file_id}/content/", data[:10], len(data) // 2, len(data)
    )
    assert late.status_code in (400, 409)
