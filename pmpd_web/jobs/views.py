from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, render

from pmpd_web.accounts.permissions import Action, require

from .models import Job


def visible_job(user, job_id: int) -> Job:
    job = get_object_or_404(Job.objects.select_related("cohort"), pk=job_id)
    if job.cohort_id is None:
        if not user.is_superuser:
            raise Http404("No such job.")
    else:
        require(user, job.cohort_id, Action.VIEW_COHORT)
    return job


@login_required
def job_progress(request, job_id: int):
    """The progress bar partial, polled by htmx until the job finishes."""
    job = visible_job(request.user, job_id)
    return render(request, "jobs/_progress.html", {"job": job})
