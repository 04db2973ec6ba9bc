"""REST API of image uploads (resumable, chunked) and of the patients' image series.

Coordinators (``edit_data``) create uploads, declare files, send chunks, finish and follow the
status; whoever may view images lists the series; coordinators change a patient's pick.
"""

from __future__ import annotations

from django.db.models import Count, Exists, OuterRef, Sum
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from pmpd_web.accounts.permissions import Action
from pmpd_web.cohorts.api import CohortScoped
from pmpd_web.cohorts.models import Patient
from pmpd_web.cohorts.serializers import JobSerializer
from pmpd_web.jobs.runner import UserFacingError

from .models import CanonicalVolume, ImageSeries, ImageUpload, UploadFile
from .serializers import (
    DeclareFilesSerializer,
    ImageSeriesSerializer,
    ImageUploadSerializer,
    UploadFileSerializer,
)
from .series_pick import select_series
from .uploads import (
    ChunkConflict,
    DeclaredFile,
    TooLarge,
    create_upload,
    declare_files,
    finish_upload,
    receive_chunk,
)


def _refuse(exc: UserFacingError) -> Response:
    if isinstance(exc, ChunkConflict):
        return Response(
            {"detail": str(exc), "received_bytes": exc.received_bytes},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, TooLarge):
        return Response({"detail": str(exc)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)


class ImageUploadViewSet(
    CohortScoped,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Upload images in resumable chunks: create an upload, declare its files, PUT each
    file's chunks, then finish to queue the ingest (follow it at /api/jobs/{id}/)."""

    serializer_class = ImageUploadSerializer
    read_action = Action.EDIT_DATA
    filterset_fields = ["status"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ImageUpload.objects.none()
        return (
            ImageUpload.objects.filter(cohort_id=self.kwargs["cohort_pk"])
            .select_related("job", "patient", "uploaded_by")
            .annotate(
                n_files=Count("files"),
                size_bytes=Sum("files__size_bytes", default=0),
                received_bytes=Sum("files__received_bytes", default=0),
            )
            .order_by("-created_at", "-id")
        )

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        patient = None
        if data.get("study_id"):
            patient = Patient.objects.filter(cohort=self.cohort, study_id=data["study_id"]).first()
            if patient is None:
                raise ValidationError({"study_id": "Not a patient of this cohort."})
        try:
            upload = create_upload(
                cohort=self.cohort,
                user=request.user,
                patient=patient,
                label_pancreas=data.get("label_pancreas", 1),
                label_tumour=data.get("label_tumour", 2),
                confirm_shared_source=data.get("confirm_shared_source", False),
            )
        except UserFacingError as exc:
            return _refuse(exc)
        upload = self.get_queryset().get(pk=upload.pk)
        return Response(self.get_serializer(upload).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=DeclareFilesSerializer, responses=UploadFileSerializer(many=True))
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def files(self, request, cohort_pk=None, pk=None):
        """GET: the upload's files, their received bytes and status. POST: declare files
        (name, size, optional sha256 and study_id); declaring a file again returns it with its
        received bytes: resume from there."""
        upload = self.get_object()
        if request.method == "GET":
            return Response(UploadFileSerializer(upload.files.all(), many=True).data)
        serializer = DeclareFilesSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            declared = declare_files(
                upload,
                [
                    DeclaredFile(
                        name=f["name"],
                        size=f["size"],
                        sha256=f.get("sha256", ""),
                        study_id=f.get("study_id", ""),
                    )
                    for f in serializer.validated_data["files"]
                ],
            )
        except UserFacingError as exc:
            return _refuse(exc)
        return Response(UploadFileSerializer(declared, many=True).data)

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def finish(self, request, cohort_pk=None, pk=None):
        """All files received: queue the ingest job on the cpu queue."""
        upload = self.get_object()
        try:
            job = finish_upload(upload, request.user)
        except UserFacingError as exc:
            return _refuse(exc)
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class UploadFileViewSet(CohortScoped, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A file of an upload: its received bytes (to resume) and ingest status; PUT its chunks
    to ``content/``. (The upload's ``files/`` lists and declares them.)"""

    serializer_class = UploadFileSerializer
    read_action = Action.EDIT_DATA

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return UploadFile.objects.none()
        return UploadFile.objects.filter(
            upload_id=self.kwargs["upload_pk"], upload__cohort_id=self.kwargs["cohort_pk"]
        )

    @extend_schema(
        request={"application/octet-stream": OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter(
                "offset",
                int,
                description="Where the chunk starts (or send Content-Range: bytes a-b/size)",
            )
        ],
        responses={
            200: UploadFileSerializer,
            409: OpenApiResponse(description="Resume from the received_bytes in the body"),
            413: OpenApiResponse(description="Over a size limit"),
        },
    )
    @action(detail=True, methods=["put", "post"], url_path="content")
    def content(self, request, cohort_pk=None, upload_pk=None, pk=None):
        """One chunk of the file's bytes, starting at its received bytes."""
        upload_file = self.get_object()
        django_request = request._request
        try:
            length = int(django_request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        offset = _chunk_offset(django_request, length, upload_file.size_bytes)
        if offset is None:
            return Response(
                {"detail": "Give the chunk's start as ?offset= or a Content-Range header."},
                status=status.HTTP_400_BAD_REQUEST,
            )
        try:
            upload_file = receive_chunk(
                upload_file, offset=offset, length=length, stream=django_request
            )
        except UserFacingError as exc:
            return _refuse(exc)
        return Response(UploadFileSerializer(upload_file).data)


def _chunk_offset(request, length: int, size: int) -> int | None:
    content_range = request.META.get("HTTP_CONTENT_RANGE", "")
    if content_range:
        try:
            unit, _, rest = content_range.partition(" ")
            span, _, total = rest.partition("/")
            start, _, end = span.partition("-")
            start_i, end_i = int(start), int(end)
        except ValueError:
            return None
        if unit != "bytes" or end_i - start_i + 1 != length or total not in ("*", str(size)):
            return None
        return start_i
    try:
        return int(request.GET["offset"])
    except (KeyError, ValueError):
        return None


class ImageSeriesViewSet(
    CohortScoped, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """The patients' de-identified series (CT and SEG), with the pick; filter ?study_id=."""

    serializer_class = ImageSeriesSerializer
    read_action = Action.VIEW_IMAGES
    filterset_fields = ["modality", "is_selected"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ImageSeries.objects.none()
        series = (
            ImageSeries.objects.filter(study__patient__cohort_id=self.kwargs["cohort_pk"])
            .select_related("study__patient", "picked_by")
            .annotate(
                has_mask=Exists(
                    CanonicalVolume.objects.filter(
                        series=OuterRef("pk"), kind=CanonicalVolume.Kind.MASK
                    )
                )
            )
            .order_by("study__patient__study_id", "modality", "series_number", "id")
        )
        study_id = self.request.query_params.get("study_id")
        return series.filter(study__patient__study_id=study_id) if study_id else series

    @extend_schema(request=None, responses=ImageSeriesSerializer)
    @action(detail=True, methods=["post"])
    def select(self, request, cohort_pk=None, pk=None):
        """Make this CT series the one the engine uses for its patient (a coordinator's pick
        stays until changed)."""
        series = self.get_object()
        try:
            select_series(series, request.user)
        except UserFacingError as exc:
            return _refuse(exc)
        return Response(self.get_serializer(self.get_queryset().get(pk=series.pk)).data)
