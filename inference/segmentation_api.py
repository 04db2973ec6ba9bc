"""REST API of segmentation: a cohort's nnU-Net model versions with their cards, starting a
training, importing a results ZIP with its label mapping, activating a model, starting a
segmentation job, and the review queue. Same checks as the pages (``CohortScoped``)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response

from pmpd_web.accounts.permissions import Action
from pmpd_web.cohorts.api import CohortScoped
from pmpd_web.cohorts.serializers import JobSerializer
from pmpd_web.imaging.models import MaskVersion
from pmpd_web.imaging.serializers import MaskVersionSerializer
from pmpd_web.jobs.runner import UserFacingError

from .segmentation import nnunet_core as nc
from .segmentation_jobs import (
    CONFIGURATIONS,
    activate_segmentation_model,
    import_segmentation_model,
    review_queue,
    start_segmentation,
    start_segmentation_training,
)
from .segmentation_models import SegmentationModelVersion


class SegmentationModelSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    job = JobSerializer(read_only=True)

    class Meta:
        model = SegmentationModelVersion
        fields = [
            "id",
            "name",
            "status",
            "origin",
            "is_active",
            "is_synthetic",
            "configuration",
            "folds",
            "label_of_class",
            "card",
            "job",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class TrainSegmentationSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120)
    configuration = serializers.ChoiceField(CONFIGURATIONS, default="2d")
    folds = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=4), default=[0], max_length=5
    )
    epochs = serializers.IntegerField(min_value=1, max_value=1000, default=10)
    iterations_per_epoch = serializers.IntegerField(min_value=1, max_value=250, default=50)


class ImportSegmentationSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120)
    file = serializers.FileField(help_text="ZIP of an nnU-Net v2 results folder")
    pancreas_label = serializers.CharField(help_text="The model's label (name or value)")
    tumour_label = serializers.CharField(
        allow_blank=True,
        default="",
        help_text="The model's label (name or value); empty or left out for a model that "
        "segments the pancreas only (its masks have no tumour: readers draw it)",
    )


class SegmentRequestSerializer(serializers.Serializer):
    study_ids = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list
    )


def _refuse(exc: UserFacingError) -> Response:
    return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)


class SegmentationModelViewSet(
    CohortScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """nnU-Net v2 segmentation models of the cohort; coordinators train, import, activate and
    start segmentation jobs."""

    serializer_class = SegmentationModelSerializer
    read_action = Action.VIEW_IMAGES
    write_action = Action.RUN_JOBS
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return SegmentationModelVersion.objects.none()
        return SegmentationModelVersion.objects.filter(
            cohort_id=self.kwargs["cohort_pk"]
        ).select_related("job", "created_by")

    @extend_schema(request=TrainSegmentationSerializer, responses=SegmentationModelSerializer)
    def create(self, request, cohort_pk=None):
        """Train an nnU-Net on the cohort's approved masks (a job on the gpu queue)."""
        form = TrainSegmentationSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        budget = nc.TrainingBudget(
            configuration=data["configuration"],
            folds=tuple(sorted(set(data["folds"]))),
            epochs=data["epochs"],
            iterations_per_epoch=data["iterations_per_epoch"],
        )
        try:
            version = start_segmentation_training(
                self.cohort, user=request.user, name=data["name"], budget=budget
            )
        except UserFacingError as exc:
            return _refuse(exc)
        return Response(self.get_serializer(version).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=ImportSegmentationSerializer, responses=SegmentationModelSerializer)
    @action(detail=False, methods=["post"], url_path="import")
    def import_model(self, request, cohort_pk=None):
        """Import a ZIP of an nnU-Net v2 results folder, mapping its labels."""
        form = ImportSegmentationSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            version = import_segmentation_model(
                self.cohort,
                user=request.user,
                upload=data["file"],
                name=data["name"],
                pancreas_label=data["pancreas_label"],
                tumour_label=data["tumour_label"] or None,
            )
        except UserFacingError as exc:
            return _refuse(exc)
        return Response(self.get_serializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=SegmentationModelSerializer)
    @action(detail=True, methods=["post"])
    def activate(self, request, cohort_pk=None, pk=None):
        """Make this model the one the cohort's segmentation jobs use."""
        try:
            version = activate_segmentation_model(self.get_object())
        except UserFacingError as exc:
            return _refuse(exc)
        return Response(self.get_serializer(version).data)

    @extend_schema(request=SegmentRequestSerializer, responses=JobSerializer)
    @action(detail=True, methods=["post"])
    def segment(self, request, cohort_pk=None, pk=None):
        """Predict masks for the patients with a CT and no approved mask (or those named)."""
        form = SegmentRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            job = start_segmentation(
                self.cohort,
                self.get_object(),
                user=request.user,
                study_ids=form.validated_data["study_ids"],
            )
        except UserFacingError as exc:
            return _refuse(exc)
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ReviewQueueViewSet(CohortScoped, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Mask versions needing review, the most uncertain first, with who is reviewing each."""

    serializer_class = MaskVersionSerializer
    read_action = Action.VIEW_IMAGES

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return MaskVersion.objects.none()
        return review_queue(self.cohort)
