"""Issue 9 item 5: the Images page of a patient without any CT lists no series at all (an empty
queryset is falsy: ``queryset or ImageSeries.objects...`` listed every CT of every cohort)."""

from __future__ import annotations

import pytest
from factories import make_patient

from pmpd_web.imaging.models import ImageSeries, ImagingStudy

pytestmark = pytest.mark.django_db


def _ct(patient, uid: str, description: str) -> ImageSeries:
    study = ImagingStudy.objects.create(patient=patient, study_instance_uid=f"{uid}.0")
    return ImageSeries.objects.create(
        study=study,
        series_instance_uid=uid,
        modality="CT",
        description=description,
        geometry={"size": [8, 8, 8], "spacing": [1, 1, 1], "origin": [0, 0, 0]},
    )


def test_images_page_of_a_patient_without_ct_lists_no_other_series(
    cohort, other_cohort, members, client_for
):
    make_patient(cohort, "NO-CT-1")
    neighbour = make_patient(cohort, "WITH-CT-2")
    _ct(neighbour, "2.25.111", "CT OF THE NEIGHBOUR")
    _ct(make_patient(other_cohort, "OTHER-3"), "2.25.222", "CT OF ANOTHER COHORT")
    client = client_for(members["coordinator"])
    page = client.get(f"/cohorts/{cohort.pk}/patients/NO-CT-1/images/")
    assert page.status_code == 200
    for leaked in (b"2.25.111", b"2.25.222", b"CT OF THE NEIGHBOUR", b"CT OF ANOTHER COHORT"):
        assert leaked not in page.content
    assert list(page.context["series"]) == []
    # The patient with a CT still sees exactly theirs.
    page = client.get(f"/cohorts/{cohort.pk}/patients/WITH-CT-2/images/")
    assert [s.series_instance_uid for s in page.context["series"]] == ["2.25.111"]
