"""factory_boy factories for every model the tests build rows of: accounts, cohorts, jobs,
imaging and the engine. Each builds a valid row with the fewest decisions made for the test;
a test states only what it is about (``ImageSeriesFactory(study__patient=patient)``)."""

from __future__ import annotations

import factory
from django.contrib.auth.models import User
from factory.django import DjangoModelFactory

from inference.models import ModelVersion, PatientPrediction
from pmpd_web.accounts.models import Membership, Role
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.imaging.models import (
    CanonicalVolume,
    DicomInstance,
    ImageSeries,
    ImageUpload,
    ImagingStudy,
)
from pmpd_web.jobs.models import Job

GEOMETRY = {"size": [8, 8, 8], "spacing": [1.0, 1.0, 2.0], "origin": [0.0, 0.0, 0.0]}


class UserFactory(DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-factory")


class CohortFactory(DjangoModelFactory):
    class Meta:
        model = Cohort

    name = factory.Sequence(lambda n: f"Cohort {n}")
    centres = "Madrid, Barcelona"


class MembershipFactory(DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    cohort = factory.SubFactory(CohortFactory)
    role = Role.CLINICIAN


class PatientFactory(DjangoModelFactory):
    class Meta:
        model = Patient

    cohort = factory.SubFactory(CohortFactory)
    study_id = factory.Sequence(lambda n: f"PAT-{n:04d}")
    age_at_diagnosis_years = 66
    sex = "female"
    centre = "Madrid"
    tumour_location = "head"
    metastasis_at_diagnosis = "no"
    overall_survival_days = 400
    vital_status = "dead"


class JobFactory(DjangoModelFactory):
    class Meta:
        model = Job

    kind = Job.Kind.TABLE_IMPORT
    cohort = factory.SubFactory(CohortFactory)
    created_by = factory.SubFactory(UserFactory)


class ImageUploadFactory(DjangoModelFactory):
    class Meta:
        model = ImageUpload

    cohort = factory.SubFactory(CohortFactory)
    uploaded_by = factory.SubFactory(UserFactory)


class ImagingStudyFactory(DjangoModelFactory):
    class Meta:
        model = ImagingStudy

    patient = factory.SubFactory(PatientFactory)
    study_instance_uid = factory.Sequence(lambda n: f"2.25.{1000 + n}")
    study_date = "20240101"


class ImageSeriesFactory(DjangoModelFactory):
    class Meta:
        model = ImageSeries

    study = factory.SubFactory(ImagingStudyFactory)
    series_instance_uid = factory.Sequence(lambda n: f"2.25.{2000 + n}")
    modality = "CT"
    description = "Portal venous 2 mm"
    geometry = factory.LazyFunction(lambda: dict(GEOMETRY))
    is_selected = True


class DicomInstanceFactory(DjangoModelFactory):
    class Meta:
        model = DicomInstance

    series = factory.SubFactory(ImageSeriesFactory)
    sop_instance_uid = factory.Sequence(lambda n: f"2.25.{3000 + n}")
    sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"
    instance_number = factory.Sequence(lambda n: n + 1)
    transfer_syntax_uid = "1.2.840.10008.1.2.1"
    file = factory.LazyAttribute(lambda o: f"dicom/{o.sop_instance_uid}.dcm")
    metadata = factory.LazyAttribute(
        lambda o: {
            "00080018": {"vr": "UI", "Value": [o.sop_instance_uid]},
            "00080060": {"vr": "CS", "Value": [o.series.modality]},
        }
    )


class CanonicalVolumeFactory(DjangoModelFactory):
    class Meta:
        model = CanonicalVolume

    series = factory.SubFactory(ImageSeriesFactory)
    patient = factory.LazyAttribute(lambda o: o.series.study.patient)
    kind = CanonicalVolume.Kind.CT
    file = factory.LazyAttribute(lambda o: f"volumes/{o.series.series_instance_uid}-ct.nii.gz")
    content_hash = factory.Sequence(lambda n: f"{n:064x}")
    geometry = factory.LazyFunction(lambda: dict(GEOMETRY))


class ModelVersionFactory(DjangoModelFactory):
    class Meta:
        model = ModelVersion

    name = factory.Sequence(lambda n: f"PMPD test version {n}")
    status = ModelVersion.Status.READY
    trained_on = factory.SubFactory(CohortFactory)
    is_synthetic = True


class PatientPredictionFactory(DjangoModelFactory):
    class Meta:
        model = PatientPrediction

    patient = factory.SubFactory(PatientFactory)
    model_version = factory.SubFactory(
        ModelVersionFactory, trained_on=factory.SelfAttribute("..patient.cohort")
    )
    source = PatientPrediction.Source.ENSEMBLE
    metastasis_risk_score = 0.42
    mrs_per_fold = factory.LazyFunction(lambda: [0.40, 0.41, 0.42, 0.43, 0.44])
    positive_fraction = 0.5
    predicted_metastasis = False
    n_slices = 4
    slice_indices = factory.LazyFunction(lambda: [10, 11, 12, 13])
    slice_probabilities = factory.LazyFunction(lambda: [[0.3, 0.4, 0.5, 0.6]] * 5)
    site_probabilities = factory.LazyFunction(lambda: {"liver": 0.2, "lung": 0.1})
    gradcam_files = factory.LazyAttribute(
        lambda o: [f"gradcam/{o.patient.study_id}-{i}.png" for i in o.slice_indices]
    )
    input_hash = factory.Sequence(lambda n: f"{n:064x}")
