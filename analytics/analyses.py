"""The analyses a statistician composes on the dashboards, built from :mod:`analytics.stats`.

Pure Python (no Django): the variables one may pick, the patient-level frame with the derived
groups (MRS group, CA19-9 group, risk group, age and tumour-size groups), Kaplan-Meier curves
by any grouping and Cox models of any chosen variables. The groups come from the same function
:func:`~analytics.stats.run_full_analysis` uses, so a patient's MRS group here is the one on
the dashboards, in the exports and in the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analytics.stats import (
    RISK_GROUP_ORDER,
    AnalysisOptions,
    AnalysisResult,
    ConcordanceResult,
    CoxResult,
    CoxTable,
    CutpointResult,
    KaplanMeierResult,
    NotComputable,
    SubgroupAurocTable,
    adjusted_cox,
    age_groups,
    cox_univariable,
    dichotomise,
    kaplan_meier_by_group,
    maxstat_cutpoint,
    subgroup_auroc,
    tumour_size_groups,
)
from analytics.stats._base import jsonable
from analytics.stats.report import RESECTABILITY_ORDER, _clean, _patient_groups

__all__ = [
    "OVERALL",
    "VARIABLES",
    "CoxAnalysis",
    "CutpointAnalysis",
    "cutpoint_for",
    "study_variables",
    "subgroups_for",
    "PreparedFrame",
    "Variable",
    "cox_analysis",
    "group_order",
    "kaplan_meier_for",
    "mrs_percentile",
    "prepare_frame",
]

TIME_COLUMN = "overall_survival_days"
EVENT_COLUMN = "death"
#: The one group of the overall Kaplan-Meier curve.
OVERALL = "all patients"


@dataclass(frozen=True)
class Variable:
    """A variable a statistician may put in a Cox model or group Kaplan-Meier curves by."""

    name: str
    label: str
    categorical: bool
    needs_model: bool = False
    study: bool = False  # defined by the cohort's study (a StudyVariable)

    @property
    def groupable(self) -> bool:
        return self.categorical


VARIABLES: dict[str, Variable] = {
    variable.name: variable
    for variable in (
        Variable("overall", "All patients (overall survival)", categorical=True),
        Variable("age_at_diagnosis_years", "Age at diagnosis (years)", categorical=False),
        Variable("age_group", "Age group (cut in years)", categorical=True),
        Variable("sex", "Sex", categorical=True),
        Variable("centre", "Centre", categorical=True),
        Variable("cohort", "Cohort", categorical=True),
        Variable("tumour_location", "Tumour location", categorical=True),
        Variable("tumour_size_mm", "Tumour size (mm)", categorical=False),
        Variable("tumour_size_group", "Tumour size group", categorical=True),
        Variable("ct_manufacturer", "CT manufacturer", categorical=True),
        Variable("ca19_9_u_per_ml", "CA19-9 (U/mL)", categorical=False),
        Variable("ca19_9_group", "CA19-9 group (high > threshold)", categorical=True),
        Variable("nccn_resectability", "NCCN resectability", categorical=True),
        Variable("metastasis_at_diagnosis", "Metastasis at diagnosis", categorical=True),
        Variable("metastasis_risk_score", "MRS (per 1.0)", categorical=False, needs_model=True),
        Variable("mrs_per_0_1", "MRS (per 0.1)", categorical=False, needs_model=True),
        Variable("mrs_group", "MRS group (maxstat cut)", categorical=True, needs_model=True),
        Variable("risk_group", "Risk group (MRS x CA19-9)", categorical=True, needs_model=True),
    )
}


def study_variables(definitions: Sequence[tuple[str, str, str, str]]) -> dict[str, Variable]:
    """Variables of the study-defined columns ``(name, label, kind, unit)``: categories group
    curves, numbers and whole numbers are continuous; dates are exported, not analysed."""
    out: dict[str, Variable] = {}
    for name, label, kind, unit in definitions:
        if kind == "date" or name in VARIABLES:
            continue
        shown = f"{label} ({unit})" if unit else label
        out[name] = Variable(name, shown, categorical=kind == "choice", study=True)
    return out


@dataclass(frozen=True, eq=False)
class PreparedFrame:
    """The cleaned patient-level frame with every derived group column, and the MRS cut."""

    data: pd.DataFrame
    cutpoint: CutpointResult | NotComputable
    notes: tuple[str, ...]

    @property
    def has_survival(self) -> bool:
        return all(
            column in self.data.columns and self.data[column].notna().any()
            for column in (TIME_COLUMN, EVENT_COLUMN)
        )


def prepare_frame(frame: pd.DataFrame, options: AnalysisOptions) -> PreparedFrame:
    """Clean ``frame`` as :func:`~analytics.stats.run_full_analysis` does and add the groups.

    ``risk_group`` is missing (not "unknown") where CA19-9 or the MRS group is missing, so that
    those patients are left out of curves and models, as in the full analysis.
    """
    data, notes = _clean(frame, options.n_folds)
    cut, groups = _patient_groups(data, options)
    data = data.copy()
    data["mrs_per_0_1"] = data["metastasis_risk_score"] * 10.0
    data["mrs_group"] = groups["mrs_group"].to_numpy()
    data["ca19_9_group"] = groups["ca19_9_group"].to_numpy()
    data["risk_group"] = groups["risk_group"].where(groups["risk_group"] != "unknown").to_numpy()
    data["overall"] = OVERALL
    if "age_at_diagnosis_years" in data.columns:
        data["age_group"] = age_groups(
            data["age_at_diagnosis_years"], cut_years=options.age_cut_years
        )
    if "tumour_size_mm" in data.columns:
        data["tumour_size_group"] = tumour_size_groups(
            data["tumour_size_mm"], edges_mm=options.tumour_size_edges_mm
        )
    return PreparedFrame(data=data, cutpoint=cut, notes=tuple(notes))


def group_order(name: str, values: pd.Series, options: AnalysisOptions) -> list[str] | None:
    """Clinical order of a grouping's levels (``None``: sorted)."""
    if name in ("mrs_group", "ca19_9_group"):
        return ["low", "high"]
    if name == "risk_group":
        return list(RISK_GROUP_ORDER)
    if name == "nccn_resectability":
        present = [str(value) for value in values.dropna().unique()]
        ordered = [level for level in RESECTABILITY_ORDER if level in present]
        return ordered + sorted(level for level in present if level not in ordered)
    if name == "age_group":
        return [f"<= {options.age_cut_years:g}", f"> {options.age_cut_years:g}"]
    if name == "tumour_size_group":
        edges = options.tumour_size_edges_mm
        return (
            [f"<= {edges[0]:g} mm"]
            + [f"{a:g}-{b:g} mm" for a, b in zip(edges, edges[1:], strict=False)]
            + [f"> {edges[-1]:g} mm"]
        )
    return None


