"""A TRIPOD+AI-aligned model report (Collins et al., BMJ 2024;385:e078378) of a model version
and its validation cohorts: what the platform knows, generated; what it cannot know, left as
clearly marked fields for the authors.

Each cohort is analysed on its own (its :func:`~analytics.services.full_analysis`, from the
cache when the dashboards computed it) at the version's locked operating point: the
development cohort's numbers are out-of-fold (internal validation by cross-validation), every
other cohort's are external validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analytics import figures as fig
from analytics.parameters import AnalysisParameters
from analytics.services import RESEARCH_USE_ONLY, Selection, full_analysis
from analytics.stats import (
    AnalysisResult,
    BinaryClassificationResult,
    FoldRocSummary,
    wilson_interval,
)

__all__ = ["AUTHOR_FIELDS", "CohortReport", "tripod_context"]

#: TRIPOD+AI items the platform cannot know: left for the authors, marked as such.
AUTHOR_FIELDS: tuple[tuple[str, str], ...] = (
    ("1", "Title: identify the study as developing or validating a prediction model"),
    ("2", "Abstract"),
    ("3a-c", "Background and objectives: context, rationale, intended use and users"),
    ("5a", "Data sources: study design, recruitment dates and setting of each cohort"),
    ("6a", "Eligibility criteria of the participants; treatments received"),
    ("7", "Data preparation: how CT acquisitions were quality-checked before upload"),
    ("8b", "Outcome assessment: who assessed metastasis, blinded to the model or not"),
    ("9", "Sample size: how the size was arrived at (the counts are below)"),
    ("10", "Missing data: how missing data were handled beyond complete-case analysis"),
    ("14", "Fairness: subgroups in which performance was examined and why"),
    ("18", "Patient and public involvement"),
    ("19", "Ethics approval and consent"),
    ("20-21", "Funding, conflicts of interest"),
    ("22", "Protocol, registration and availability of data and code"),
    ("27", "Discussion: interpretation, limitations, usability in practice"),
)

_MISSING_COLUMNS = {
    "metastasis_label": "metastasis at diagnosis",
    "overall_survival_days": "overall survival (days)",
    "death": "vital status",
    "ca19_9_u_per_ml": "CA19-9",
    "nccn_resectability": "NCCN resectability",
    "age_at_diagnosis_years": "age",
    "sex": "sex",
    "tumour_size_mm": "tumour size",
}


@dataclass
class CohortReport:
    """One cohort's part of the report."""

    name: str
    role: str
    synthetic: bool
    n_in_cohort: int
    n_analysed: int
    characteristics: list[tuple[str, str]]
    missing: list[tuple[str, int, str]]
    performance: list[tuple[str, str, str]]
    figures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _number(value: float, digits: int = 3) -> str:
    return "NA" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _median_iqr(values: pd.Series, unit: str) -> str:
    known = values.dropna()
    if known.empty:
        return "not recorded"
    q1, median, q3 = known.quantile([0.25, 0.5, 0.75])
    return f"{median:.0f} ({q1:.0f}-{q3:.0f}) {unit}, n = {len(known)}"


def _characteristics(frame: pd.DataFrame) -> list[tuple[str, str]]:
    label = frame["metastasis_label"]
    rows = [
        ("Patients", str(len(frame))),
        (
            "Metastasis at diagnosis (outcome events)",
            f"{int((label == 1).sum())} of {int(label.notna().sum())} with a known outcome",
        ),
        ("Age, median (IQR)", _median_iqr(frame["age_at_diagnosis_years"], "years")),
        ("CA19-9, median (IQR)", _median_iqr(frame["ca19_9_u_per_ml"], "U/mL")),
        ("Tumour size, median (IQR)", _median_iqr(frame["tumour_size_mm"], "mm")),
        ("Deaths during follow-up", str(int((frame["death"] == 1).sum()))),
    ]
    for column, title in (("sex", "Sex"), ("nccn_resectability", "NCCN resectability")):
        counts = frame[column].value_counts()
        rows.append((title, ", ".join(f"{k} {v}" for k, v in counts.items()) or "not recorded"))
    return rows


def _missing(frame: pd.DataFrame) -> list[tuple[str, int, str]]:
    n = len(frame)
    return [
        (title, int(frame[column].isna().sum()), f"{frame[column].isna().mean():.0%}" if n else "")
        for column, title in _MISSING_COLUMNS.items()
        if column in frame.columns
    ]


def _proportion(name: str, successes: int, n: int, level: float) -> tuple[str, str, str]:
    if n == 0:
        return name, "NA", "no cases"
    lower, upper = wilson_interval(successes, n, confidence_level=level)
    return name, f"{successes / n:.3f}", f"{lower:.3f}-{upper:.3f} (Wilson; {successes}/{n})"


