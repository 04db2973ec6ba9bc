"""Everyday use of the pages (issue 12): navigation and completeness (item 5), the training
form's starting values (item 6), the platform's own error pages and favicon (item 7), and
numbers and words as people read them (item 9)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.template.loader import render_to_string
from engine_fixtures import add_fake_images
from factories import make_patient

from analytics.catalogue import display_rows
from inference.forms import training_defaults
from pmpd_web.imaging.models import ImageSeries, ImagingStudy

pytestmark = pytest.mark.django_db
REPO = Path(__file__).resolve().parents[2]


def test_completeness_counts_only_the_patients_a_variable_applies_to(cohort, members, client_for):
    # 3 without metastasis at diagnosis (developed_metastasis applies), 2 of them recorded;
    # 2 with metastasis (it does not apply to them, and is empty).
    make_patient(cohort, "A", metastasis_at_diagnosis="no", developed_metastasis="yes")
    make_patient(cohort, "B", metastasis_at_diagnosis="no", developed_metastasis="no")
    make_patient(cohort, "C", metastasis_at_diagnosis="no")
    make_patient(cohort, "D", metastasis_at_diagnosis="yes", site_liver=True)
    make_patient(cohort, "E", metastasis_at_diagnosis="yes", site_lung=True)
    html = client_for(members["coordinator"]).get(f"/cohorts/{cohort.pk}/").content.decode()
    row = re.search(r"<tr><td>developed_metastasis</td>.*?</tr>", html, re.S).group(0)
    assert '2 <span class="muted">of 3 eligible</span>' in row and "66.7%" in row
    sites = re.search(r"<tr><td>metastasis_sites</td>.*?</tr>", html, re.S).group(0)
    assert "of 2 eligible" in sites and "100.0%" in sites
    assert 'role="progressbar"' in row and 'aria-label="developed_metastasis completeness"' in row


def test_navigation_offers_analytics_predictions_and_images_to_who_may_use_them(
    cohort, members, client_for
):
    patient = make_patient(cohort, "NAV-1")
    add_fake_images(patient)
    analytics = 'href="/analytics/"'
    for role, sees_analytics in (("statistician", True), ("clinician", False)):
        html = client_for(members[role]).get("/").content.decode()
        assert (analytics in html) == sees_analytics, role
    cohort_page = client_for(members["clinician"]).get(f"/cohorts/{cohort.pk}/").content.decode()
    assert f'href="/cohorts/{cohort.pk}/predictions/"' in cohort_page
    patient_page = client_for(members["coordinator"]).get(f"/cohorts/{cohort.pk}/patients/NAV-1/")
    assert f'href="/cohorts/{cohort.pk}/patients/NAV-1/images/"' in patient_page.content.decode()
    statistician_page = client_for(members["statistician"]).get(
        f"/cohorts/{cohort.pk}/patients/NAV-1/"
    )
    assert "/images/" not in statistician_page.content.decode()


@pytest.mark.parametrize(
    ("n_patients", "depth", "size", "stopping"),
    [(30, 10, 64, "none"), (120, 18, 128, "none"), (400, 50, 224, "loss")],
)
def test_training_defaults_follow_the_cohort_size(n_patients, depth, size, stopping):
    defaults = training_defaults(n_patients)
    assert (defaults.depth, defaults.input_size, defaults.early_stopping) == (
        depth,
        size,
        stopping,
    )
    assert str(n_patients) in defaults.reason


def test_the_training_form_of_a_small_cohort_starts_small_and_says_why(cohort, members, client_for):
    for index in range(12):
        add_fake_images(
            make_patient(cohort, f"T-{index}", metastasis_at_diagnosis="yes" if index % 2 else "no")
        )
    html = client_for(members["coordinator"]).get(f"/cohorts/{cohort.pk}/engine/").content.decode()
    assert re.search(r'<option value="10" selected>ResNet10</option>', html)
    assert 'name="input_size" value="64"' in html
    assert re.search(r'<option value="none" selected>', html)
    assert "12 patients with images and a label, under 50" in html


def test_the_platform_answers_errors_with_its_own_pages(cohort, members, client_for):
    client = client_for(members["clinician"])
    missing = client.get("/no-such-page/")
    assert missing.status_code == 404
    html = missing.content.decode()
    assert "Page not found" in html and "Back to your cohorts" in html and "URLconf" not in html
    assert "pmpd/favicon.svg" in html
    forbidden = client.get(f"/cohorts/{cohort.pk}/import/")
    assert forbidden.status_code == 403 and "Not allowed" in forbidden.content.decode()
    server_error = render_to_string("500.html")
    assert "Something went wrong on the server" in server_error and 'href="/"' in server_error
    assert "Bad request" in render_to_string("400.html")
    assert (REPO / "pmpd_web/static/pmpd/favicon.svg").is_file()


def test_the_demo_serves_with_debug_off_and_static_files_from_whitenoise():
    makefile = (REPO / "Makefile").read_text()
    serve = makefile.split("\nserve:", 1)[1].split("\n\n", 1)[0]
    assert "DJANGO_DEBUG=$${DJANGO_DEBUG:-0}" in serve and "runserver" in serve
    assert settings.WHITENOISE_USE_FINDERS
    assert "whitenoise.middleware.WhiteNoiseMiddleware" in settings.MIDDLEWARE


def test_spacing_and_tiny_statistics_are_shown_with_sensible_digits(cohort, members, client_for):
    import pandas as pd

    patient = make_patient(cohort, "SP-1")
    study = ImagingStudy.objects.create(patient=patient, study_instance_uid="1.2.3.4")
    ImageSeries.objects.create(
        study=study,
        series_instance_uid="1.2.3.4.5",
        modality="CT",
        is_selected=True,
        geometry={"spacing": [0.800000011920929, 0.800000011920929, 2.0]},
    )
    html = (
        client_for(members["coordinator"])
        .get(f"/cohorts/{cohort.pk}/patients/SP-1/images/")
        .content.decode()
    )
    assert "0.8 × 0.8 × 2" in html and "0.800000011920929" not in html
    _, rows = display_rows(pd.DataFrame({"bound": [2.78e-17, 0.00004, 0.0123, -1e-18]}))
    assert [row[0] for row in rows] == ["0", "< 0.0001", "0.0123", "0"]


def test_the_roles_page_says_what_each_role_may_do_in_words(members, client_for):
    html = client_for(members["clinician"]).get("/roles/").content.decode()
    assert "edit_data" not in html and "view_results" not in html
    assert "import tables, upload images" in html and "see PMPD scores" in html


def test_redoc_loads_its_logo_from_the_platform(members, client_for, client):
    assert client.get("/api/redoc/redoc.standalone.js").status_code == 302  # login first
    logged_in = client_for(members["clinician"])
    page = logged_in.get("/api/redoc/").content.decode()
    assert 'src="/api/redoc/redoc.standalone.js"' in page
    bundle = logged_in.get("/api/redoc/redoc.standalone.js")
    assert bundle.status_code == 200 and bundle["Content-Type"].startswith("text/javascript")
    text = bundle.content.decode()
    assert "cdn.redoc.ly" not in text and "/static/pmpd/redoc-logo.svg" in text
    assert not re.findall(r"https://cdn\.[a-z.]+/[^\"']+\.(?:svg|png)", text)
