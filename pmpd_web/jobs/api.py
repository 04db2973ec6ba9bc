"""The jobs of the API: read by the members of the job's cohort, retried or cancelled by the
person who started it or a site admin."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from pmpd_web.accounts.permissions import visible_cohorts

from . import dispatch
from .models import Job
from .serializers import JobSerializer
from .views import may_control


class JobViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = JobSerializer
    filterset_fields = ["status", "kind", "cohort"]

    def get_queryset(self):
        user = self.request.user
        jobs = Job.objects.all()
        if user.is_superuser:
            return jobs
        cohorts = Job._meta.get_field("cohort").related_model.objects.all()
        return jobs.filter(cohort__in=visible_cohorts(user, cohorts).values("pk"))

    def _controlled(self) -> Job:
        job = self.get_object()
        if not may_control(self.request.user, job):
            raise PermissionDenied(
                "Only the person who started this job or an admin may change it."
            )
        return job

    def _refused(self, job: Job, verb: str) -> Response:
        return Response(
            {"detail": f"A {job.get_status_display().lower()} job cannot be {verb}."},
            status=status.HTTP_409_CONFLICT,
        )

    @extend_schema(request=None, responses={202: JobSerializer, 409: None, 503: None})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Queue a failed, waiting or lost job again (503 when the queue is unreachable: the
        job stays queued and starts when it is back)."""
        job = self._controlled()
        if not job.can_retry:
            return self._refused(job, "retried")
        job = dispatch.retry(job)
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: JobSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a queued or running job (a running one stops at its next progress report)."""
        job = self._controlled()
        if not job.can_cancel:
            return self._refused(job, "cancelled")
        return Response(JobSerializer(dispatch.cancel(job)).data)
