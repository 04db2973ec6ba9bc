"""REST API of the engine: the model registry (list, retrieve, start a training, activate),
a cohort's predictions (all, or one patient's), starting a scoring, and the Grad-CAM overlays.
Every endpoint goes through the same checks as the pages (``api_check``, ``registry``)."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.db.models import QuerySet
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pmpd_web.accounts.permissions import Action
from pmpd_web.accounts.permissions import api_check as check
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.cohorts.serializers import JobSerializer
from pmpd_web.jobs.runner import UserFacingError

from . import registry
from .jobs import start_scoring, start_training
from .models import ModelVersion, PatientPrediction
from .serializers import (
    ModelVersionSerializer,
    PredictionSerializer,
    ScoringRequestSerializer,
    TrainingRequestSerializer,
)


class ModelVersionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """The model registry: the versions you may see (trained on, or scored, a cohort where
    your role may view results)."""

    serializer_class = ModelVersionSerializer
    filterset_fields = ["status", "is_active", "is_synthetic"]
    ordering_fields = ["created_at", "name"]

    def get_queryset(self) -> QuerySet[ModelVersion]:
        if getattr(self, "swagger_fake_view", False):
            return ModelVersion.objects.none()
        return registry.visible_model_versions(self.request.user).select_related("trained_on")

    @extend_schema(
        request=TrainingRequestSerializer,
        responses={202: ModelVersionSerializer},
        description="Start a 5-fold cross-validation of a new version on a cohort (coordinators "
        "of that cohort). Poll /api/jobs/{job}/ for its progress.",
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        payload = TrainingRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        check(request.user, data["cohort"], Action.RUN_JOBS)
        cohort = get_object_or_404(Cohort, pk=data["cohort"])
        try:
            version = start_training(
                cohort,
                user=request.user,
                choices=registry.TrainingChoices(
                    depth=data["depth"],
                    input_size=data["input_size"],
                    max_epochs=data["max_epochs"],
                    n_folds=data["n_folds"],
                    seed=data["seed"],
                    early_stopping_metric=data["early_stopping"],
                ),
                name=data["name"],
            )
        except UserFacingError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        version.refresh_from_db()
        return Response(self.get_serializer(version).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=ModelVersionSerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str | None = None) -> Response:
        """Make this version the active one (site administrators and the coordinators of the
        cohort it was trained on)."""
        version = self.get_object()
        if not registry.can_activate(request.user, version):
            raise PermissionDenied(
                "Only site administrators and the coordinators of the training cohort can "
                "activate a model version."
            )
        try:
            version = registry.activate(version, request.user)
        except UserFacingError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        return Response(self.get_serializer(version).data)


class PredictionFilter(filters.FilterSet):
    study_id = filters.CharFilter(field_name="patient__study_id")

    class Meta:
        model = PatientPrediction
        fields = ["model_version", "source", "predicted_metastasis", "fewer_than_4_tumour_slices"]


class CohortPredictions(generics.ListAPIView):
    """A cohort's predictions, one per patient and model version (filter by model_version)."""

    serializer_class = PredictionSerializer
    filterset_class = PredictionFilter
    ordering_fields = ["metastasis_risk_score", "updated_at"]
    ordering = ["patient__study_id", "model_version_id"]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        check(request.user, int(kwargs["cohort_pk"]), Action.VIEW_RESULTS)
        if request.query_params.get("model_version"):
            registry.model_version_for(
                request.user, request.query_params["model_version"], api=True
            )

    def get_queryset(self) -> QuerySet[PatientPrediction]:
        if getattr(self, "swagger_fake_view", False):
            return PatientPrediction.objects.none()
        queryset = PatientPrediction.objects.filter(
            patient__cohort_id=self.kwargs["cohort_pk"]
        ).select_related("patient", "model_version")
        if "study_id" in self.kwargs:
            patient = get_object_or_404(
                Patient, cohort_id=self.kwargs["cohort_pk"], study_id=self.kwargs["study_id"]
            )
            queryset = queryset.filter(patient=patient)
        return queryset


class PatientPredictions(CohortPredictions):
    """One patient's predictions (one per model version that scored it)."""


class ScoreCohort(APIView):
    @extend_schema(
        request=ScoringRequestSerializer,
        responses={202: JobSerializer},
        description="Score every patient of the cohort that has images with a ready version "
        "(default: the active one); poll /api/jobs/{id}/.",
    )
    def post(self, request: Request, cohort_pk: int) -> Response:
        check(request.user, cohort_pk, Action.RUN_JOBS)
        cohort = get_object_or_404(Cohort, pk=cohort_pk)
        payload = ScoringRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        choices = registry.scoring_choices(request.user)
        wanted = payload.validated_data.get("model_version")
        version = (
            choices.filter(pk=wanted).first() if wanted else choices.filter(is_active=True).first()
        )
        if version is None:
            raise ValidationError(
                {
                    "model_version": "No such ready model version."
                    if wanted
                    else "No version is active; name one."
                }
            )
        try:
            job = start_scoring(cohort, version, user=request.user)
        except UserFacingError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class GradcamOverlay(APIView):
    @extend_schema(responses={(200, "image/png"): OpenApiResponse(description="PNG overlay")})
    def get(self, request: Request, cohort_pk: int, prediction_id: int, index: int) -> FileResponse:
        """One Grad-CAM overlay (PNG) of a prediction: the scored CT slice under its heatmap
        (roles that may view images)."""
        check(request.user, cohort_pk, Action.VIEW_IMAGES)
        prediction = get_object_or_404(
            PatientPrediction, pk=prediction_id, patient__cohort_id=cohort_pk
        )
        if index >= len(prediction.gradcam_files) or not default_storage.exists(
            prediction.gradcam_files[index]
        ):
            raise NotFound("No such overlay.")
        return FileResponse(
            default_storage.open(prediction.gradcam_files[index], "rb"), content_type="image/png"
        )
