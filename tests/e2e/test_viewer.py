"""The OHIF viewer in a real browser (Debian's Chromium driven by Playwright): a patient's CT and
mask go through the platform's ingest, then a clinician logs in, opens the patient, and the
embedded viewer shows the CT's pixels with the pancreas and tumour segmentation listed. A
screenshot of the run is kept under test-artifacts/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from browser import ARTIFACTS, VIEWER_LOAD_S, VIEWPORT_PIXELS_JS, chromium
from dicom_fixtures import phantom
from django.conf import settings
from factories import make_patient
from imagemaker import dicom_series, folder_files, ingest, write_volume
from playwright.sync_api import Frame, Page

STUDY_ID = "PMPD-E2E"


def _viewer_frame(page: Page) -> Frame:
    frame = page.wait_for_selector("iframe.viewer", timeout=30_000).content_frame()
    assert frame is not None
    return frame


def _wait_for_pixels(frame: Frame, ready, what: str) -> dict:
    """Poll the viewport's canvas until ``ready(pixels)``, within the load allowance."""
    canvas = frame.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible", timeout=VIEWER_LOAD_S * 1000)
    deadline = time.monotonic() + VIEWER_LOAD_S
    pixels = canvas.evaluate(VIEWPORT_PIXELS_JS)
    while not ready(pixels):
        if time.monotonic() > deadline:
            raise AssertionError(f"the viewport never showed {what}: {pixels}")
        time.sleep(1)
        pixels = canvas.evaluate(VIEWPORT_PIXELS_JS)
    return pixels


def test_patient_page_shows_the_ct_with_its_segmentation(live_server, cohort, members, tmp_path):
    if not (Path(settings.PMPD_OHIF_ROOT) / "index.html").is_file():
        pytest.fail("the OHIF viewer is not built: `make frontend` builds it")
    # Through the platform's own ingest: a phantom CT as DICOM and its mask as NIfTI, uploaded,
    # de-identified, stored, and its SEG built.
    case = phantom(index=3, size=128, n_slices=16)
    case.study_id = STUDY_ID
    make_patient(cohort, STUDY_ID)
    dicom_series(case, tmp_path / STUDY_ID / "ct")
    write_volume(case.mask, case, tmp_path / STUDY_ID / "mask.nii.gz")
    _, job = ingest(cohort, members["coordinator"], folder_files(tmp_path, "drop/"))
    assert job.status == "succeeded", job.error
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "viewer-patient-page.png"
    problems: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "response",
            lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
        )
        try:
            page.goto(f"{live_server.url}/accounts/login/")
            page.fill("input[name=username]", "clinician")
            page.fill("input[name=password]", "pw-clinician")
            page.locator("main form [type=submit]").click()
            page.wait_for_url(f"{live_server.url}/", timeout=30_000)

            page.goto(f"{live_server.url}/cohorts/{cohort.pk}/patients/{STUDY_ID}/")
            assert page.locator("#images h2").inner_text() == "CT and segmentation"
            frame = _viewer_frame(page)
            ct = _wait_for_pixels(frame, lambda p: p["std"] > 10 and p["levels"] > 20, "a CT")
            # The SEG is in the study browser, drawn over the CT, and its panel lists its
            # segments by label.
            frame.locator(
                "[data-cy=study-browser-thumbnail-no-image] [data-cy=series-modality-label]",
                has_text="SEG",
            ).wait_for(timeout=VIEWER_LOAD_S * 1000)
            overlay = _wait_for_pixels(frame, lambda p: p["coloured"] > 20, "the segmentation")
            frame.locator("[data-cy=panelSegmentation-btn]").click()
            for label in ("Pancreas", "Tumour"):
                frame.get_by_text(label, exact=True).first.wait_for(
                    state="visible", timeout=VIEWER_LOAD_S * 1000
                )
        finally:
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"\nviewer screenshot: {screenshot}")
    print(
        f"viewport: grey mean {ct['mean']:.1f}, standard deviation {ct['std']:.1f}, "
        f"{ct['levels']} grey levels; {overlay['coloured']} segmentation-coloured pixels"
    )
    assert not [p for p in problems if "/dicomweb/" in p or "page error" in p], problems
