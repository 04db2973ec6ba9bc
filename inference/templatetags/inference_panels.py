"""The patient page's PMPD detail panel (fold models, metastasis sites, Grad-CAM slices named by
the CT image the viewer shows) and the filters of the fold strip."""

from __future__ import annotations

from django import template

from inference.services import prediction_context
from pmpd_web.accounts.permissions import Action, can
from pmpd_web.imaging.patient_viewer import images_on_grid

register = template.Library()


@register.inclusion_tag("inference/_patient_prediction.html", takes_context=True)
def pmpd_prediction_panel(context, patient, model_version=None) -> dict:
    user = context["request"].user
    panel = prediction_context(user, patient, model_version)
    view = panel["pmpd_prediction"].get("view")
    viewer_slices = {}
    if view is not None and can(user, patient.cohort_id, Action.VIEW_IMAGES):
        thickness = view.model_version.config.get("preprocess", {}).get("slice_thickness_mm", 2.0)
        viewer_slices = images_on_grid(
            patient, view.prediction.slice_indices, slice_thickness_mm=float(thickness)
        )
    return {**panel, "viewer_slices": viewer_slices}


@register.filter
def unit_percent(value: float | None) -> float | None:
    """A value on the 0-1 scale as a percentage of a strip's width (clamped)."""
    if value is None:
        return None
    return round(100.0 * min(max(float(value), 0.0), 1.0), 2)


@register.filter
def get_item(mapping, key):
    """``mapping[key]``, or None: for dictionaries keyed by numbers in templates."""
    return (mapping or {}).get(key)
