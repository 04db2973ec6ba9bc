"""The OHIF viewer in a real browser (Debian's Chromium driven by Playwright): a clinician logs
in, opens a patient, and the embedded viewer shows the CT's pixels with the pancreas and tumour
segmentation listed. A screenshot of the run is kept under test-artifacts/."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_fixtures import add_imaged_patient
from django.conf import settings
from factories import make_patient
from playwright.sync_api import Browser, Frame, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The viewer is about 20 MB of JavaScript: generous, bounded waits.
VIEWER_LOAD_S = 180
# The viewport's pixels as the page shows them: (mean, standard deviation, distinct grey levels).
VIEWPORT_PIXELS_JS = """canvas => {
  const copy = document.createElement('canvas');
  copy.width = canvas.width;
  copy.height = canvas.height;
  const context = copy.getContext('2d');
  context.drawImage(canvas, 0, 0);
  const data = context.getImageData(0, 0, copy.width, copy.height).data;
  let sum = 0, squares = 0;
  const levels = new Set();
  const n = data.length / 4;
  for (let i = 0; i < data.length; i += 4) {
    const grey = (data[i] + data[i + 1] + data[i + 2]) / 3;
    sum += grey;
    squares += grey * grey;
    levels.add(Math.round(grey));
  }
  const mean = sum / n;
  return [mean, Math.sqrt(Math.max(squares / n - mean * mean, 0)), levels.size];
}"""


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless. Started after the test's rows exist: Playwright's sync API
    runs an event loop in this thread, where Django then refuses database calls."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _viewer_frame(page: Page) -> Frame:
    frame = page.wait_for_selector("iframe.viewer", timeout=30_000).content_frame()
    assert frame is not None
    return frame


def _wait_for_ct_pixels(frame: Frame) -> tuple[float, float, int]:
    """Poll the viewport's canvas until it shows an image (not one flat colour)."""
    canvas = frame.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible", timeout=VIEWER_LOAD_S * 1000)
    deadline = time.monotonic() + VIEWER_LOAD_S
    stats = (0.0, 0.0, 0)
    while time.monotonic() < deadline:
        stats = canvas.evaluate(VIEWPORT_PIXELS_JS)
        if stats[1] > 10 and stats[2] > 20:
            return stats
        time.sleep(1)
    raise AssertionError(f"the viewport stayed flat: mean, std, levels = {stats}")


def test_patient_page_shows_the_ct_with_its_segmentation(live_server, cohort, members, tmp_path):
    if not (Path(settings.PMPD_OHIF_ROOT) / "index.html").is_file():
        pytest.fail("the OHIF viewer is not built: `make frontend` builds it")
    add_imaged_patient(
        make_patient(cohort, "PMPD-E2E"), folder=tmp_path / "ct", index=3, size=128, n_slices=16
    )
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

            page.goto(f"{live_server.url}/cohorts/{cohort.pk}/patients/PMPD-E2E/")
            assert page.locator("#images h2").inner_text() == "CT and segmentation"
            frame = _viewer_frame(page)
            mean, std, levels = _wait_for_ct_pixels(frame)
            # The SEG is in the study browser, and its panel lists its segments by label.
            seg = frame.locator("[data-cy=study-browser-thumbnail-no-image]", has_text="SEG")
            seg.get_by_text("Pancreas and tumour").wait_for(timeout=VIEWER_LOAD_S * 1000)
            frame.locator("[data-cy=panelSegmentation-btn]").click()
            for label in ("Pancreas", "Tumour"):
                frame.get_by_text(label, exact=True).first.wait_for(
                    state="visible", timeout=VIEWER_LOAD_S * 1000
                )
        finally:
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"\nviewer screenshot: {screenshot}")
    print(f"viewport pixels: mean {mean:.1f}, standard deviation {std:.1f}, {levels} grey levels")
    assert not [p for p in problems if "/dicomweb/" in p or "page error" in p], problems
