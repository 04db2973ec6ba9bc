"""The Images card of the cohort page (``imaging/_cohort_card.html``) and the CT card of the
patient page (``imaging/_patient_viewer.html``)."""

from __future__ import annotations

from django import template

from pmpd_web.accounts.permissions import Action, can

register = template.Library()


@register.inclusion_tag("imaging/_card.html", takes_context=True)
def imaging_card(context) -> dict:
    from pmpd_web.imaging.views import _uploads, imaging_counts

    cohort = context["cohort"]
    user = context["request"].user
    may_upload = can(user, cohort, Action.EDIT_DATA)
    return {
        "cohort": cohort,
        "counts": imaging_counts(cohort),
        "may_upload": may_upload,
        "may_view_images": can(user, cohort, Action.VIEW_IMAGES),
        "uploads": _uploads(cohort)[:5] if may_upload else [],
    }


@register.inclusion_tag("imaging/_patient_viewer.html", takes_context=True)
def patient_images_panel(context, patient) -> dict:
    """The patient page's CT card: the embedded viewer on the patient's CT study."""
    from pmpd_web.imaging.patient_viewer import patient_viewer

    may_view = can(context["request"].user, patient.cohort_id, Action.VIEW_IMAGES)
    return {
        "patient": patient,
        "may_view_images": may_view,
        "viewer": patient_viewer(patient) if may_view else None,
    }


@register.inclusion_tag("imaging/_patient_masks_note.html", takes_context=True)
def mask_versions_note(context) -> dict:
    """On the patient page: the masks' review state and whether PMPD's inputs are stale."""
    from pmpd_web.imaging.mask_versions import approved_mask_changed_at
    from pmpd_web.imaging.models import MaskVersion

    cohort, patient = context["cohort"], context["patient"]
    user = context["request"].user
    if not can(user, cohort, Action.VIEW_IMAGES):
        return {"show": False}
    return {
        "show": True,
        "cohort": cohort,
        "patient": patient,
        "changed": approved_mask_changed_at(patient),
        "needs_review": MaskVersion.objects.filter(
            patient=patient, status=MaskVersion.Status.NEEDS_REVIEW
        ).count(),
    }