@dataclass(frozen=True, eq=False)
class CutpointAnalysis:
    """The maxstat cut-point of a continuous variable and the survival of its two groups
    (survminer's ``surv_cutpoint``/``surv_categorize``: low = value <= cut)."""

    variable: str
    cutpoint: CutpointResult | NotComputable
    kaplan_meier: KaplanMeierResult | NotComputable

    def to_dict(self) -> dict[str, Any]:
        return {
            "variable": self.variable,
            "cutpoint": jsonable(self.cutpoint),
            "kaplan_meier": jsonable(self.kaplan_meier),
        }


def cutpoint_for(
    prepared: PreparedFrame, variable: str, options: AnalysisOptions
) -> CutpointAnalysis:
    """maxstat cut of ``variable`` on the selection's overall survival, and KM by its groups."""
    analysis = f"Cut-point of {variable}"
    data = prepared.data
    if not prepared.has_survival:
        absent = _no_survival(analysis)
        return CutpointAnalysis(variable, absent, absent)
    if variable not in data.columns or data[variable].isna().all():
        absent = NotComputable(analysis, f"no patient has a value of {variable}", (variable,))
        return CutpointAnalysis(variable, absent, absent)
    values = pd.to_numeric(data[variable], errors="coerce").to_numpy(dtype=float)
    cut = maxstat_cutpoint(
        data[TIME_COLUMN],
        data[EVENT_COLUMN],
        values,
        minprop=options.cutpoint_minprop,
        variable=variable,
    )
    if isinstance(cut, NotComputable):
        return CutpointAnalysis(variable, cut, cut)
    labels = (f"low (<= {cut.cutpoint:g})", f"high (> {cut.cutpoint:g})")
    groups = dichotomise(values, cut.cutpoint, labels=labels)
    curves = kaplan_meier_by_group(
        data[TIME_COLUMN],
        data[EVENT_COLUMN],
        groups,
        group_variable=f"{variable} (maxstat cut)",
        group_order=list(labels),
        conf_type=options.km_conf_type,
        confidence_level=options.confidence_level,
        at_risk_times=options.at_risk_times_days,
    )
    return CutpointAnalysis(variable, cut, curves)


def subgroups_for(
    prepared: PreparedFrame, variables: Sequence[str], options: AnalysisOptions
) -> SubgroupAurocTable:
    """AUROC of the MRS (DeLong CI) within each level of the chosen categorical variables
    (study-defined ones too), beside the paper's subgroups."""
    data = prepared.data
    present = [name for name in variables if name in data.columns]
    groups = {
        name: data[name].astype(object).where(data[name].notna(), None).to_numpy()
        for name in present
    }
    orders = {name: group_order(name, data[name], options) for name in present}
    return subgroup_auroc(
        data["metastasis_label"],
        data["metastasis_risk_score"],
        groups,
        level_order={name: order for name, order in orders.items() if order is not None},
        confidence_level=options.confidence_level,
    )


