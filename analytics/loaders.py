"""Rows in, frames out: the patient-level (and slice-level) tables of ``analytics.stats``.

:func:`load_frame` builds the frame :func:`~analytics.stats.run_full_analysis` documents from
the ``Patient`` rows of the chosen cohorts and, with a model version, their
``PatientPrediction`` rows under it:

- ``death`` = vital status "dead" (1) or "alive" (0); unrecorded = missing;
- ``metastasis_label`` = metastasis at diagnosis "yes" (1) or "no" (0); "unknown" is missing,
  which leaves the patient out of every analysis that needs the label (survival keeps them);
- ``site_*`` = the site booleans of a metastatic patient, 0 for a patient without metastasis;
- ``prob_*`` = the model's site probabilities; ``mrs_fold_k`` = the MRS of fold model k where
  the prediction holds several (the five-fold ensemble of an external cohort), or for
  out-of-fold predictions the MRS of the patients fold k held out (missing for the others);
- ``predicted_metastasis`` = the stored call (1/0) of the version's locked rule;
- ``developed_metastasis`` yes/no = 1/0, ``days_to_metastasis`` as recorded;
- ``nccn_resectability`` in words ("borderline resectable"), as the statistics order them;
- one column per study-defined variable of the cohorts (``Patient.study_values``): numbers as
  floats, categories as their codes, dates as ISO text.

With a model version only the patients it scored are analysed (the others are counted in a
note). The slice-level frame holds one row per scored slice: its probability averaged over the
fold models that scored it (the MRS is the mean of these) and the patient's label.

:func:`fingerprint` is the cheap key of the data behind a selection (data versions, row counts
and last changes); :func:`frame_hash` is the content hash of the frame itself.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from django.db.models import Count, Max, TextField
from django.db.models.functions import Cast

from inference.models import ModelVersion, PatientPrediction
from pmpd_web.cohorts.models import Cohort, Patient, StudyVariable

__all__ = ["LoadedData", "fingerprint", "frame_hash", "load_frame", "study_definitions"]

SITES = ("liver", "lung", "peritoneum")

_PATIENT_FIELDS = (
    "id",
    "cohort_id",
    "study_id",
    "age_at_diagnosis_years",
    "sex",
    "centre",
    "tumour_location",
    "tumour_size_mm",
    "ct_manufacturer",
    "ca19_9_u_per_ml",
    "nccn_resectability",
    "metastasis_at_diagnosis",
    "site_liver",
    "site_lung",
    "site_peritoneum",
    "metastasis_detection",
    "overall_survival_days",
    "vital_status",
    "developed_metastasis",
    "days_to_metastasis",
)
_PREDICTION_FIELDS = (
    "patient_id",
    "metastasis_risk_score",
    "positive_fraction",
    "predicted_metastasis",
    "fold",
)
_PREDICTION_JSON_FIELDS = ("mrs_per_fold", "site_probabilities", "slice_probabilities")
_TEXT_COLUMNS = ("sex", "centre", "tumour_location", "ct_manufacturer", "metastasis_detection")


@dataclass(frozen=True, eq=False)
class LoadedData:
    frame: pd.DataFrame
    slices: pd.DataFrame | None
    notes: tuple[str, ...]
    n_patients_in_cohorts: int


def _yes_no(values: pd.Series, yes: str, no: str) -> pd.Series:
    return values.map({yes: 1.0, no: 0.0}).astype(float)


def study_definitions(cohorts: list[Cohort]) -> list[tuple[str, str, str, str]]:
    """``(name, label, kind, unit)`` of the study variables of the cohorts (pooled cohorts:
    a name defined in several counts once, as its first definition)."""
    rows = (
        StudyVariable.objects.filter(cohort__in=cohorts)
        .order_by("cohort_id", "name")
        .values_list("name", "label", "kind", "unit")
    )
    first: dict[str, tuple[str, str, str, str]] = {}
    for row in rows:
        first.setdefault(row[0], row)
    return list(first.values())


def _study_frame(texts: list[str | None], definitions: list[tuple[str, str, str, str]]):
    """One column per study variable: numbers as floats, categories as their codes, dates as
    ISO text; missing where a patient has no value."""
    values = _json_column(texts)
    columns: dict[str, object] = {}
    for name, _label, kind, _unit in definitions:
        raw = [item.get(name) if isinstance(item, dict) else None for item in values]
        if kind in ("number", "int"):
            columns[name] = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").astype(
                float
            )
        else:
            columns[name] = pd.Series([None if x is None else str(x) for x in raw], dtype=object)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(values)))


def _clinical_frame(cohorts: list[Cohort]) -> pd.DataFrame:
    rows = list(
        Patient.objects.filter(cohort__in=cohorts)
        .order_by("cohort_id", "study_id")
        .annotate(study_values_text=Cast("study_values", TextField()))
        .values_list(*_PATIENT_FIELDS, "study_values_text")
    )
    raw = pd.DataFrame.from_records(rows, columns=[*_PATIENT_FIELDS, "study_values_text"])
    names = {cohort.pk: cohort.name for cohort in cohorts}
    metastatic = _yes_no(raw["metastasis_at_diagnosis"], "yes", "no")
    frame = pd.DataFrame(
        {
            "patient_id": raw["id"].astype("int64"),
            "study_id": raw["study_id"].astype(str)
            if len(cohorts) == 1
            else raw["cohort_id"].map(names) + "/" + raw["study_id"].astype(str),
            "cohort": raw["cohort_id"].map(names),
            "metastasis_label": metastatic,
            "overall_survival_days": pd.to_numeric(raw["overall_survival_days"]).astype(float),
            "death": _yes_no(raw["vital_status"], "dead", "alive"),
            "ca19_9_u_per_ml": pd.to_numeric(raw["ca19_9_u_per_ml"]).astype(float),
            "nccn_resectability": raw["nccn_resectability"].str.replace("_", " "),
            "age_at_diagnosis_years": pd.to_numeric(raw["age_at_diagnosis_years"]).astype(float),
            "tumour_size_mm": pd.to_numeric(raw["tumour_size_mm"]).astype(float),
            "metastasis_at_diagnosis": raw["metastasis_at_diagnosis"],
            "developed_metastasis": _yes_no(raw["developed_metastasis"], "yes", "no"),
            "days_to_metastasis": pd.to_numeric(raw["days_to_metastasis"]).astype(float),
        }
    )
    for column in _TEXT_COLUMNS:
        frame[column] = raw[column]
    for site in SITES:
        frame[f"site_{site}"] = np.where(
            metastatic == 1,
            raw[f"site_{site}"].astype(float),
            np.where(metastatic == 0, 0.0, np.nan),
        )
    text = [*_TEXT_COLUMNS, "nccn_resectability", "metastasis_at_diagnosis"]
    frame[text] = frame[text].mask(frame[text] == "")
    frame.loc[frame["metastasis_at_diagnosis"] == "unknown", "metastasis_at_diagnosis"] = None
    definitions = study_definitions(cohorts)
    if definitions:
        study = _study_frame(raw["study_values_text"].tolist(), definitions)
        frame = pd.concat([frame, study.set_index(frame.index)], axis=1)
    return frame


def _json_column(texts: list[str | None]) -> list[object]:
    """Decode a column of JSON texts in one call (one parse of 10,000 values is far quicker
    than 10,000 parses through the ORM's field converters)."""
    return json.loads("[" + ",".join(text if text else "null" for text in texts) + "]")


def _by_shape(values: list[object]) -> dict[tuple[int, ...], tuple[list[int], np.ndarray]]:
    """Rows of nested lists grouped by shape: shape -> (row positions, stacked float array)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    arrays: dict[tuple[int, ...], list[object]] = {}
    for position, value in enumerate(values):
        if not isinstance(value, list) or not value:
            continue
        if isinstance(value[0], list):
            widths = {len(row) for row in value if isinstance(row, list)}
            if len(widths) != 1 or len(value) != sum(isinstance(row, list) for row in value):
                continue  # ragged: no slice-level rows for this patient
            shape: tuple[int, ...] = (len(value), widths.pop())
        else:
            shape = (len(value),)
        groups.setdefault(shape, []).append(position)
        arrays.setdefault(shape, []).append(value)
    return {shape: (groups[shape], np.array(arrays[shape], dtype=float)) for shape in groups}


def _out_of_fold_columns(frame: pd.DataFrame) -> None:
    """``mrs_fold_k`` = the MRS of the patients fold k held out (missing for the others): the
    across-fold ROC of the development cohort, as the paper reports it. Drops ``fold``."""
    folds = pd.to_numeric(frame.pop("fold"), errors="coerce")
    for fold in sorted(int(k) for k in folds.dropna().unique()):
        frame[f"mrs_fold_{fold + 1}"] = frame["metastasis_risk_score"].where(folds == fold)


def _prediction_frame(
    model_version: ModelVersion, cohorts: list[Cohort]
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    rows = list(
        PatientPrediction.objects.filter(model_version=model_version, patient__cohort__in=cohorts)
        .annotate(**{f"{name}_text": Cast(name, TextField()) for name in _PREDICTION_JSON_FIELDS})
        .values_list(*_PREDICTION_FIELDS, *(f"{name}_text" for name in _PREDICTION_JSON_FIELDS))
    )
    n_fields = len(_PREDICTION_FIELDS)
    frame = pd.DataFrame.from_records(
        [row[:n_fields] for row in rows], columns=list(_PREDICTION_FIELDS)
    ).rename(columns={"positive_fraction": "predicted_positive_fraction"})
    frame["predicted_metastasis"] = frame["predicted_metastasis"].astype(float)
    _out_of_fold_columns(frame)
    decoded = {
        name: _json_column([row[n_fields + index] for row in rows])
        for index, name in enumerate(_PREDICTION_JSON_FIELDS)
    }
    sites = pd.DataFrame.from_records(
        [value if isinstance(value, dict) else {} for value in decoded["site_probabilities"]],
        columns=list(SITES),
    )
    for site in SITES:
        frame[f"prob_{site}"] = pd.to_numeric(sites[site], errors="coerce").astype(float)
    for shape, (positions, values) in _by_shape(decoded["mrs_per_fold"]).items():
        if len(shape) != 1 or shape[0] < 2:
            continue  # a single MRS (out-of-fold) says nothing about the folds
        for k in range(shape[0]):
            column = f"mrs_fold_{k + 1}"
            if column not in frame.columns:
                frame[column] = np.nan
            frame.loc[positions, column] = values[:, k]
    parts = []
    patient_ids = frame["patient_id"].to_numpy()
    for shape, (positions, values) in _by_shape(decoded["slice_probabilities"]).items():
        if len(shape) != 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a slice no fold scored: NaN
            means = np.nanmean(values, axis=1)  # [patients, slices]
        parts.append(
            pd.DataFrame(
                {
                    "patient_id": np.repeat(patient_ids[positions], shape[1]),
                    "slice_probability": means.ravel(),
                }
            )
        )
    slices = pd.concat(parts, ignore_index=True) if parts else None
    return frame, slices


def load_frame(cohorts: list[Cohort], model_version: ModelVersion | None) -> LoadedData:
    """The patient-level frame (and with a model version, the slice-level frame)."""
    clinical = _clinical_frame(cohorts)
    total = len(clinical)
    notes: list[str] = []
    if model_version is None:
        frame = clinical.assign(metastasis_risk_score=np.nan)
        return LoadedData(
            frame=frame.drop(columns="patient_id"),
            slices=None,
            notes=(),
            n_patients_in_cohorts=total,
        )
    predictions, slice_scores = _prediction_frame(model_version, cohorts)
    frame = clinical.merge(predictions, on="patient_id", how="inner")
    unscored = total - len(frame)
    if unscored:
        notes.append(
            f"{unscored} of {total} patients of the selected cohorts have no prediction under "
            f"{model_version.name} and are left out"
        )
    unknown = int(frame["metastasis_label"].isna().sum())
    if unknown:
        notes.append(
            f"{unknown} scored patient(s) with metastasis at diagnosis unknown are left out of "
            "the analyses that need it"
        )
    slices = None
    if slice_scores is not None:
        slices = slice_scores.merge(
            frame[["patient_id", "metastasis_label"]], on="patient_id", how="inner"
        )
    return LoadedData(
        frame=frame.drop(columns="patient_id"),
        slices=slices,
        notes=tuple(notes),
        n_patients_in_cohorts=total,
    )


def fingerprint(cohorts: list[Cohort], model_version: ModelVersion | None) -> str:
    """A key that changes whenever the data behind the selection change.

    Each cohort's ``data_version`` (bumped by imports and API edits), its patients' count and
    last change (a change made elsewhere, e.g. in the admin), the synthetic flags, and the
    model version's predictions for these cohorts (count and last update): three small
    aggregate queries, never the rows themselves.
    """
    ids = sorted(cohort.pk for cohort in cohorts)
    states = sorted(
        Cohort.objects.filter(pk__in=ids).values_list("pk", "data_version", "is_synthetic")
    )
    patients = Patient.objects.filter(cohort_id__in=ids).aggregate(
        n=Count("id"), last=Max("updated_at")
    )
    parts = [
        f"cohorts={states}",
        f"patients={patients['n']}@{patients['last']}",
    ]
    if model_version is not None:
        predictions = PatientPrediction.objects.filter(
            model_version=model_version, patient__cohort_id__in=ids
        ).aggregate(n=Count("id"), last=Max("updated_at"))
        parts.append(
            f"model={model_version.pk}:{model_version.is_synthetic}:"
            f"{predictions['n']}@{predictions['last']}"
        )
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def frame_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of the patient-level frame as analysed (CSV with full float precision)."""
    text = frame.to_csv(index=False, float_format="%.17g", lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()
