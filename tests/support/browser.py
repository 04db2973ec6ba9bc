"""Debian's Chromium driven by Playwright, for the real-browser tests (tests/e2e)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
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
# The viewport's pixels as the page shows them: mean and standard deviation of the grey level,
# distinct grey levels, and coloured pixels (the segmentation overlay; CT pixels are grey).
VIEWPORT_PIXELS_JS = """canvas => {
  const copy = document.createElement('canvas');
  copy.width = canvas.width;
  copy.height = canvas.height;
  const context = copy.getContext('2d');
  context.drawImage(canvas, 0, 0);
  const data = context.getImageData(0, 0, copy.width, copy.height).data;
  let sum = 0, squares = 0, coloured = 0;
  const levels = new Set();
  const n = data.length / 4;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    const grey = (r + g + b) / 3;
    sum += grey;
    squares += grey * grey;
    levels.add(Math.round(grey));
    if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured += 1;
  }
  const mean = sum / n;
  return {mean, std: Math.sqrt(Math.max(squares / n - mean * mean, 0)), levels: levels.size,
          coloured};
}"""

# Every frame (a page and the viewer's iframe) reports its Content-Security-Policy violations
# to the test through ``window.reportViolation`` (exposed on the browser context).
REPORT_VIOLATIONS_JS = """
document.addEventListener('securitypolicyviolation', event => {
  window.reportViolation(`${location.pathname}: ${event.effectiveDirective} blocked `
    + `${event.blockedURI || 'inline'} (${event.sourceFile}:${event.lineNumber})`);
});
"""


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless. Start it after the test's rows exist: Playwright's sync API
    runs an event loop in this thread, where Django then refuses database calls."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Page, base_url: str, username: str) -> None:
    """Log in through the login page (test users' passwords are pw-<username>)."""
    page.goto(f"{base_url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"pw-{username}")
    page.locator("main form [type=submit]").click()
    page.wait_for_url(f"{base_url}/", timeout=30_000)


# The viewer is about 20 MB of JavaScript: generous, bounded waits.
VIEWER_LOAD_S = 180
# The viewport's pixels as the page shows them: mean and standard deviation of the grey level,
# distinct grey levels, and coloured pixels (the segmentation overlay; CT pixels are grey).
VIEWPORT_PIXELS_JS = """canvas => {
  const copy = document.createElement('canvas');
  copy.width = canvas.width;
  copy.height = canvas.height;
  const context = copy.getContext('2d');
  context.drawImage(canvas, 0, 0);
  const data = context.getImageData(0, 0, copy.width, copy.height).data;
  let sum = 0, squares = 0, coloured = 0;
  const levels = new Set();
  const n = data.length / 4;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    const grey = (r + g + b) / 3;
    sum += grey;
    squares += grey * grey;
    levels.add(Math.round(grey));
    if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured += 1;
  }
  const mean = sum / n;
  return {mean, std: Math.sqrt(Math.max(squares / n - mean * mean, 0)), levels: levels.size,
          coloured};
}"""


def viewer_frame(page: Page) -> Frame:
    frame = page.wait_for_selector("iframe.viewer", timeout=30_000).content_frame()
    assert frame is not None
    return frame


def wait_for_pixels(frame: Frame, ready, what: str) -> dict:
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
