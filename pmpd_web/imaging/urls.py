"""Pages and API of image uploads and ingest (the DICOMweb endpoints are in dicomweb_urls)."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import mask_views, views
from .api import ImageSeriesViewSet, ImageUploadViewSet, UploadFileViewSet
from .mask_api import MaskVersionViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("image-uploads", ImageUploadViewSet, basename="api-image-upload")
router.register(
    r"image-uploads/(?P<upload_pk>[0-9]+)/files", UploadFileViewSet, basename="api-upload-file"
)
router.register("image-series", ImageSeriesViewSet, basename="api-image-series")
router.register("mask-versions", MaskVersionViewSet, basename="api-mask-version")

urlpatterns = [
    path("api/cohorts/<int:cohort_pk>/", include(router.urls)),
    path("cohorts/<int:cohort_id>/images/", views.images_page, name="cohort-images"),
    path(
        "cohorts/<int:cohort_id>/images/uploads/<int:upload_id>/",
        views.upload_detail,
        name="image-upload-detail",
    ),
    path(
        "cohorts/<int:cohort_id>/images/uploads/<int:upload_id>/status/",
        views.upload_status,
        name="image-upload-status",
    ),
    path(
        "cohorts/<int:cohort_id>/patients/<str:study_id>/images/",
        views.patient_images,
        name="patient-images",
    ),
    path(
        "cohorts/<int:cohort_id>/patients/<str:study_id>/images/select/",
        views.patient_images_select,
        name="patient-images-select",
    ),
    path(
        "cohorts/<int:cohort_id>/patients/<str:study_id>/masks/",
        mask_views.patient_masks,
        name="patient-masks",
    ),
    path(
        "cohorts/<int:cohort_id>/masks/<int:version_id>/approve/",
        mask_views.approve_mask,
        name="mask-approve",
    ),
    path(
        "cohorts/<int:cohort_id>/masks/<int:version_id>/reject/",
        mask_views.reject_mask,
        name="mask-reject",
    ),
]
