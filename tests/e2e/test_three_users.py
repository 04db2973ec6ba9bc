"""The three users end to end in a real browser (Debian's Chromium driven by Playwright):
the coordinator creates a cohort, imports its table, uploads a patient's images and sees them
ingested; the clinician opens that patient and sees the MRS, the risk group and the viewer; the
statistician opens the dashboards and downloads a table and the report. Screenshots of each step
are kept under test-artifacts/."""

from __future__ import annotations

import io
import re
from pathlib import Path

import openpyxl
import pytest
from browser import ARTIFACTS, chromium, log_in
from imagemaker import dicom_series, small_patient, write_volume
from scored import make_model_version, make_scored_cohort
from tablemaker import rows, to_csv

from inference.models import PatientPrediction
from pmpd_web.accounts.models import Membership, Role
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.imaging.models import ImageSeries

STUDY_ID = "P-00001"


@pytest.fixture
def sync_orm_beside_playwright(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls between
    # browser steps are plain synchronous calls all the same.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"three-users-{name}.png"), full_page=True)


def test_coordinator_clinician_and_statistician(
    live_server, members, tmp_path, sync_orm_beside_playwright
):
    table = tmp_path / "clinical.csv"
    table.write_bytes(to_csv(rows(5)))
    phantom = small_patient(study_id=STUDY_ID)
    images = [str(p) for p in dicom_series(phantom, tmp_path / "ct")]
    images.append(str(write_volume(phantom.mask, phantom, tmp_path / "mask.nii.gz")))
    base = live_server.url

    with chromium() as browser:
        # The coordinator: cohort, table, images.
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        log_in(page, base, "coordinator")
        page.goto(f"{base}/cohorts/new/")
        page.fill("input[name=name]", "E2E study")
        page.select_option("select[name=role]", "external_validation")
        page.locator("main form [type=submit]").click()
        page.get_by_text("you are its coordinator").wait_for(timeout=30_000)
        cohort = Cohort.objects.get(name="E2E study")
        page.get_by_role("link", name="Import clinical table").click()
        page.set_input_files("input[name=table]", str(table))
        page.get_by_role("button", name="Check the table").click()
        page.get_by_role("button", name="Import 5 rows").click()
        page.get_by_text("Succeeded").wait_for(timeout=60_000)
        shot(page, "1-import")
        assert Patient.objects.filter(cohort=cohort).count() == 5
        page.goto(f"{base}/cohorts/{cohort.pk}/patients/{STUDY_ID}/images/")
        page.set_input_files("[data-role=files]", images)
        page.click("[data-role=start]")
        page.wait_for_url("**/images/uploads/*/", timeout=120_000)
        page.get_by_text("Done", exact=True).first.wait_for(timeout=180_000)
        shot(page, "2-ingested")
        assert ImageSeries.objects.filter(
            study__patient__study_id=STUDY_ID, modality="SEG"
        ).exists()
        page.close()

        # Scores as the engine leaves them (training is covered by tests/inference).
        version = make_model_version("e2e-synthetic", is_synthetic=True, is_active=True)
        make_scored_cohort(cohort, version, 60)
        patient = Patient.objects.get(cohort=cohort, study_id=STUDY_ID)
        PatientPrediction.objects.create(
            patient=patient,
            model_version=version,
            source="ensemble",
            metastasis_risk_score=0.81,
            mrs_std=0.04,
            mrs_min=0.75,
            mrs_max=0.86,
            mrs_per_fold=[0.8, 0.86, 0.75, 0.83, 0.81],
            positive_fraction=1.0,
            predicted_metastasis=True,
            site_probabilities={"liver": 0.7, "lung": 0.1, "peritoneum": 0.2},
            slice_indices=[10, 11, 12, 13],
            slice_probabilities=[[0.8] * 4] * 5,
            n_slices=4,
            input_hash="e2e",
        )
        Membership.objects.create(user=members["clinician"], cohort=cohort, role=Role.CLINICIAN)
        Membership.objects.create(
            user=members["statistician"], cohort=cohort, role=Role.STATISTICIAN
        )

        # The clinician: MRS, risk group, viewer.
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        log_in(page, base, "clinician")
        page.goto(f"{base}/cohorts/{cohort.pk}/patients/{STUDY_ID}/")
        page.locator("#patient-reading").get_by_text("0.810").first.wait_for(timeout=30_000)
        risk = page.locator("#patient-reading")
        assert "Risk group" in risk.inner_text()
        assert risk.locator(".group").filter(has_text="high").count() >= 1
        viewer = page.locator("iframe.viewer")
        assert "StudyInstanceUIDs=" in viewer.get_attribute("src")
        assert "Synthetic data" in page.content()
        shot(page, "3-clinician")
        page.close()

        # The statistician: dashboards, a table and the report.
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        log_in(page, base, "statistician")
        query = f"cohort={cohort.pk}&model_version={version.pk}"
        page.goto(f"{base}/analytics/evaluation/?{query}")
        page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
        shot(page, "4-statistician")
        with page.expect_download(timeout=60_000) as download_info:
            page.locator("a[href*='/tables/'][href*='.xlsx']").first.click()
        workbook = openpyxl.load_workbook(io.BytesIO(Path(download_info.value.path()).read_bytes()))
        assert workbook.worksheets[0].max_row > 1
        with page.expect_download(timeout=120_000) as download_info:
            page.get_by_role("link", name="Download report (HTML)").click()
        report = Path(download_info.value.path()).read_text(encoding="utf-8")
        assert "e2e-synthetic" in report and "Synthetic data" in report
        # Self-contained: plotly.js is inlined, nothing is loaded from elsewhere.
        assert not re.search(r"<(?:script|link|img)[^>]+(?:src|href)=[\"']?(?:https?:)?//", report)
        page.close()
