"""Pages of mask versions: a patient's version history (who produced, edited and approved
each, the Dice of the automatic versions against the approved one), approve and reject."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pmpd_web.accounts.permissions import Action, can
from pmpd_web.cohorts.decorators import cohort_page
from pmpd_web.cohorts.models import Patient
from pmpd_web.jobs.runner import UserFacingError

from . import mask_versions
from .models import MaskVersion
from .patient_viewer import correction_url


@cohort_page(Action.VIEW_IMAGES)
def patient_masks(request, cohort, study_id: str):
    patient = get_object_or_404(Patient, cohort=cohort, study_id=study_id)
    versions = list(
        MaskVersion.objects.filter(patient=patient)
        .select_related(
            "ct_series__study", "seg_series", "produced_by", "reviewed_by", "edited_from"
        )
        .order_by("-ct_series__is_selected", "ct_series_id", "-number")
    )
    may_annotate = can(request.user, cohort, Action.ANNOTATE)
    for version in versions:
        # A reader corrects a version in OHIF's segmentation mode; saving there stores the
        # edit as the next version.
        version.correction_url = correction_url(version) if may_annotate else None
    return render(
        request,
        "imaging/patient_masks.html",
        {
            "cohort": cohort,
            "patient": patient,
            "versions": versions,
            "may_annotate": may_annotate,
            "changed": mask_versions.approved_mask_changed_at(patient),
        },
    )


def _decide(request, cohort, version_id: int, decide, done: str):
    version = get_object_or_404(MaskVersion, pk=version_id, patient__cohort=cohort)
    try:
        decide(version, request.user, note=request.POST.get("note", ""))
    except UserFacingError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Mask version {version.number} {done}.")
    return redirect("patient-masks", cohort_id=cohort.pk, study_id=version.patient.study_id)


@require_POST
@cohort_page(Action.ANNOTATE)
def approve_mask(request, cohort, version_id: int):
    return _decide(
        request, cohort, version_id, mask_versions.approve, "approved: PMPD now reads it"
    )


@require_POST
@cohort_page(Action.ANNOTATE)
def reject_mask(request, cohort, version_id: int):
    return _decide(request, cohort, version_id, mask_versions.reject, "rejected")
