"""The CT series the engine uses for a patient: the pick rule applied to the stored series (see
``dicom_series.pick_series``), or the series a coordinator chose."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef

from pmpd_web.accounts.audit import record as audit
from pmpd_web.cohorts.models import Patient
from pmpd_web.jobs.runner import UserFacingError

from .dicom_series import Candidate, pick_series
from .models import CanonicalVolume, ImageSeries


def apply_pick_rule(patient: Patient) -> ImageSeries | None:
    """Select the patient's CT series by the pick rule, unless a coordinator chose one."""
    series = list(
        ImageSeries.objects.filter(study__patient=patient, modality="CT").annotate(
            has_mask=Exists(
                CanonicalVolume.objects.filter(
                    series=OuterRef("pk"), kind=CanonicalVolume.Kind.MASK
                )
            )
        )
    )
    if not series:
        return None
    chosen = next((s for s in series if s.is_selected and s.picked_by_id), None)
    if chosen is None:
        key, reason = pick_series(
            Candidate(
                key=s.pk,
                has_mask=s.has_mask,
                phase=s.contrast_phase or "unknown",
                slice_thickness_mm=s.slice_thickness_mm
                or (s.geometry.get("spacing") or [0, 0, 0])[2],
                rows=int((s.geometry.get("size") or [0, 0])[1]),
                n_slices=s.n_instances,
                series_number=s.series_number,
            )
            for s in series
        )
        chosen = next(s for s in series if s.pk == key)
        ImageSeries.objects.filter(pk=chosen.pk).update(is_selected=True, pick_reason=reason[:200])
    ImageSeries.objects.filter(study__patient=patient, modality="CT").exclude(pk=chosen.pk).update(
        is_selected=False, pick_reason="", picked_by=None
    )
    return chosen


def select_series(series: ImageSeries, user: Any) -> None:
    """A coordinator's pick: this CT series is the one the engine uses."""
    if series.modality != "CT":
        raise UserFacingError("Only a CT series can be picked.")
    with transaction.atomic():
        patient = Patient.objects.select_for_update().get(pk=series.study.patient_id)
        ImageSeries.objects.filter(study__patient=patient, modality="CT").update(
            is_selected=False, pick_reason="", picked_by=None
        )
        name = getattr(user, "username", "") or "a coordinator"
        ImageSeries.objects.filter(pk=series.pk).update(
            is_selected=True, picked_by=user, pick_reason=f"chosen by {name}"[:200]
        )
        audit(
            user,
            "select_series",
            patient=patient,
            series=series.series_instance_uid,
        )
