"""Analytics pages (``/analytics/...``), the patient risk page and the REST endpoints
(``/api/analytics/...``); included once from the project's URLconf."""

from django.urls import include, path

from analytics import api, views

api_patterns = [
    path("evaluation/", api.EvaluationView.as_view(), name="api-analytics-evaluation"),
    path("survival/", api.SurvivalView.as_view(), name="api-analytics-survival"),
    path("kaplan-meier/", api.KaplanMeierView.as_view(), name="api-analytics-kaplan-meier"),
    path("cox/", api.CoxView.as_view(), name="api-analytics-cox"),
    path("development/", api.DevelopmentView.as_view(), name="api-analytics-development"),
    path("subgroups/", api.SubgroupsView.as_view(), name="api-analytics-subgroups"),
    path("analysis/", api.AnalysisView.as_view(), name="api-analytics-analysis"),
    path(
        "cohorts/<int:cohort_pk>/patients/<str:study_id>/risk/",
        api.PatientRiskView.as_view(),
        name="api-analytics-patient-risk",
    ),
]

urlpatterns = [
    path("analytics/", views.home, name="analytics-home"),
    path("analytics/report.html", views.report, name="analytics-report"),
    path("analytics/tripod.html", views.tripod_report, name="analytics-tripod"),
    path("analytics/<slug:section>/", views.section, name="analytics-section"),
    path(
        "analytics/<slug:section>/figures/<slug:name>.csv",
        views.figure_data,
        name="analytics-figure-data",
    ),
    path(
        "analytics/<slug:section>/tables/<slug:name>.<str:fmt>",
        views.table_download,
        name="analytics-table",
    ),
    path(
        "analytics/<slug:section>/<slug:kind>/<slug:name>/provenance.txt",
        views.provenance_download,
        name="analytics-provenance",
    ),
    path(
        "cohorts/<int:cohort_id>/patients/<str:study_id>/risk/",
        views.patient_risk,
        name="analytics-patient-risk",
    ),
    path("api/analytics/", include(api_patterns)),
]
