"""The review queue page: a cohort's mask versions needing review, the most uncertain first,
with who is reviewing each, and the cohort's segmentation models with their cards."""

from __future__ import annotations

from django.shortcuts import render

from pmpd_web.accounts.permissions import Action, can
from pmpd_web.cohorts.decorators import cohort_page

from .segmentation_jobs import review_queue
from .segmentation_models import SegmentationModelVersion


@cohort_page(Action.VIEW_IMAGES)
def review_page(request, cohort):
    return render(
        request,
        "inference/review_queue.html",
        {
            "cohort": cohort,
            "queue": review_queue(cohort)[:500],
            "models": SegmentationModelVersion.objects.filter(cohort=cohort),
            "may_annotate": can(request.user, cohort, Action.ANNOTATE),
        },
    )
