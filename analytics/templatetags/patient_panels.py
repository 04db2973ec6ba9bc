"""The patient page's reading card: the call, the MRS against its cut with the fold models'
scores, the risk group, and what disagrees, drawn from the inference and analytics results.
It reads the same prediction as the PMPD detail panel (``inference.services.chosen_prediction``)."""

from __future__ import annotations

from django import template

from analytics.services import patient_risk
from inference.reading import mrs_and_risk_disagreements, patient_reading
from inference.services import chosen_prediction

register = template.Library()


@register.inclusion_tag("analytics/_patient_reading.html", takes_context=True)
def patient_reading_panel(context, patient, model_version=None) -> dict:
    prediction, source = chosen_prediction(patient, model_version)
    version = prediction.model_version if prediction is not None else model_version
    risk = patient_risk(context["request"].user, patient, version)
    reading = None
    if prediction is not None:
        risk.model_version_source = source
    if risk.allowed and prediction is not None and risk.metastasis_risk_score is not None:
        prediction.patient = patient
        reading = patient_reading(prediction)
        reading.disagreements += mrs_and_risk_disagreements(
            reading,
            metastasis_risk_score=risk.metastasis_risk_score,
            cutpoint=risk.cutpoint,
            risk_group=risk.risk_group,
        )
    return {"patient_risk": risk, "reading": reading, "patient": patient}
