"""The whole analysis set of the paper from one patient-level table: :func:`run_full_analysis`.

This is the single entry point of the dashboards, the exports and the API. Every section of
the :class:`AnalysisResult` is either a computed result or a :class:`NotComputable` saying
what is missing; nothing here raises because of the data (a missing optional column, an
empty group, too few deaths): only a missing required column or an invalid option raises.

Columns of ``frame`` (one row per patient; only the first three are required):

================================  =========================================================
``study_id``                      pseudonymous patient identifier
``metastasis_risk_score``         MRS in [0, 1] (mean of the slice probabilities)
``metastasis_label``              1 = distant metastasis at diagnosis, 0 = none
``mrs_fold_1`` .. ``mrs_fold_5``  MRS from each fold model (external sets), optional
``predicted_positive_fraction``   share of the patient's slices predicted positive
``predicted_metastasis``          the stored call (1/0) of the model version's locked rule
``site_liver`` / ``site_lung`` /  1 = metastasis at that site (missing is read as 0 for a
``site_peritoneum``               patient without metastasis)
``prob_liver`` / ``prob_lung`` /  the model's probability for that site
``prob_peritoneum``
``overall_survival_days``         follow-up from diagnosis, days
``death``                         1 = died, 0 = censored at ``overall_survival_days``
``ca19_9_u_per_ml``               CA19-9 at diagnosis, U/mL
``nccn_resectability``            resectable / borderline resectable / locally advanced /
                                  metastatic
``age_at_diagnosis_years``        age, years
``sex``                           e.g. female / male
``centre``                        recruiting centre
``tumour_location``               e.g. head / body / tail
``tumour_size_mm``                largest diameter, mm
``ct_manufacturer``               CT vendor
``metastasis_detection``          radiology / laparoscopy / surgery / other
``developed_metastasis``          1 = metastasis developed after diagnosis (patients
                                  without metastasis at diagnosis), 0 = no, missing = unknown
``days_to_metastasis``            days from diagnosis/treatment to the metastasis
================================  =========================================================

Choices (all in :class:`AnalysisOptions`):

- Operating point: with ``options.operating_point`` (a model version's locked point, see
  :mod:`.operating_point`) every threshold is the locked one: the stored calls
  (``predicted_metastasis``) for the patient-level decision, the locked MRS cut-point for the
  MRS groups (and the MRS confusion matrix), the mean fold slice threshold for slices. Setting
  ``options.retune_on_cohort`` instead picks them again on this cohort (Youden, maxstat): the
  sensitivity analysis labelled "re-tuned on this cohort (optimistic)". Without an operating
  point (a frame from elsewhere) the thresholds are chosen on this cohort, as the paper did on
  its internal test folds.
- Patient-level decision: the paper thresholds the fraction of slices predicted positive at
  its Youden threshold; ``classification["patient_fraction"]`` does that, and
  ``classification["patient_mrs"]`` evaluates the MRS itself (AUROC, Youden cut). The decision
  used for "missed at imaging" is the fraction when present, else the MRS, at
  ``options.decision_threshold`` or, when ``None``, the Youden threshold of this cohort.
- MRS high/low: the maximally selected log-rank cut-point on this cohort
  (``options.mrs_cutpoint`` fixes it instead, e.g. a cut learned on another cohort).
- CA19-9 high = > 500 U/mL; risk group "unknown" when CA19-9 or the MRS is missing (those
  patients are left out of the risk-group curves and Cox model).
- Cox models: univariable for each variable; multivariable MRS group + CA19-9 group +
  resectability adjusted for age, sex and centre; risk group adjusted for age, sex and
  centre. Reference levels in ``options.reference_levels``; the continuous MRS HR is per
  0.1 increase of the MRS (``mrs_per_0_1``).
- C-index: the Cox linear predictor of MRS group + CA19-9 group + resectability, and the
  continuous MRS alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ._base import NotComputable, StatResult
from .calibration import CalibrationResult, calibration_curve
from .classification import (
    BinaryClassificationResult,
    FoldRocSummary,
    SiteRocResult,
    evaluate_binary,
    fold_roc_summary,
    site_roc,
)
from .cutpoints import (
    CA19_9_THRESHOLD_U_PER_ML,
    RISK_GROUP_ORDER,
    CutpointResult,
    ca19_9_groups,
    dichotomise,
    maxstat_cutpoint,
    risk_groups,
)
from .decision_curve import DecisionCurveResult, decision_curve
from .development import DAYS_PER_MONTH, DevelopmentResult, metastasis_development_analysis
from .operating_point import RETUNED_LABEL, OperatingPoint
from .subgroups import (
    MISSED_AT_IMAGING_METHODS,
    MissedAtImagingResult,
    SubgroupAurocTable,
    age_groups,
    missed_at_imaging_flagged,
    subgroup_auroc,
    tumour_size_groups,
)
from .survival import (
    DEFAULT_ADJUSTMENT,
    ConcordanceResult,
    ConfType,
    CoxResult,
    CoxTable,
    KaplanMeierResult,
    adjusted_cox,
    cox_regression,
    cox_univariable,
    harrell_c_index,
    kaplan_meier_by_group,
)

__all__ = [
    "REQUIRED_COLUMNS",
    "RESECTABILITY_ORDER",
    "AnalysisOptions",
    "AnalysisResult",
    "run_full_analysis",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("study_id", "metastasis_risk_score", "metastasis_label")

#: NCCN resectability categories in clinical order (other spellings are kept, sorted after).
RESECTABILITY_ORDER: tuple[str, ...] = (
    "resectable",
    "borderline resectable",
    "locally advanced",
    "metastatic",
)

_NUMERIC_COLUMNS = (
    "metastasis_risk_score",
    "predicted_positive_fraction",
    "overall_survival_days",
    "ca19_9_u_per_ml",
    "age_at_diagnosis_years",
    "tumour_size_mm",
    "days_to_metastasis",
)
_BINARY_COLUMNS = ("metastasis_label", "death", "developed_metastasis", "predicted_metastasis")


def _default_reference_levels() -> dict[str, str]:
    return {
        "mrs_group": "low",
        "ca19_9_group": "low",
        "risk_group": "low",
        "nccn_resectability": "resectable",
    }


@dataclass(frozen=True)
class AnalysisOptions:
    """Every choice the analysis makes, with the paper's values as defaults."""

    confidence_level: float = 0.95
    synthetic: bool = False
    decision_threshold: float | None = None
    sites: tuple[str, ...] = ("liver", "lung", "peritoneum")
    n_folds: int = 5
    calibration_bins: int = 10
    tumour_size_edges_mm: tuple[float, ...] = (20.0, 40.0)
    age_cut_years: float = 65.0
    missed_detection_methods: tuple[str, ...] = MISSED_AT_IMAGING_METHODS
    cutpoint_minprop: float = 0.1
    mrs_cutpoint: float | None = None
    ca19_9_threshold_u_per_ml: float = CA19_9_THRESHOLD_U_PER_ML
    km_conf_type: ConfType = "log"
    at_risk_times_days: tuple[float, ...] | None = None
    adjust_for: tuple[str, ...] = DEFAULT_ADJUSTMENT
    reference_levels: Mapping[str, str] = field(default_factory=_default_reference_levels)
    min_events: int = 2
    development_boundaries_months: tuple[float, float] = (3.0, 6.0)
    days_per_month: float = DAYS_PER_MONTH
    operating_point: OperatingPoint | None = None
    retune_on_cohort: bool = False
    includes_development_cohort: bool = False

    @property
    def locked(self) -> OperatingPoint | None:
        """The locked operating point in force (``None`` when re-tuned or absent)."""
        return None if self.retune_on_cohort else self.operating_point

    @property
    def operating_point_label(self) -> str:
        """What every figure and table says about the thresholds it uses."""
        if self.locked is not None:
            return self.locked.label
        if self.retune_on_cohort:
            version = self.operating_point.model_version if self.operating_point else ""
            return (
                f"{RETUNED_LABEL}{f' ({version})' if version else ''}: Youden thresholds "
                "and maxstat MRS cut chosen on the analysed cohort"
            )
        return "chosen on this cohort (Youden thresholds, maxstat MRS cut): no locked point"