def _performance(analysis: AnalysisResult) -> list[tuple[str, str, str]]:
    level = analysis.options.confidence_level
    rows: list[tuple[str, str, str]] = []
    for key, title in (("patient_mrs", "AUROC of the MRS"), ("slice", "AUROC, slice level")):
        result = analysis.classification.get(key)
        if isinstance(result, BinaryClassificationResult):
            auroc = result.auroc
            interval = f"{_number(auroc.ci_lower)}-{_number(auroc.ci_upper)} ({auroc.method})"
            rows.append((title, _number(auroc.auroc), interval))
    folds = analysis.folds
    if isinstance(folds, FoldRocSummary):
        summary = folds.auroc_summary
        rows.append(
            (
                f"AUROC across {len(summary.fold_aurocs)} folds, mean",
                _number(summary.mean),
                f"{_number(summary.ci_lower)}-{_number(summary.ci_upper)} (t-based, across folds)",
            )
        )
    calls = analysis.classification.get("patient_fraction")
    if isinstance(calls, BinaryClassificationResult):
        m = calls.at_threshold
        rows += [
            _proportion("Sensitivity", m.true_positive, m.true_positive + m.false_negative, level),
            _proportion("Specificity", m.true_negative, m.true_negative + m.false_positive, level),
            _proportion("PPV", m.true_positive, m.true_positive + m.false_positive, level),
            _proportion("NPV", m.true_negative, m.true_negative + m.false_negative, level),
        ]
    calibration = analysis.calibration
    if getattr(calibration, "computable", False):
        rows.append(("Brier score of the MRS", _number(calibration.brier_score), ""))
    return rows


def _figures(
    analysis: AnalysisResult, name: str, key: int, synthetic: bool
) -> list[dict[str, Any]]:
    label = analysis.options.operating_point_label
    drawn = [
        ("calibration", "Calibration of the MRS", fig.calibration_figure, analysis.calibration),
        ("decision-curves", "Decision curves", fig.decision_curve_figure, analysis.decision_curves),
    ]
    items = []
    for slug, title, draw, result in drawn:
        if result is None:
            continue
        figure = draw(result, title=f"{title}: {name}<br><sup>{label}</sup>", synthetic=synthetic)
        items.append(
            {
                "entry": {"title": f"{title}: {name}", "wide": False, "operating_point": label},
                "json": figure.to_json(),
                "element": f"tripod-{slug}-{key}",
                "filename": f"tripod-{slug}",
            }
        )
    return items


def _point_rows(frame: pd.DataFrame) -> list[list[str]]:
    columns = ["component", "slice threshold", "patient threshold", "MRS cut-point"]
    columns.append("corrected p (Lau94)")
    return [
        [
            value if isinstance(value, str) else _number(value, 4)
            for value in (row.get(column, float("nan")) for column in columns)
        ]
        for row in frame.to_dict("records")
    ]


def tripod_context(selection: Selection, params: AnalysisParameters) -> dict[str, Any]:
    """The report's context: the model, the locked operating point, one part per cohort."""
    version = selection.model_version
    assert version is not None, "the TRIPOD report needs a model version"
    card = version.card or {}
    development = version.trained_on
    cohorts = list(selection.cohorts)
    if development is not None and development.pk not in selection.cohort_ids:
        cohorts.insert(0, development)
    parts = []
    for cohort in cohorts:
        single = Selection([cohort], version)
        analysis = full_analysis(single, params)
        frame = single.loaded.frame
        is_development = development is not None and cohort.pk == development.pk
        parts.append(
            CohortReport(
                name=cohort.name,
                role="development: internal validation, out-of-fold predictions of "
                f"{card.get('n_folds', 5)}-fold cross-validation"
                if is_development
                else "external validation: scored by the fold models, never trained on",
                synthetic=single.synthetic,
                n_in_cohort=single.loaded.n_patients_in_cohorts,
                n_analysed=len(frame),
                characteristics=_characteristics(frame),
                missing=_missing(frame),
                performance=_performance(analysis),
                figures=_figures(analysis, cohort.name, cohort.pk, single.synthetic),
                notes=list(single.loaded.notes),
            )
        )
    point = selection.operating_point
    return {
        "version": version,
        "card": card,
        "point": point,
        "point_rows": [] if point is None else _point_rows(point.to_frame()),
        "parts": parts,
        "author_fields": AUTHOR_FIELDS,
        "synthetic": any(part.synthetic for part in parts) or version.is_synthetic,
        "research_use_only": RESEARCH_USE_ONLY,
    }
