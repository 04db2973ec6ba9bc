"""The clinician's journey in a real browser (issue 12 items 1-3): a patient whose signals
disagree gets one reading in words, the fold models as a strip of dots, and the viewer opens on
the CT image with the largest tumour area with the segmentation drawn; a click on a Grad-CAM
slice moves the viewer to that CT image. Screenshots are kept under test-artifacts/."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser import ARTIFACTS, VIEWER_LOAD_S, VIEWPORT_PIXELS_JS, chromium, log_in
from dicom_fixtures import phantom
from django.conf import settings
from engine_fixtures import make_prediction, make_ready_version
from factories import make_patient
from imagemaker import dicom_series, folder_files, ingest, write_volume
from scored import make_scored_cohort

from pmpd_web.imaging.patient_viewer import images_on_grid, patient_viewer

STUDY_ID = "PHX-0004"


@pytest.fixture
def sync_orm_beside_playwright(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def _slice_indicator(frame, instance_number: int) -> str:
    """Wait until the viewport's overlay reads "I: <instance number> (k/N)"."""
    pattern = re.compile(rf"I:\s*{instance_number} \(\d+/\d+\)")
    deadline = time.monotonic() + VIEWER_LOAD_S
    text = ""
    while time.monotonic() < deadline:
        text = " ".join(frame.locator(".overlay-item").all_inner_texts())
        if pattern.search(text):
            return pattern.search(text).group(0)
        time.sleep(0.5)
    raise AssertionError(f"the viewer never showed CT image {instance_number}: {text!r}")


def _coloured_pixels(frame) -> int:
    canvas = frame.locator("canvas.cornerstone-canvas").first
    deadline = time.monotonic() + VIEWER_LOAD_S
    pixels = canvas.evaluate(VIEWPORT_PIXELS_JS)
    while pixels["coloured"] <= 20 and time.monotonic() < deadline:
        time.sleep(1)
        pixels = canvas.evaluate(VIEWPORT_PIXELS_JS)
    return pixels["coloured"]


def test_the_clinician_reads_one_consistent_result_and_the_viewer_follows(
    live_server, cohort, members, tmp_path, sync_orm_beside_playwright
):
    if not (Path(settings.PMPD_OHIF_ROOT) / "index.html").is_file():
        pytest.fail("the OHIF viewer is not built: `make frontend` builds it")
    case = phantom(index=3, size=128, n_slices=16)
    case.study_id = STUDY_ID
    patient = make_patient(cohort, STUDY_ID, ca19_9_u_per_ml=35.0)
    dicom_series(case, tmp_path / STUDY_ID / "ct")
    write_volume(case.mask, case, tmp_path / STUDY_ID / "mask.nii.gz")
    _, job = ingest(cohort, members["coordinator"], folder_files(tmp_path, "drop/"))
    assert job.status == "succeeded", job.error
    version = make_ready_version(cohort, name="pmpd-e2e", is_active=True, is_synthetic=True)
    make_scored_cohort(cohort, version, 60, prefix="SYN")
    positive, negative = [0.7, 0.6, 0.55, 0.1], [0.3, 0.2, 0.1, 0.1]
    make_prediction(
        patient,
        version,
        per_fold=[0.02, 0.03, 0.04, 0.05, 0.06],
        fold_slices=[positive, positive, positive, negative, negative],
        call=True,
        sites={"none": 0.84, "liver": 0.1, "lung": 0.03, "peritoneum": 0.03},
        first_slice=2,
    )
    opens_on = patient_viewer(patient).tumour_image
    grad_cam = images_on_grid(patient, [2, 3, 4, 5], slice_thickness_mm=2.0)
    target = next(
        image for image in grad_cam.values() if image.sop_instance_uid != opens_on.sop_instance_uid
    )
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 1200})
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        try:
            log_in(page, live_server.url, "clinician")
            page.goto(f"{live_server.url}/cohorts/{cohort.pk}/patients/{STUDY_ID}/")
            reading = page.locator("#patient-reading")
            call = reading.locator("#reading-call")
            assert "mixed" in call.get_attribute("class")
            assert "Metastasis predicted: 3 of 5 fold models above their thresholds" in (
                call.inner_text()
            )
            disagreement = reading.locator("#reading-disagreement").inner_text()
            assert "The signals disagree" in disagreement and "No metastasis" in disagreement
            assert reading.locator(".fold-strip circle").count() == 5
            assert reading.locator(".fold-strip line.cut").count() == 1
            assert "The fold models disagree: 3 of 5" in reading.inner_text()
            page.screenshot(path=str(ARTIFACTS / "clinician-reading.png"), full_page=True)

            frame = page.wait_for_selector("iframe.viewer", timeout=30_000).content_frame()
            shown = _slice_indicator(frame, opens_on.instance_number)
            coloured = _coloured_pixels(frame)
            assert coloured > 20, "the segmentation is not drawn on the opening slice"
            page.screenshot(path=str(ARTIFACTS / "clinician-viewer-tumour.png"), full_page=True)

            page.locator(f'a[data-viewer-sop="{target.sop_instance_uid}"]').click()
            moved = _slice_indicator(frame, target.instance_number)
            page.screenshot(path=str(ARTIFACTS / "clinician-viewer-gradcam.png"), full_page=True)
            # A phone: the page fits its width and offers the viewer full screen.
            page.set_viewport_size({"width": 390, "height": 844})
            page.reload()
            page.wait_for_load_state("networkidle")
            assert page.evaluate("document.documentElement.scrollWidth") <= 391
            full_screen = page.locator("#viewer-full-screen")
            assert full_screen.is_visible() and "initialSOPInstanceUID=" in (
                full_screen.get_attribute("href")
            )
            assert page.locator(".small-screen-note").is_visible()
            page.screenshot(path=str(ARTIFACTS / "clinician-390.png"), full_page=True)
        finally:
            page.screenshot(path=str(ARTIFACTS / "clinician-journey-last.png"), full_page=True)
    print(f"\nopened on {shown} (largest tumour); Grad-CAM click moved to {moved}")
    assert not problems, problems