def _no_survival(analysis: str) -> NotComputable:
    return NotComputable(
        analysis,
        f"column(s) absent or empty: {TIME_COLUMN}, {EVENT_COLUMN}",
        (TIME_COLUMN, EVENT_COLUMN),
    )


def kaplan_meier_for(
    prepared: PreparedFrame, grouping: str, options: AnalysisOptions
) -> KaplanMeierResult | NotComputable:
    """Kaplan-Meier curves and the log-rank test of overall survival by ``grouping``."""
    analysis = f"Kaplan-Meier by {grouping}"
    if not prepared.has_survival:
        return _no_survival(analysis)
    data = prepared.data
    if grouping not in data.columns or data[grouping].isna().all():
        return NotComputable(analysis, f"no patient has a value of {grouping}", (grouping,))
    values = data[grouping].astype(object).where(data[grouping].notna(), None)
    return kaplan_meier_by_group(
        data[TIME_COLUMN],
        data[EVENT_COLUMN],
        values.to_numpy(dtype=object),
        group_variable=grouping,
        group_order=group_order(grouping, values, options),
        conf_type=options.km_conf_type,
        confidence_level=options.confidence_level,
        at_risk_times=options.at_risk_times_days,
    )


@dataclass(frozen=True, eq=False)
class CoxAnalysis:
    """Univariable models of each chosen variable, the multivariable model and its C-index."""

    univariable: CoxTable
    multivariable: CoxResult | NotComputable
    c_index: ConcordanceResult | NotComputable
    variables: tuple[str, ...]
    adjust_for: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variables": list(self.variables),
            "adjust_for": list(self.adjust_for),
            "univariable": self.univariable.to_dict(),
            "multivariable": self.multivariable.to_dict(),
            "c_index": jsonable(self.c_index),
        }


def cox_analysis(
    prepared: PreparedFrame,
    *,
    variables: Sequence[str],
    univariable: Sequence[str],
    options: AnalysisOptions,
    computed: AnalysisResult | None = None,
) -> CoxAnalysis:
    """Cox models of the chosen variables (Efron ties, R's ``coxph``).

    The multivariable model holds ``variables`` adjusted for ``options.adjust_for`` (an
    adjustment variable with a single value is left out, with a note); ``univariable`` lists
    the variables fitted one at a time. The C-index is Harrell's C of the multivariable
    model's linear predictor. ``computed`` is the full analysis of the same frame and options:
    its models are taken where the choice is the same (the paper's), so they are the very
    numbers of :func:`~analytics.stats.run_full_analysis`, not fitted twice.
    """
    data = prepared.data
    categorical = tuple(name for name, variable in VARIABLES.items() if variable.categorical)
    common: dict[str, Any] = {
        "duration_col": TIME_COLUMN,
        "event_col": EVENT_COLUMN,
        "categorical": categorical,
        "reference_levels": dict(options.reference_levels),
        "confidence_level": options.confidence_level,
        "min_events": options.min_events,
    }
    adjust_for = tuple(name for name in options.adjust_for if name not in variables)
    if not prepared.has_survival:
        absent = _no_survival("Cox regression")
        return CoxAnalysis(
            univariable=CoxTable(models=dict.fromkeys(univariable, absent)),
            multivariable=absent,
            c_index=absent,
            variables=tuple(variables),
            adjust_for=adjust_for,
        )
    known = dict(computed.cox_univariable.models) if computed is not None else {}
    fitted = cox_univariable(
        data, variables=[name for name in univariable if name not in known], **common
    ).models
    table = CoxTable(
        models={name: known[name] if name in known else fitted[name] for name in univariable}
    )
    paper = computed.cox_multivariable if computed is not None else None
    if isinstance(paper, CoxResult) and paper.variables == tuple(variables):
        multivariable: CoxResult | NotComputable = paper
    elif variables or adjust_for:
        multivariable = adjusted_cox(
            data, variables=list(variables or adjust_for), adjust_for=adjust_for, **common
        )
    else:
        multivariable = NotComputable(
            "Multivariable Cox regression", "no variables were chosen", ("variables",)
        )
    c_index: ConcordanceResult | NotComputable = (
        ConcordanceResult(
            c_index=multivariable.concordance,
            n=multivariable.n,
            n_events=multivariable.n_events,
            n_missing=multivariable.n_dropped_missing,
        )
        if isinstance(multivariable, CoxResult)
        else multivariable
    )
    return CoxAnalysis(
        univariable=table,
        multivariable=multivariable,
        c_index=c_index,
        variables=tuple(variables),
        adjust_for=adjust_for,
    )


def mrs_percentile(scores: np.ndarray, value: float) -> float:
    """Share (0-100) of ``scores`` (a cohort's MRS; missing ignored) at or below ``value``."""
    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    if not scores.size or not np.isfinite(value):
        return float("nan")
    return float(100.0 * np.mean(scores <= value))
