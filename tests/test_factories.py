"""The factories build valid rows that hang together (a prediction's model version was trained
on its patient's cohort; a volume belongs to its series' patient)."""

from __future__ import annotations

import pytest
from model_factories import (
    CanonicalVolumeFactory,
    DicomInstanceFactory,
    ImageUploadFactory,
    JobFactory,
    MembershipFactory,
    PatientPredictionFactory,
)

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "factory",
    [
        MembershipFactory,
        JobFactory,
        ImageUploadFactory,
        DicomInstanceFactory,
        CanonicalVolumeFactory,
        PatientPredictionFactory,
    ],
)
def test_each_factory_builds_a_valid_row(factory):
    row = factory()
    row.full_clean()
    assert type(row).objects.filter(pk=row.pk).exists()


def test_related_rows_agree():
    prediction = PatientPredictionFactory()
    assert prediction.model_version.trained_on == prediction.patient.cohort
    volume = CanonicalVolumeFactory()
    assert volume.patient == volume.series.study.patient
    two = DicomInstanceFactory.create_batch(2, series=DicomInstanceFactory().series)
    assert two[0].series == two[1].series and two[0].sop_instance_uid != two[1].sop_instance_uid
