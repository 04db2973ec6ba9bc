"""Pages and API of the engine (included at the site's root by ``pmpd_web.urls``)."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from . import api, segmentation_views, views
from .segmentation_api import ReviewQueueViewSet, SegmentationModelViewSet

# SimpleRouter: the API root view at /api/ belongs to pmpd_web.api_urls.
router = SimpleRouter(trailing_slash=True)
router.register("model-versions", api.ModelVersionViewSet, basename="api-model-version")
cohort_router = SimpleRouter(trailing_slash=True)
cohort_router.register(
    "segmentation-models", SegmentationModelViewSet, basename="api-segmentation-model"
)
cohort_router.register("review-queue", ReviewQueueViewSet, basename="api-review-queue")

urlpatterns = [
    path("models/", views.model_list, name="inference-model-list"),
    path("models/<int:version_id>/", views.model_detail, name="inference-model-detail"),
    path(
        "models/<int:version_id>/activate/", views.model_activate, name="inference-model-activate"
    ),
    path("cohorts/<int:cohort_id>/engine/", views.cohort_engine, name="inference-cohort-engine"),
    path("cohorts/<int:cohort_id>/engine/train/", views.cohort_train, name="inference-train"),
    path("cohorts/<int:cohort_id>/engine/score/", views.cohort_score, name="inference-score"),
    path(
        "cohorts/<int:cohort_id>/predictions/",
        views.cohort_predictions,
        name="inference-predictions",
    ),
    path(
        "cohorts/<int:cohort_id>/patients/<str:study_id>/predictions/<int:prediction_id>/"
        "gradcam/<int:index>.png",
        views.gradcam_image,
        name="inference-gradcam",
    ),
    path("api/", include(router.urls)),
    path("api/cohorts/<int:cohort_pk>/", include(cohort_router.urls)),
    path("cohorts/<int:cohort_id>/review/", segmentation_views.review_page, name="review-queue"),
    path(
        "cohorts/<int:cohort_id>/review/<int:version_id>/claim/",
        segmentation_views.review_claim,
        name="review-claim",
    ),
    path(
        "cohorts/<int:cohort_id>/segmentation/",
        segmentation_views.models_page,
        name="segmentation-models",
    ),
    path(
        "cohorts/<int:cohort_id>/segmentation/train/",
        segmentation_views.train,
        name="segmentation-train",
    ),
    path(
        "cohorts/<int:cohort_id>/segmentation/import/",
        segmentation_views.import_upload,
        name="segmentation-import",
    ),
    path(
        "cohorts/<int:cohort_id>/segmentation/import/labels/",
        segmentation_views.import_labels,
        name="segmentation-import-labels",
    ),
    path(
        "cohorts/<int:cohort_id>/segmentation/predict/",
        segmentation_views.predict,
        name="segmentation-predict",
    ),
    path(
        "cohorts/<int:cohort_id>/segmentation/<int:model_id>/",
        segmentation_views.model_card,
        name="segmentation-model-card",
    ),
    path(
        "cohorts/<int:cohort_id>/segmentation/<int:model_id>/activate/",
        segmentation_views.model_activate,
        name="segmentation-model-activate",
    ),
    path(
        "api/cohorts/<int:cohort_pk>/predictions/",
        api.CohortPredictions.as_view(),
        name="api-cohort-predictions",
    ),
    path(
        "api/cohorts/<int:cohort_pk>/predictions/<int:prediction_id>/gradcam/<int:index>/",
        api.GradcamOverlay.as_view(),
        name="api-gradcam",
    ),
    path(
        "api/cohorts/<int:cohort_pk>/patients/<str:study_id>/predictions/",
        api.PatientPredictions.as_view(),
        name="api-patient-predictions",
    ),
    path("api/cohorts/<int:cohort_pk>/score/", api.ScoreCohort.as_view(), name="api-score"),
]
