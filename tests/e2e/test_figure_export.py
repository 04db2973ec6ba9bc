"""Figures download as PNG and SVG at the size and resolution the statistician chooses
(issue 11 item 10), in a real browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from browser import chromium, log_in
from scored import make_model_version, make_scored_cohort


@pytest.fixture
def sync_orm_beside_playwright(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_png_and_svg_at_a_chosen_size_and_dpi(
    live_server, members, cohort, sync_orm_beside_playwright
):
    version = make_model_version("pmpd-figures")
    make_scored_cohort(cohort, version, 60)
    query = f"cohort={cohort.pk}&model_version={version.pk}"
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        log_in(page, live_server.url, "statistician")
        page.goto(f"{live_server.url}/analytics/survival/?{query}")
        card = page.locator(".figure-card").filter(has=page.locator(".js-plotly-plot")).first
        card.locator(".js-plotly-plot").wait_for(timeout=120_000)
        card.locator("[data-size=width]").fill("10")
        card.locator("[data-size=height]").fill("8")
        card.locator("[data-size=dpi]").select_option("300")
        with page.expect_download(timeout=60_000) as download_info:
            card.locator("[data-download=png]").click()
        width, height = png_size(Path(download_info.value.path()))
        # 10 cm x 8 cm at 300 dpi: 1181 x 945 pixels (within Plotly's rounding)
        assert abs(width - 1181) <= 3 and abs(height - 945) <= 3
        with page.expect_download(timeout=60_000) as download_info:
            card.locator("[data-download=svg]").click()
        svg = Path(download_info.value.path()).read_text(encoding="utf-8")
        assert 'width="378"' in svg and 'height="302"' in svg
        page.close()
