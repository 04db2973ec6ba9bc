"""The patients table's results (``pmpd_web.cohorts.results``): each scored patient's MRS, the
call from :func:`inference.reading.patient_reading` and the MRS x CA19-9 risk group, under the
model version the patient page reads (the active one, else the latest that scored the cohort)."""

from __future__ import annotations

from typing import Any

from inference.models import ModelVersion, PatientPrediction
from pmpd_web.accounts.permissions import Action, can
from pmpd_web.cohorts.models import Cohort
from pmpd_web.cohorts.results import CohortResults, PatientResult


def _version_for(cohort: Cohort) -> tuple[ModelVersion | None, str]:
    scored = ModelVersion.objects.filter(predictions__patient__cohort=cohort).distinct()
    active = scored.filter(is_active=True).first()
    if active is not None:
        return active, "the active model version"
    return scored.order_by("-created_at").first(), "the latest model version that scored it"


def cohort_results(user: Any, cohort: Cohort) -> CohortResults | None:
    # Imported here: this module is imported at start-up (AnalyticsConfig.ready), and the
    # statistics and figures behind the readings and the risk groups (SciPy, Plotly) are not
    # needed until a page shows results.
    from analytics.services import cohort_risk_groups
    from inference.reading import patient_reading

    if not can(user, cohort, Action.VIEW_RESULTS):
        return None
    version, source = _version_for(cohort)
    if version is None:
        return None
    synthetic = cohort.is_synthetic or version.is_synthetic
    risk, _ = cohort_risk_groups(cohort, version, synthetic=synthetic)
    groups = dict(zip(risk["groups"]["study_id"], risk["groups"]["risk_group"], strict=True))
    results = CohortResults(
        model_version=version.name,
        model_version_source=source,
        operating_point=f"the stored call of model version {version.name}",
        synthetic=synthetic,
    )
    predictions = PatientPrediction.objects.filter(
        patient__cohort=cohort, model_version=version
    ).select_related("patient", "model_version")
    for prediction in predictions:
        reading = patient_reading(prediction)
        group = groups.get(prediction.patient.study_id)
        results.by_study_id[prediction.patient.study_id] = PatientResult(
            metastasis_risk_score=prediction.metastasis_risk_score,
            call=reading.short_call,
            risk_group=group if isinstance(group, str) and group else "unknown",
        )
    return results
