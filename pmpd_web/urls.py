from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.urls import include, path, re_path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from pmpd_web import api_docs
from pmpd_web.cohorts import audit_views
from pmpd_web.cohorts import views as cohort_views
from pmpd_web.imaging import viewer
from pmpd_web.jobs import views as job_views

urlpatterns = [
    path("", cohort_views.cohort_list, name="cohort-list"),
    path("accounts/", include("pmpd_web.accounts.urls")),
    path("admin/", admin.site.urls),
    path("roles/", cohort_views.roles_help, name="roles"),
    path("cohorts/new/", cohort_views.cohort_create, name="cohort-create"),
    path("cohorts/<int:cohort_id>/", cohort_views.cohort_detail, name="cohort-detail"),
    path(
        "cohorts/<int:cohort_id>/patients/<str:study_id>/",
        cohort_views.patient_detail,
        name="patient-detail",
    ),
    path("cohorts/<int:cohort_id>/import/", cohort_views.import_page, name="table-import"),
    path(
        "cohorts/<int:cohort_id>/variables/",
        cohort_views.study_variables,
        name="study-variables",
    ),
    path(
        "cohorts/<int:cohort_id>/variables/<str:name>/delete/",
        cohort_views.study_variable_delete,
        name="study-variable-delete",
    ),
    path(
        "cohorts/<int:cohort_id>/import/<int:import_id>/",
        cohort_views.import_detail,
        name="table-import-detail",
    ),
    path(
        "cohorts/<int:cohort_id>/import/<int:import_id>/commit/",
        cohort_views.import_commit,
        name="table-import-commit",
    ),
    path(
        "cohorts/<int:cohort_id>/export.<str:fmt>",
        cohort_views.export_table,
        name="export",
    ),
    path("template.<str:fmt>", cohort_views.template_download, name="template"),
    path("jobs/<int:job_id>/", job_views.job_detail, name="job-detail"),
    path("cohorts/<int:cohort_id>/audit/", audit_views.cohort_audit, name="cohort-audit"),
    path(
        "cohorts/<int:cohort_id>/audit.csv", audit_views.cohort_audit_csv, name="cohort-audit-csv"
    ),
    path("jobs/<int:job_id>/progress/", job_views.job_progress, name="job-progress"),
    path("jobs/<int:job_id>/retry/", job_views.job_retry, name="job-retry"),
    path("jobs/<int:job_id>/cancel/", job_views.job_cancel, name="job-cancel"),
    path("", include("pmpd_web.imaging.urls")),
    path("", include("analytics.urls")),
    path("", include("inference.urls")),
    path("dicomweb/", include("pmpd_web.imaging.dicomweb_urls")),
    re_path(r"^ohif/(?P<path>.*)$", viewer.ohif, name="ohif"),
    path("api/", include("pmpd_web.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # Documentation pages send anonymous visitors to the login (the schema itself answers 401).
    # The split view serves its start-up script as a file: the pages' CSP allows no inline script.
    path(
        "api/docs/",
        login_required(SpectacularSwaggerSplitView.as_view(url_name="api-schema")),
        name="api-docs",
    ),
    path("api/redoc/redoc.standalone.js", api_docs.redoc_bundle, name="api-redoc-bundle"),
    path(
        "api/redoc/",
        login_required(
            SpectacularRedocView.as_view(url_name="api-schema", template_name="api/redoc.html")
        ),
        name="api-redoc",
    ),
]
