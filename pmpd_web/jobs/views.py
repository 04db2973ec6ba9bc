"""The job page (status, progress, a dead worker named as such) and its retry and cancel
buttons, for the person who started the job or a site admin."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pmpd_web.accounts.permissions import Action, require

from . import dispatch
from .models import Job


def visible_job(user, job_id: int) -> Job:
    job = get_object_or_404(Job.objects.select_related("cohort", "created_by"), pk=job_id)
    if job.cohort_id is None:
        if not user.is_superuser:
            raise Http404("No such job.")
    else:
        require(user, job.cohort_id, Action.VIEW_COHORT)
    return job


def may_control(user, job: Job) -> bool:
    """Retry and cancel: the person who started the job, or a site admin."""
    return user.is_superuser or (job.created_by_id is not None and job.created_by_id == user.pk)


def controllable_job(user, job_id: int) -> Job:
    job = visible_job(user, job_id)
    if not may_control(user, job):
        raise PermissionDenied("Only the person who started this job or an admin may change it.")
    return job


@login_required
def job_progress(request, job_id: int):
    """The progress bar partial, polled by htmx until the job finishes."""
    job = visible_job(request.user, job_id)
    return render(request, "jobs/_progress.html", {"job": job})


@login_required
def job_detail(request, job_id: int):
    job = visible_job(request.user, job_id)
    return render(
        request, "jobs/job_detail.html", {"job": job, "may_control": may_control(request.user, job)}
    )


@login_required
@require_POST
def job_retry(request, job_id: int):
    job = controllable_job(request.user, job_id)
    if not job.can_retry:
        messages.error(request, f"A {job.get_status_display().lower()} job cannot be retried.")
    else:
        dispatch.retry(job)
        messages.success(request, "The job is queued again.")
    return redirect("job-detail", job.pk)


@login_required
@require_POST
def job_cancel(request, job_id: int):
    job = controllable_job(request.user, job_id)
    if not job.can_cancel:
        messages.error(request, f"A {job.get_status_display().lower()} job cannot be cancelled.")
    else:
        dispatch.cancel(job)
        messages.success(request, "The job is cancelled.")
    return redirect("job-detail", job.pk)
