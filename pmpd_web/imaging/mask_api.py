"""REST API of mask versions: list a cohort's versions (filter ?study_id= and ?status=), and
approve or reject one (readers and coordinators: ``annotate``)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from pmpd_web.accounts.permissions import Action
from pmpd_web.cohorts.api import CohortScoped
from pmpd_web.jobs.runner import UserFacingError

from . import mask_versions
from .models import MaskVersion
from .serializers import MaskVersionSerializer, ReviewSerializer


class MaskVersionViewSet(
    CohortScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Every version of the patients' pancreas and tumour masks, newest first, with who
    produced, edited and approved each; approve or reject one."""

    serializer_class = MaskVersionSerializer
    read_action = Action.VIEW_IMAGES
    write_action = Action.ANNOTATE
    filterset_fields = ["status", "source"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return MaskVersion.objects.none()
        versions = (
            MaskVersion.objects.filter(patient__cohort_id=self.kwargs["cohort_pk"])
            .select_related(
                "patient", "ct_series", "seg_series", "produced_by", "reviewed_by", "reviewing_by"
            )
            .order_by("patient__study_id", "ct_series_id", "-number")
        )
        study_id = self.request.query_params.get("study_id")
        return versions.filter(patient__study_id=study_id) if study_id else versions

    def _review(self, request, decide):
        review = ReviewSerializer(data=request.data)
        review.is_valid(raise_exception=True)
        try:
            version = decide(self.get_object(), request.user, note=review.validated_data["note"])
        except UserFacingError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(self.get_serializer(self.get_queryset().get(pk=version.pk)).data)

    @extend_schema(request=ReviewSerializer, responses=MaskVersionSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, cohort_pk=None, pk=None):
        """Make this version the approved mask of its CT (the one PMPD reads)."""
        return self._review(request, mask_versions.approve)

    @extend_schema(request=None, responses=MaskVersionSerializer)
    @action(detail=True, methods=["post"])
    def review(self, request, cohort_pk=None, pk=None):
        """Say that you are reviewing this version (the review queue shows it)."""
        version = self.get_object()
        mask_versions.mark_reviewing(version, request.user)
        return Response(self.get_serializer(self.get_queryset().get(pk=version.pk)).data)

    @extend_schema(request=ReviewSerializer, responses=MaskVersionSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request, cohort_pk=None, pk=None):
        """Reject a version that needs review."""
        return self._review(request, mask_versions.reject)
