"""REST API over cohorts, patients, imports and jobs. Every endpoint goes through ``can``."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Count
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction, Membership, Role
from pmpd_web.accounts.permissions import Action, visible_cohorts
from pmpd_web.accounts.permissions import api_check as check
from pmpd_web.jobs.runner import UserFacingError

from . import services
from .filters import PatientFilter
from .importer import start_commit, upload_table
from .models import Cohort, Patient, StudyVariable, TableImport, table_columns
from .serializers import (
    CohortSerializer,
    JobSerializer,
    PatientSerializer,
    StudyVariableSerializer,
    TableImportSerializer,
)
from .table import FIELD_NAMES, write_csv, write_xlsx
from .variables import define_variable, errors_of, remove_variable
from .views import CONTENT_TYPES, _download


class CohortViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = CohortSerializer
    filterset_fields = ["role", "is_synthetic"]
    search_fields = ["name", "description", "centres"]
    ordering_fields = ["name", "created_at"]

    def get_queryset(self):
        return (
            visible_cohorts(self.request.user, Cohort.objects.all())
            .annotate(n_patients=Count("patients", distinct=True))
            .order_by("name")
        )

    def create(self, request, *args, **kwargs):
        # The permission first: validating the name before it told anyone which cohort names
        # exist ("already exists"), including cohorts they may not see.
        if not request.user.has_perm("cohorts.add_cohort"):
            raise PermissionDenied("You are not allowed to create cohorts.")
        return super().create(request, *args, **kwargs)

    def perform_create(self, serializer):
        with transaction.atomic():
            cohort = serializer.save()
            Membership.objects.create(user=self.request.user, cohort=cohort, role=Role.COORDINATOR)
            audit(self.request.user, AuditAction.CREATE_COHORT, cohort=cohort)

    def perform_update(self, serializer):
        check(self.request.user, serializer.instance.pk, Action.EDIT_DATA)
        cohort = serializer.save()
        audit(
            self.request.user,
            AuditAction.CHANGE_COHORT,
            cohort=cohort,
            fields=sorted(serializer.validated_data),
        )

    @extend_schema(
        parameters=[OpenApiParameter("file_format", str, enum=["csv", "xlsx"])],
        responses={(200, "text/csv"): bytes},
    )
    @action(detail=True, methods=["get"])
    def export(self, request, pk=None):
        """The cohort's clinical table in the import template's columns."""
        cohort = self.get_object()
        check(request.user, cohort.pk, Action.EXPORT_TABLE)
        fmt = request.query_params.get("file_format", "csv")
        if fmt not in CONTENT_TYPES:
            raise ValidationError({"file_format": "csv or xlsx"})
        records = (
            Patient.objects.filter(cohort=cohort)
            .order_by("study_id")
            .values(*FIELD_NAMES, "study_values")
        )
        audit(request.user, AuditAction.EXPORT_TABLE, cohort=cohort, format=fmt, via="api")
        columns = table_columns(cohort)
        data = (
            write_xlsx(records, columns=columns)
            if fmt == "xlsx"
            else write_csv(records, columns=columns)
        )
        return _download(data, f"cohort-{cohort.pk}.{fmt}")


class CohortScoped:
    """Mixin: resolves ``cohort_pk`` from the URL and checks ``action`` for the request."""

    read_action = Action.VIEW_PATIENTS
    write_action = Action.EDIT_DATA

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        cohort_id = int(kwargs["cohort_pk"])
        safe = request.method in ("GET", "HEAD", "OPTIONS")
        check(request.user, cohort_id, self.read_action if safe else self.write_action)
        self.cohort = get_object_or_404(Cohort, pk=cohort_id)


class PatientViewSet(
    CohortScoped,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = PatientSerializer
    lookup_field = "study_id"
    lookup_value_regex = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
    filterset_class = PatientFilter
    search_fields = ["study_id"]
    ordering_fields = list(services.SORTABLE)
    ordering = ["study_id"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Patient.objects.none()
        return Patient.objects.filter(cohort_id=self.kwargs["cohort_pk"])

    def retrieve(self, request, *args, **kwargs):
        patient = self.get_object()
        audit(request.user, AuditAction.VIEW_PATIENT, patient=patient, via="api")
        return Response(self.get_serializer(patient).data)

    def perform_update(self, serializer):
        with transaction.atomic():
            patient = serializer.save()
            self.cohort.bump_data_version()
            audit(
                self.request.user,
                AuditAction.CHANGE_PATIENT,
                patient=patient,
                via="api",
                fields=sorted(serializer.validated_data),
            )


class TableImportViewSet(
    CohortScoped,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Upload a table (CSV or XLSX) for a dry-run preview, then commit it as a job."""

    serializer_class = TableImportSerializer
    parser_classes = [MultiPartParser, FormParser]
    read_action = Action.EDIT_DATA

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return TableImport.objects.none()
        return TableImport.objects.filter(cohort_id=self.kwargs["cohort_pk"]).select_related("job")

    def create(self, request, *args, **kwargs):
        upload = request.FILES.get("file")
        if upload is None:
            raise ValidationError({"file": "Attach the table as 'file' (CSV or XLSX)."})
        try:
            table_import = upload_table(
                cohort=self.cohort, user=request.user, data=upload.read(), filename=upload.name
            )
        except UserFacingError as exc:
            raise ValidationError({"file": str(exc)}) from None
        return Response(self.get_serializer(table_import).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def commit(self, request, cohort_pk=None, pk=None):
        """Import the previewed table, all rows or none, as a job; poll /api/jobs/{id}/."""
        table_import = self.get_object()
        try:
            job = start_commit(table_import, request.user)
        except UserFacingError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class StudyVariableViewSet(
    CohortScoped,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The cohort's study-defined variables (REDCap's data dictionary): name, label, type
    (number, int = whole number, choice = category, date), unit, allowed range or values,
    required. Coordinators define and remove them; every member sees them. Removing a variable
    removes its values from every patient."""

    serializer_class = StudyVariableSerializer
    lookup_field = "name"
    lookup_value_regex = r"[a-z][a-z0-9_]{0,39}"
    pagination_class = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return StudyVariable.objects.none()
        return StudyVariable.objects.filter(cohort_id=self.kwargs["cohort_pk"])

    def perform_create(self, serializer):
        from django.core.exceptions import ValidationError as ModelValidationError

        try:
            serializer.instance = define_variable(
                cohort=self.cohort, user=self.request.user, values=serializer.validated_data
            )
        except ModelValidationError as error:
            raise ValidationError(errors_of(error)) from None

    def perform_destroy(self, instance):
        remove_variable(variable=instance, user=self.request.user)
