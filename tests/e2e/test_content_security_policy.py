"""The Content-Security-Policy in a real browser (issue 9, item 13): the main pages and the
embedded OHIF viewer work under it, the viewer still shows the CT's pixels, and the browser
reports no violation on any of them (cohort list, cohort, patient page with the viewer,
analytics dashboard with its plotly figures, Swagger UI, ReDoc)."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import REPORT_VIOLATIONS_JS, chromium, log_in, viewer_frame, wait_for_pixels
from dicom_fixtures import phantom
from django.conf import settings
from imagemaker import dicom_series, folder_files, ingest, write_volume
from scored import make_model_version, make_scored_cohort

from pmpd_web.cohorts.models import Patient

STUDY_ID = "SYN-00001"
REDOC_LOGO = "https://cdn.redoc.ly/"


def test_pages_and_viewer_work_under_the_policy(live_server, cohort, members, tmp_path):
    if not (Path(settings.PMPD_OHIF_ROOT) / "index.html").is_file():
        pytest.fail("the OHIF viewer is not built: `make frontend` builds it")
    version = make_model_version("csp-synthetic", is_synthetic=True, is_active=True)
    make_scored_cohort(cohort, version, 40)
    patient = Patient.objects.get(cohort=cohort, study_id=STUDY_ID)
    case = phantom(index=3, size=96, n_slices=12)
    case.study_id = patient.study_id
    dicom_series(case, tmp_path / STUDY_ID / "ct")
    write_volume(case.mask, case, tmp_path / STUDY_ID / "mask.nii.gz")
    _, job = ingest(cohort, members["coordinator"], folder_files(tmp_path, "drop/"))
    assert job.status == "succeeded", job.error
    base = live_server.url
    violations: list[str] = []
    console: list[str] = []

    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1300, "height": 1000})
        context.expose_function("reportViolation", lambda text: violations.append(text))
        context.add_init_script(REPORT_VIOLATIONS_JS)
        page = context.new_page()
        page.on(
            "console",
            lambda m: console.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.on("close", lambda _: print(f"\nCSP violations: {violations}\nconsole: {console}"))
        # The site admin may open every page of the cohort, the dashboards included.
        log_in(page, base, "admin")
        page.goto(f"{base}/cohorts/{cohort.pk}/")
        page.get_by_text(STUDY_ID).first.wait_for(timeout=30_000)

        page.goto(f"{base}/cohorts/{cohort.pk}/patients/{STUDY_ID}/")
        response_policy = page.evaluate(
            "fetch(location.href).then(r => r.headers.get('content-security-policy'))"
        )
        assert "script-src 'self';" in response_policy
        frame = viewer_frame(page)
        ct = wait_for_pixels(frame, lambda p: p["std"] > 10 and p["levels"] > 20, "a CT")
        # The segmentation is drawn over it (its loader needs the viewer's 'unsafe-eval').
        overlay = wait_for_pixels(frame, lambda p: p["coloured"] > 20, "the segmentation")

        page.goto(f"{base}/analytics/evaluation/?cohort={cohort.pk}&model_version={version.pk}")
        page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=120_000)

        page.goto(f"{base}/api/docs/")
        page.locator(".swagger-ui .opblock").first.wait_for(timeout=60_000)
        page.goto(f"{base}/api/redoc/")
        page.get_by_text("PMPD platform API").first.wait_for(timeout=60_000)
        page.goto(f"{base}/")
        page.get_by_text(cohort.name).first.wait_for(timeout=30_000)
        context.close()

    print(
        f"viewer under the CSP: grey standard deviation {ct['std']:.1f}, {ct['levels']} levels, "
        f"{overlay['coloured']} segmentation-coloured pixels"
    )
    # ReDoc's sidebar shows Redocly's logo from their CDN, whatever its options: the policy is
    # what keeps the browser from contacting it (the image falls back to nothing).
    expected = [v for v in violations if v.startswith("/api/redoc/: img-src blocked " + REDOC_LOGO)]
    assert [v for v in violations if v not in expected] == [], violations
    assert [m for m in console if REDOC_LOGO not in m] == [], console
