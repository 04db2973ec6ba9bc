"""The image uploader in a real browser (Debian's Chromium driven by Playwright): a coordinator
chooses a patient's CT slices and mask on the patient's Images page, the upload is cut off
mid-file, the page is reloaded, the same files are chosen again, and the upload resumes from
the bytes the server already has, then the ingest runs and the page shows it done."""

from __future__ import annotations

from pathlib import Path

from browser import ARTIFACTS, chromium, log_in
from factories import make_patient
from imagemaker import dicom_series, small_patient, write_volume

from pmpd_web.imaging.models import CanonicalVolume, ImageSeries, ImageUpload

CHUNK = 32 * 1024


def test_an_interrupted_upload_resumes_after_a_reload(
    live_server, cohort, members, tmp_path, settings
):
    settings.PMPD_UPLOAD_CHUNK_MAX_BYTES = CHUNK  # the page then sends 32 KiB chunks
    patient = small_patient()
    make_patient(cohort, patient.study_id)
    slices = dicom_series(patient, tmp_path / "ct")
    mask = write_volume(patient.mask, patient, tmp_path / "mask.nii")  # uncompressed: 2 chunks+
    assert mask.stat().st_size > 2 * CHUNK
    files = [str(p) for p in [*slices, mask]]
    sent: list[str] = []
    cut = {"done": False}
    screenshot = ARTIFACTS / "uploader-resumed.png"
    ARTIFACTS.mkdir(exist_ok=True)

    def interrupt(route, request):
        """Refuse the mask's second chunk once, as a dropped connection the page gives up on."""
        ranges = request.headers.get("content-range", "")
        sent.append(ranges)
        if ranges.startswith(f"bytes {CHUNK}-") and not cut["done"]:
            cut["done"] = True
            route.fulfill(status=400, content_type="application/json", body='{"detail": "cut"}')
        else:
            route.continue_()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        try:
            log_in(page, live_server.url, "coordinator")
            images = f"{live_server.url}/cohorts/{cohort.pk}/patients/{patient.study_id}/images/"
            page.goto(images)
            page.route("**/content/", interrupt)
            page.set_input_files("[data-role=files]", files)
            page.click("[data-role=start]")
            page.get_by_text("Stopped:").wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "uploader-interrupted.png"), full_page=True)

            page.reload()
            note = page.locator("[data-role=resume]")
            note.wait_for(state="visible", timeout=30_000)
            assert "was interrupted" in note.inner_text()
            page.set_input_files("[data-role=files]", files)
            page.click("[data-role=start]")
            page.wait_for_url("**/images/uploads/*/", timeout=120_000)
            page.get_by_text("Done", exact=True).first.wait_for(timeout=120_000)
        finally:
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"\nuploader screenshot: {screenshot}")
    upload = ImageUpload.objects.get()
    assert upload.status == "done" and upload.patient.study_id == patient.study_id
    assert ImageSeries.objects.get(modality="CT").is_selected
    assert CanonicalVolume.objects.filter(kind="mask").count() == 1
    size = mask.stat().st_size
    mask_ranges = [r for r in sent if r.endswith(f"/{size}")]
    # The first chunk went once; the refused one was sent again after the reload, once.
    assert mask_ranges.count(f"bytes 0-{CHUNK - 1}/{size}") == 1
    assert sum(r.startswith(f"bytes {CHUNK}-") for r in mask_ranges) == 2
    assert Path(screenshot).exists()
