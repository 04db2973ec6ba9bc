"""Cohorts with PMPD predictions for the analytics tests and benchmarks.

The clinical values and scores come from :func:`analytics.stats.synthetic_cohort` (the paper's
proportions), written as ``Patient`` and ``PatientPrediction`` rows in bulk.
"""

from __future__ import annotations

import math

import numpy as np

from analytics.stats import synthetic_cohort
from inference.models import ModelVersion, PatientPrediction
from pmpd_web.cohorts.models import Cohort, Patient


def _value(value):
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def make_model_version(name: str = "pmpd-test-1", **extra) -> ModelVersion:
    values = {"status": ModelVersion.Status.READY}
    values.update(extra)
    return ModelVersion.objects.create(name=name, **values)


def make_scored_cohort(
    cohort: Cohort,
    model_version: ModelVersion,
    n_patients: int,
    *,
    seed: int = 7,
    prefix: str = "SYN",
) -> list[Patient]:
    """``n_patients`` synthetic patients in ``cohort``, each scored by ``model_version``
    (five fold MRS, four slices per fold, site probabilities)."""
    frame = synthetic_cohort(n_patients, seed=seed)
    rng = np.random.default_rng(seed + 1)
    patients = []
    for index, row in enumerate(frame.itertuples(index=False), start=1):
        metastatic = row.metastasis_label == 1
        developed = _value(row.developed_metastasis)
        patients.append(
            Patient(
                cohort=cohort,
                study_id=f"{prefix}-{index:05d}",
                age_at_diagnosis_years=int(row.age_at_diagnosis_years),
                sex=row.sex,
                centre=row.centre,
                tumour_location=row.tumour_location,
                tumour_size_mm=float(row.tumour_size_mm),
                ct_manufacturer=row.ct_manufacturer,
                ca19_9_u_per_ml=_value(row.ca19_9_u_per_ml),
                nccn_resectability=row.nccn_resectability.replace(" ", "_"),
                metastasis_at_diagnosis="yes" if metastatic else "no",
                site_liver=bool(row.site_liver),
                site_lung=bool(row.site_lung),
                site_peritoneum=bool(row.site_peritoneum),
                metastasis_detection=(
                    {"radiology": "imaging"}.get(row.metastasis_detection, row.metastasis_detection)
                    if metastatic
                    else ""
                ),
                overall_survival_days=int(row.overall_survival_days),
                vital_status="dead" if row.death == 1 else "alive",
                developed_metastasis="" if developed is None else ("yes" if developed else "no"),
                days_to_metastasis=None
                if _value(row.days_to_metastasis) is None
                else int(row.days_to_metastasis),
            )
        )
    created = Patient.objects.bulk_create(patients, batch_size=2000)
    folds = [f"mrs_fold_{k}" for k in range(1, 6)]
    predictions = []
    for patient, row in zip(created, frame.itertuples(index=False), strict=True):
        per_fold = [float(getattr(row, column)) for column in folds]
        slices = np.clip(np.asarray(per_fold)[:, None] + rng.normal(0.0, 0.05, (5, 4)), 0.0, 1.0)
        slices += (np.asarray(per_fold) - slices.mean(axis=1))[:, None]
        predictions.append(
            PatientPrediction(
                patient=patient,
                model_version=model_version,
                source=PatientPrediction.Source.ENSEMBLE,
                metastasis_risk_score=float(row.metastasis_risk_score),
                mrs_std=float(np.std(per_fold, ddof=1)),
                mrs_min=min(per_fold),
                mrs_max=max(per_fold),
                mrs_per_fold=per_fold,
                positive_fraction=float(row.predicted_positive_fraction),
                predicted_metastasis=bool(row.predicted_positive_fraction >= 0.5),
                site_probabilities={
                    "liver": float(row.prob_liver),
                    "lung": float(row.prob_lung),
                    "peritoneum": float(row.prob_peritoneum),
                },
                slice_probabilities=slices.tolist(),
                slice_indices=[10, 11, 12, 13],
                n_slices=4,
                input_hash=f"hash-{patient.pk}",
            )
        )
    PatientPrediction.objects.bulk_create(predictions, batch_size=2000)
    return created


def make_development_cohort(
    cohort: Cohort, model_version: ModelVersion, n_patients: int, *, seed: int = 11
) -> list[Patient]:
    """``cohort`` as the development cohort of ``model_version``: each patient scored out of
    fold by fold ``index % 5`` (its first fold row kept), with fold thresholds on the version
    (slice 0.5, patient thresholds 0.25-0.75) and the stored calls of those thresholds."""
    patients = make_scored_cohort(cohort, model_version, n_patients, seed=seed, prefix="DEV")
    thresholds = [
        {"fold": k, "slice_threshold": 0.5, "patient_threshold": 0.25 + 0.125 * k} for k in range(5)
    ]
    model_version.trained_on = cohort
    model_version.thresholds = thresholds
    model_version.save(update_fields=["trained_on", "thresholds"])
    predictions = list(
        PatientPrediction.objects.filter(model_version=model_version, patient__cohort=cohort)
        .select_related("patient")
        .order_by("patient__study_id")
    )
    for index, prediction in enumerate(predictions):
        fold = index % 5
        slices = np.asarray(prediction.slice_probabilities[fold], dtype=float)
        fraction = float(np.mean(slices >= 0.5))
        prediction.source = PatientPrediction.Source.OUT_OF_FOLD
        prediction.fold = fold
        prediction.metastasis_risk_score = float(slices.mean())
        prediction.mrs_per_fold = [float(slices.mean())]
        prediction.mrs_std = prediction.mrs_min = prediction.mrs_max = None
        prediction.slice_probabilities = [slices.tolist()]
        prediction.positive_fraction = fraction
        prediction.predicted_metastasis = fraction >= thresholds[fold]["patient_threshold"]
    PatientPrediction.objects.bulk_update(
        predictions,
        [
            "source",
            "fold",
            "metastasis_risk_score",
            "mrs_per_fold",
            "mrs_std",
            "mrs_min",
            "mrs_max",
            "slice_probabilities",
            "positive_fraction",
            "predicted_metastasis",
        ],
    )
    return patients
