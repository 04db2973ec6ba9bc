from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from pmpd_web import api_docs
from pmpd_web.accounts import audit_views
from pmpd_web.cohorts import views as cohort_views
from pmpd_web.imaging import viewer
from pmpd_web.jobs import views as job_views

urlpatterns = [
    path("", cohort_views.cohort_list, name="cohort-list"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
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
    path("cohorts/<int:cohort_id>/audit/", audit_views.cohort_audit, name="cohort-audit"),
    path(
        "cohorts/<int:cohort_id>/audit.csv", audit_views.cohort_audit_csv, name="cohort-audit-csv"
    ),
    path("jobs/<int:job_id>/progress/", job_views.job_progress, name="job-progress"),
    path("", include("pmpd_web.imaging.urls")),
    path("", include("analytics.urls")),
    path("", include("inference.urls")),
    path("dicomweb/", include("pmpd_web.imaging.dicomweb_urls")),
    re_path(r"^ohif/(?P<path>.*)$", viewer.ohif, name="ohif"),
    path("api/", include("pmpd_web.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/redoc.standalone.js", api_docs.redoc_bundle, name="api-redoc-bundle"),
    path(
        "api/redoc/",
        SpectacularRedocView.as_view(url_name="api-schema", template_name="api/redoc.html"),
        name="api-redoc",
    ),
]
