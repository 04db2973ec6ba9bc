from django.urls import include, path
from rest_framework.routers import DefaultRouter

from pmpd_web.cohorts.api import (
    CohortViewSet,
    PatientViewSet,
    StudyVariableViewSet,
    TableImportViewSet,
)
from pmpd_web.jobs.api import JobViewSet

router = DefaultRouter(trailing_slash=True)
router.register("cohorts", CohortViewSet, basename="api-cohort")
router.register("jobs", JobViewSet, basename="api-job")

cohort_router = DefaultRouter(trailing_slash=True)
cohort_router.include_root_view = False
cohort_router.register("patients", PatientViewSet, basename="api-patient")
cohort_router.register("imports", TableImportViewSet, basename="api-import")
cohort_router.register("variables", StudyVariableViewSet, basename="api-study-variable")

urlpatterns = [
    path("", include(router.urls)),
    path("cohorts/<int:cohort_pk>/", include(cohort_router.urls)),
]