@dataclass(frozen=True, eq=False)
class AnalysisResult(StatResult):
    """All analyses of one cohort. Each entry is a result or a :class:`NotComputable`."""

    n_patients: int
    options: AnalysisOptions
    data_notes: tuple[str, ...]
    classification: dict[str, BinaryClassificationResult | NotComputable]
    folds: FoldRocSummary | NotComputable
    sites: SiteRocResult | NotComputable
    subgroups: SubgroupAurocTable | NotComputable
    missed_at_imaging: MissedAtImagingResult | NotComputable
    calibration: CalibrationResult | NotComputable
    mrs_cutpoint: CutpointResult | NotComputable
    kaplan_meier: dict[str, KaplanMeierResult | NotComputable]
    mrs_within_resectability: dict[str, KaplanMeierResult | NotComputable]
    cox_univariable: CoxTable
    cox_multivariable: CoxResult | NotComputable
    cox_risk_groups: CoxResult | NotComputable
    c_index: dict[str, ConcordanceResult | NotComputable]
    development: DevelopmentResult | NotComputable
    patient_groups: pd.DataFrame
    decision_curves: DecisionCurveResult | NotComputable | None = None

    title: ClassVar[str] = "PMPD analysis"

    def sections(self) -> dict[str, Any]:
        """Every section by name (nested dictionaries flattened with ``/``)."""
        flat: dict[str, Any] = {}
        for name in (
            "classification",
            "folds",
            "sites",
            "subgroups",
            "missed_at_imaging",
            "calibration",
            "mrs_cutpoint",
            "kaplan_meier",
            "mrs_within_resectability",
            "cox_univariable",
            "cox_multivariable",
            "cox_risk_groups",
            "c_index",
            "development",
            "decision_curves",
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, dict):
                flat.update({f"{name}/{key}": item for key, item in value.items()})
            else:
                flat[name] = value
        return flat

    @property
    def mrs_split_note(self) -> str:
        """Why the log-rank p of the MRS (and risk) groups is uncorrected, when it is: the cut
        was chosen on these data (here, or at training on the development cohort included)."""
        cut = self.mrs_cutpoint
        corrected: float | None
        if isinstance(cut, CutpointResult):
            corrected = cut.p_value_lau94
        elif self.options.locked is not None and self.options.includes_development_cohort:
            corrected = self.options.locked.mrs_cutpoint_p_corrected
        else:
            return ""
        return (
            "log-rank p UNCORRECTED: the MRS cut was chosen on these data; maxstat's corrected "
            f"p (Lau94) = {corrected:.3g}"
            if corrected is not None
            else "log-rank p UNCORRECTED: the MRS cut was chosen on these data"
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per section: computed or not, and why not."""
        return pd.DataFrame(
            [
                {
                    "section": name,
                    "computable": value.computable,
                    "reason": "" if value.computable else value.reason,
                }
                for name, value in self.sections().items()
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        payload = super().to_dict()
        payload["synthetic"] = self.options.synthetic
        return payload

    def __str__(self) -> str:
        parts = [
            f"{self.title}: {self.n_patients} patients"
            + (" (SYNTHETIC DATA)" if self.options.synthetic else "")
        ]
        parts.extend(self.data_notes)
        for name, value in self.sections().items():
            parts.append(f"\n== {name} ==\n{value}")
        return "\n".join(parts)


def _clean(frame: pd.DataFrame, n_folds: int) -> tuple[pd.DataFrame, list[str]]:
    """Coerce the typed columns; unreadable entries become missing and are reported."""
    missing_required = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing_required:
        raise ValueError("required columns absent: " + ", ".join(missing_required))
    notes: list[str] = []
    data = frame.copy()
    numeric = [*_NUMERIC_COLUMNS, *(f"mrs_fold_{k}" for k in range(1, n_folds + 1))]
    numeric += [column for column in data.columns if column.startswith("prob_")]
    for column in numeric:
        if column not in data.columns:
            continue
        coerced = pd.to_numeric(data[column], errors="coerce").astype(float)
        unreadable = int((coerced.isna() & data[column].notna()).sum())
        if unreadable:
            notes.append(f"{column}: {unreadable} non-numeric value(s) treated as missing")
        data[column] = coerced
    binary = [*_BINARY_COLUMNS, *(column for column in data.columns if column.startswith("site_"))]
    for column in binary:
        if column not in data.columns:
            continue
        coerced = pd.to_numeric(data[column], errors="coerce").astype(float)
        invalid = coerced.notna() & ~coerced.isin([0.0, 1.0])
        unreadable = int(((coerced.isna() & data[column].notna()) | invalid).sum())
        if unreadable:
            notes.append(f"{column}: {unreadable} value(s) other than 0/1 treated as missing")
        data[column] = coerced.where(~invalid)
    return data, notes


def _column(data: pd.DataFrame, name: str) -> pd.Series | None:
    return data[name] if name in data.columns and data[name].notna().any() else None


def _absent(analysis: str, *columns: str) -> NotComputable:
    return NotComputable(analysis, "column(s) absent or empty: " + ", ".join(columns), columns)


def _resectability_order(values: pd.Series) -> list[str]:
    present = [str(value) for value in values.dropna().unique()]
    ordered = [level for level in RESECTABILITY_ORDER if level in present]
    return ordered + sorted(level for level in present if level not in ordered)


def _classification(
    data: pd.DataFrame, slices: pd.DataFrame | None, options: AnalysisOptions
) -> dict[str, BinaryClassificationResult | NotComputable]:
    labels = data["metastasis_label"]
    locked = options.locked
    source = options.operating_point_label
    mrs_cut = None if locked is None else locked.mrs_cutpoint
    results: dict[str, BinaryClassificationResult | NotComputable] = {
        "patient_mrs": evaluate_binary(
            labels,
            data["metastasis_risk_score"],
            level="patient",
            name="metastasis by MRS",
            threshold=mrs_cut,
            threshold_source=source,
            confidence_level=options.confidence_level,
        )
    }
    fraction = _column(data, "predicted_positive_fraction")
    calls = _column(data, "predicted_metastasis") if locked is not None else None
    results["patient_fraction"] = (
        evaluate_binary(
            labels,
            fraction,
            level="patient",
            name="metastasis by fraction of slices predicted positive",
            threshold=options.decision_threshold,
            threshold_source=source if options.decision_threshold is None else None,
            confidence_level=options.confidence_level,
            calls=calls if options.decision_threshold is None else None,
        )
        if fraction is not None
        else _absent(
            "Classification (patient level, slice fraction)", "predicted_positive_fraction"
        )
    )
    if slices is None:
        results["slice"] = NotComputable(
            "Classification (slice level)", "no slice-level scores were given", ("slices",)
        )
    else:
        for column in ("slice_probability", "metastasis_label"):
            if column not in slices.columns:
                raise ValueError(f"slices needs a {column!r} column")
        results["slice"] = evaluate_binary(
            slices["metastasis_label"],
            slices["slice_probability"],
            level="slice",
            name="metastasis by slice probability",
            threshold=None if locked is None else locked.slice_threshold,
            threshold_source=source
            + (" (mean of the fold slice thresholds)" if locked is not None else ""),
            confidence_level=options.confidence_level,
            clusters=slices["patient_id"] if "patient_id" in slices.columns else None,
        )
    return results


def _decision(
    data: pd.DataFrame,
    classification: Mapping[str, BinaryClassificationResult | NotComputable],
    options: AnalysisOptions,
) -> tuple[pd.Series, float]:
    """The score and threshold of the patient-level decision ("flagged by the model")."""
    fraction = classification["patient_fraction"]
    calls = _column(data, "predicted_metastasis")
    if options.locked is not None and options.decision_threshold is None and calls is not None:
        return calls, 1.0  # the stored calls of the locked rule (1 = metastasis)
    if isinstance(fraction, BinaryClassificationResult):
        return data["predicted_positive_fraction"], fraction.at_threshold.threshold
    mrs = classification["patient_mrs"]
    if options.decision_threshold is not None:
        return data["metastasis_risk_score"], float(options.decision_threshold)
    if isinstance(mrs, BinaryClassificationResult):
        return data["metastasis_risk_score"], mrs.youden.threshold
    return data["metastasis_risk_score"], float("nan")


def _site_analysis(data: pd.DataFrame, options: AnalysisOptions) -> SiteRocResult | NotComputable:
    needed = [f"site_{site}" for site in options.sites] + [f"prob_{site}" for site in options.sites]
    absent = [column for column in needed if column not in data.columns]
    if absent:
        return _absent("AUROC by site", *absent)
    no_metastasis = data["metastasis_label"] == 0
    labels = {
        site: data[f"site_{site}"].where(~(no_metastasis & data[f"site_{site}"].isna()), 0.0)
        for site in options.sites
    }
    scores = {site: data[f"prob_{site}"] for site in options.sites}
    return site_roc(labels, scores, confidence_level=options.confidence_level)


def _subgroups(data: pd.DataFrame, options: AnalysisOptions) -> SubgroupAurocTable:
    groups: dict[str, Any] = {}
    order: dict[str, list[str]] = {}
    if _column(data, "tumour_size_mm") is not None:
        groups["tumour size"] = tumour_size_groups(
            data["tumour_size_mm"], edges_mm=options.tumour_size_edges_mm
        )
        edges = options.tumour_size_edges_mm
        order["tumour size"] = (
            [f"<= {edges[0]:g} mm"]
            + [f"{a:g}-{b:g} mm" for a, b in zip(edges, edges[1:], strict=False)]
            + [f"> {edges[-1]:g} mm"]
        )
    if _column(data, "tumour_location") is not None:
        groups["tumour location"] = data["tumour_location"].to_numpy(dtype=object)
    if _column(data, "age_at_diagnosis_years") is not None:
        groups["age"] = age_groups(data["age_at_diagnosis_years"], cut_years=options.age_cut_years)
        order["age"] = [f"<= {options.age_cut_years:g}", f"> {options.age_cut_years:g}"]
    if _column(data, "sex") is not None:
        groups["sex"] = data["sex"].to_numpy(dtype=object)
    if _column(data, "ct_manufacturer") is not None:
        groups["CT manufacturer"] = data["ct_manufacturer"].to_numpy(dtype=object)
    return subgroup_auroc(
        data["metastasis_label"],
        data["metastasis_risk_score"],
        groups,
        level_order=order,
        confidence_level=options.confidence_level,
    )


def _has_survival(data: pd.DataFrame) -> bool:
    return _column(data, "overall_survival_days") is not None and _column(data, "death") is not None


def _patient_groups(
    data: pd.DataFrame, options: AnalysisOptions
) -> tuple[CutpointResult | NotComputable, pd.DataFrame]:
    """The MRS cut-point and each patient's MRS, CA19-9 and risk group."""
    mrs = data["metastasis_risk_score"]
    no_group = np.full(len(data), None, dtype=object)
    if options.mrs_cutpoint is not None:
        cut: CutpointResult | NotComputable = NotComputable(
            "Cut-point of MRS",
            f"not estimated: a fixed cut-point of {options.mrs_cutpoint:g} was given",
            (),
        )
        mrs_group = dichotomise(mrs, options.mrs_cutpoint)
    elif options.locked is not None:
        cut, mrs_group = _locked_groups(options.locked, mrs)
    elif _has_survival(data):
        cut = maxstat_cutpoint(
            data["overall_survival_days"],
            data["death"],
            mrs,
            minprop=options.cutpoint_minprop,
            variable="metastasis_risk_score",
        )
        mrs_group = cut.groups if isinstance(cut, CutpointResult) else no_group
    else:
        cut = _absent("Cut-point of MRS", "overall_survival_days", "death")
        mrs_group = no_group
    ca_group = (
        ca19_9_groups(data["ca19_9_u_per_ml"], threshold_u_per_ml=options.ca19_9_threshold_u_per_ml)
        if "ca19_9_u_per_ml" in data.columns
        else no_group
    )
    groups = pd.DataFrame(
        {
            "study_id": data["study_id"].to_numpy(),
            "mrs_group": mrs_group,
            "ca19_9_group": ca_group,
            "risk_group": risk_groups(mrs_group, ca_group),
        }
    )
    return cut, groups


def _locked_groups(locked: OperatingPoint, mrs: pd.Series) -> tuple[NotComputable, np.ndarray]:
    """MRS groups at the locked cut-point (no cut is estimated on the analysed cohort)."""
    if locked.mrs_cutpoint is None:
        reason = (
            f"the locked operating point of {locked.model_version} has no MRS cut-point "
            f"({locked.mrs_cutpoint_reason}); the re-tuned analysis estimates one here"
        )
        return NotComputable("Cut-point of MRS", reason, ("locked MRS cut-point",)), np.full(
            len(mrs), None, dtype=object
        )
    reason = (
        f"not re-estimated on this cohort: the MRS groups use the locked cut-point "
        f"{locked.mrs_cutpoint:.4g} of {locked.model_version} (maxstat on the out-of-fold MRS "
        f"of its development cohort, n = {locked.mrs_cutpoint_n}); the re-tuned analysis "
        "re-estimates it (optimistic)"
    )
    return NotComputable("Cut-point of MRS", reason, ()), dichotomise(mrs, locked.mrs_cutpoint)


def _kaplan_meier_sections(
    data: pd.DataFrame, groups: pd.DataFrame, options: AnalysisOptions
) -> tuple[
    dict[str, KaplanMeierResult | NotComputable], dict[str, KaplanMeierResult | NotComputable]
]:
    """Curves by MRS group, CA19-9 group, resectability and risk group; MRS group within
    each resectability stratum."""
    common: dict[str, Any] = {
        "conf_type": options.km_conf_type,
        "confidence_level": options.confidence_level,
        "at_risk_times": options.at_risk_times_days,
    }
    has_resectability = _column(data, "nccn_resectability") is not None
    groupings: dict[str, tuple[Any, list[str]]] = {
        "mrs_group": (groups["mrs_group"].to_numpy(), ["low", "high"]),
        "ca19_9_group": (groups["ca19_9_group"].to_numpy(), ["low", "high"]),
    }
    if has_resectability:
        groupings["nccn_resectability"] = (
            data["nccn_resectability"].to_numpy(dtype=object),
            _resectability_order(data["nccn_resectability"]),
        )
    known_risk = groups["risk_group"].where(groups["risk_group"] != "unknown")
    groupings["risk_group"] = (known_risk.to_numpy(dtype=object), list(RISK_GROUP_ORDER))

    kaplan: dict[str, KaplanMeierResult | NotComputable] = {}
    within: dict[str, KaplanMeierResult | NotComputable] = {}
    if not _has_survival(data):
        for name in ("mrs_group", "ca19_9_group", "nccn_resectability", "risk_group"):
            kaplan[name] = _absent(f"Kaplan-Meier by {name}", "overall_survival_days", "death")
        return kaplan, within
    time, event = data["overall_survival_days"], data["death"]
    for name, (values, order) in groupings.items():
        kaplan[name] = kaplan_meier_by_group(
            time, event, values, group_variable=name, group_order=order, **common
        )
    if not has_resectability:
        kaplan["nccn_resectability"] = _absent(
            "Kaplan-Meier by resectability", "nccn_resectability"
        )
        return kaplan, within
    for stratum in _resectability_order(data["nccn_resectability"]):
        in_stratum = (data["nccn_resectability"] == stratum).to_numpy()
        within[stratum] = kaplan_meier_by_group(
            time[in_stratum],
            event[in_stratum],
            groups["mrs_group"].to_numpy()[in_stratum],
            group_variable=f"mrs_group ({stratum})",
            group_order=["low", "high"],
            **common,
        )
    return kaplan, within


def _cox_sections(
    data: pd.DataFrame, groups: pd.DataFrame, options: AnalysisOptions
) -> tuple[
    CoxTable,
    CoxResult | NotComputable,
    CoxResult | NotComputable,
    dict[str, ConcordanceResult | NotComputable],
]:
    """Univariable table, multivariable and risk-group models, and the C-indices."""
    frame = pd.DataFrame(
        {
            "mrs_per_0_1": data["metastasis_risk_score"].to_numpy() * 10.0,
            "mrs_group": groups["mrs_group"].to_numpy(),
            "ca19_9_group": groups["ca19_9_group"].to_numpy(),
            "risk_group": groups["risk_group"].where(groups["risk_group"] != "unknown").to_numpy(),
        },
        index=data.index,
    )
    for column in (
        "overall_survival_days",
        "death",
        "nccn_resectability",
        *options.adjust_for,
    ):
        if column in data.columns:
            frame[column] = data[column]
    univariable_variables = [
        name
        for name in dict.fromkeys(
            ["mrs_per_0_1", "mrs_group", "ca19_9_group", "nccn_resectability", "risk_group"]
            + list(options.adjust_for)
        )
        if name in frame.columns
    ]
    if not _has_survival(data):
        absent = _absent("Cox regression", "overall_survival_days", "death")
        return (
            CoxTable(models={name: absent for name in univariable_variables}),
            absent,
            absent,
            {"metastasis_risk_score": absent, "mrs_ca19_9_resectability": absent},
        )
    common: dict[str, Any] = {
        "duration_col": "overall_survival_days",
        "event_col": "death",
        "reference_levels": dict(options.reference_levels),
        "confidence_level": options.confidence_level,
        "min_events": options.min_events,
        "categorical": (
            "mrs_group",
            "ca19_9_group",
            "risk_group",
            "nccn_resectability",
            "sex",
            "centre",
        ),
    }
    prognostic = [
        name
        for name in ("mrs_group", "ca19_9_group", "nccn_resectability")
        if name in frame.columns
    ]
    combined = cox_regression(frame, variables=prognostic, **common)
    c_index: dict[str, ConcordanceResult | NotComputable] = {
        "metastasis_risk_score": harrell_c_index(
            data["overall_survival_days"], data["death"], data["metastasis_risk_score"]
        ),
        "mrs_ca19_9_resectability": (
            ConcordanceResult(
                c_index=combined.concordance,
                n=combined.n,
                n_events=combined.n_events,
                n_missing=combined.n_dropped_missing,
            )
            if isinstance(combined, CoxResult)
            else combined
        ),
    }
    return (
        cox_univariable(frame, variables=univariable_variables, **common),
        adjusted_cox(frame, variables=prognostic, adjust_for=options.adjust_for, **common),
        adjusted_cox(frame, variables=["risk_group"], adjust_for=options.adjust_for, **common),
        c_index,
    )


def _decision_curves(
    data: pd.DataFrame, groups: pd.DataFrame, options: AnalysisOptions
) -> DecisionCurveResult | NotComputable:
    """Net benefit of acting on the MRS (as a probability), on CA19-9 > threshold and on the
    MRS x CA19-9 risk group, against treat all and treat none."""

    def flags(values: pd.Series, chosen: tuple[str, ...]) -> np.ndarray:
        known = values.notna() & (values != "unknown")
        return np.where(known, values.isin(chosen).astype(float), np.nan)

    risk = groups["risk_group"]
    ca = groups["ca19_9_group"]
    threshold = f"{options.ca19_9_threshold_u_per_ml:g}"
    return decision_curve(
        data["metastasis_label"],
        {
            "MRS": data["metastasis_risk_score"].to_numpy(dtype=float),
            f"CA19-9 > {threshold} U/mL": flags(ca, ("high",)),
            "risk group high": flags(risk, ("high",)),
            "risk group mid or high": flags(risk, ("mid", "high")),
        },
        outcome="metastasis at diagnosis",
    )


def _development(data: pd.DataFrame, options: AnalysisOptions) -> DevelopmentResult | NotComputable:
    if _column(data, "developed_metastasis") is None or _column(data, "days_to_metastasis") is None:
        return _absent("Metastasis development", "developed_metastasis", "days_to_metastasis")
    cohort = data[(data["metastasis_label"] == 0) & (data["developed_metastasis"] == 1)]
    return metastasis_development_analysis(
        cohort["days_to_metastasis"],
        cohort["metastasis_risk_score"],
        boundaries_months=options.development_boundaries_months,
        days_per_month=options.days_per_month,
        confidence_level=options.confidence_level,
    )


def run_full_analysis(
    frame: pd.DataFrame,
    *,
    options: AnalysisOptions | None = None,
    slices: pd.DataFrame | None = None,
) -> AnalysisResult:
    """Compute every analysis of the paper for one cohort (see the module docstring).

    ``slices`` optionally holds slice-level scores (columns ``slice_probability`` and
    ``metastasis_label``) for the slice-level evaluation; with a ``patient_id`` column its
    AUROC interval is patient-clustered (Obuchowski 1997), as a patient's slices are not
    independent.
    """
    options = options or AnalysisOptions()
    data, notes = _clean(frame, options.n_folds)
    classification = _classification(data, slices, options)

    fold_columns = {
        f"fold {k}": data[f"mrs_fold_{k}"]
        for k in range(1, options.n_folds + 1)
        if _column(data, f"mrs_fold_{k}") is not None
    }
    folds = (
        fold_roc_summary(
            data["metastasis_label"], fold_columns, confidence_level=options.confidence_level
        )
        if fold_columns
        else _absent("ROC across folds", *(f"mrs_fold_{k}" for k in range(1, options.n_folds + 1)))
    )
    decision_scores, decision_threshold = _decision(data, classification, options)
    missed = (
        missed_at_imaging_flagged(
            data["metastasis_label"],
            data["metastasis_detection"],
            decision_scores,
            threshold=decision_threshold,
            missed_methods=options.missed_detection_methods,
            confidence_level=options.confidence_level,
        )
        if _column(data, "metastasis_detection") is not None
        else _absent("Missed at imaging", "metastasis_detection")
    )
    cut, groups = _patient_groups(data, options)
    kaplan, within = _kaplan_meier_sections(data, groups, options)
    univariable, multivariable, risk_model, c_index = _cox_sections(data, groups, options)
    return AnalysisResult(
        n_patients=len(data),
        options=options,
        data_notes=tuple(notes),
        classification=classification,
        folds=folds,
        sites=_site_analysis(data, options),
        subgroups=_subgroups(data, options),
        missed_at_imaging=missed,
        calibration=calibration_curve(
            data["metastasis_label"],
            data["metastasis_risk_score"],
            n_bins=options.calibration_bins,
            confidence_level=options.confidence_level,
        ),
        mrs_cutpoint=cut,
        kaplan_meier=kaplan,
        mrs_within_resectability=within,
        cox_univariable=univariable,
        cox_multivariable=multivariable,
        cox_risk_groups=risk_model,
        c_index=c_index,
        development=_development(data, options),
        patient_groups=groups,
        decision_curves=_decision_curves(data, groups, options),
    )
