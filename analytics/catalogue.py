"""Every figure and table of the dashboards, by section, from one set of results.

Pure Python (no Django). :func:`entries` turns the results of a request into named entries;
the dashboard pages, the CSV/XLSX downloads, the figure-data CSVs and the HTML report all read
the same entries, so a number appears the same wherever it is shown. An entry's ``frame()`` is
its table, or for a figure the data the figure draws; a not-computable analysis gives the
figure that says why and a one-row frame with the reason.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analytics import figures as fig
from analytics.analyses import CoxAnalysis, CutpointAnalysis
from analytics.stats import (
    AnalysisResult,
    BinaryClassificationResult,
    CoxResult,
    CoxTable,
    DevelopmentResult,
    FoldRocSummary,
    KaplanMeierCurve,
    KaplanMeierResult,
    NotComputable,
    PairwiseComparison,
    SiteRocResult,
    SubgroupAurocTable,
)

__all__ = [
    "MODEL_SECTIONS",
    "SECTIONS",
    "Entry",
    "Results",
    "display_rows",
    "entries",
    "needs_model_version",
]

SECTIONS: dict[str, str] = {
    "evaluation": "Evaluation",
    "survival": "Survival and prognosis",
    "cox": "Cox regression",
    "development": "Metastasis development",
    "subgroups": "Subgroups",
}
#: Sections made only of analyses of the model's scores.
MODEL_SECTIONS = frozenset({"evaluation", "development", "subgroups"})


def needs_model_version(analysis: str) -> NotComputable:
    return NotComputable(
        analysis,
        "no model version was chosen: analyses of the Metastasis Risk Score need one",
        ("model version",),
    )


@dataclass(frozen=True, eq=False)
class Results:
    """What one request computed; parts a section does not need are left ``None``."""

    synthetic: bool
    analysis: AnalysisResult | None = None
    clinical_kaplan_meier: dict[str, KaplanMeierResult | NotComputable] = field(
        default_factory=dict
    )
    custom_group: str | None = None
    custom_kaplan_meier: KaplanMeierResult | NotComputable | None = None
    cox: CoxAnalysis | None = None
    overall_kaplan_meier: KaplanMeierResult | NotComputable | None = None
    cutpoint: CutpointAnalysis | None = None
    chosen_subgroups: SubgroupAurocTable | None = None

    @property
    def kaplan_meier(self) -> dict[str, KaplanMeierResult | NotComputable]:
        """Overall survival, and curves by MRS group, CA19-9 group, resectability and risk
        group."""
        overall = (
            {} if self.overall_kaplan_meier is None else {"overall": self.overall_kaplan_meier}
        )
        if self.analysis is not None:
            return {**overall, **self.analysis.kaplan_meier}
        return {
            **overall,
            "mrs_group": needs_model_version("Kaplan-Meier by mrs_group"),
            **self.clinical_kaplan_meier,
            "risk_group": needs_model_version("Kaplan-Meier by risk_group"),
        }

    @property
    def all_kaplan_meier(self) -> dict[str, KaplanMeierResult | NotComputable]:
        """Every Kaplan-Meier analysis of the request, keyed by what groups it."""
        curves = self.kaplan_meier
        if self.analysis is not None:
            for stratum, result in self.analysis.mrs_within_resectability.items():
                curves[f"mrs_group within {stratum}"] = result
        if self.custom_group and self.custom_kaplan_meier is not None:
            curves.setdefault(self.custom_group, self.custom_kaplan_meier)
        if self.cutpoint is not None:
            curves[f"{self.cutpoint.variable} (maxstat cut)"] = self.cutpoint.kaplan_meier
        return curves


@dataclass(frozen=True, eq=False)
class Entry:
    """One figure or table: ``frame()`` gives its data, ``figure()`` draws a figure."""

    name: str
    title: str
    section: str
    kind: Literal["figure", "table"]
    source: Any
    frame: Callable[[], pd.DataFrame]
    figure: Callable[[], go.Figure] | None = None
    explanation: NotComputable | None = None
    wide: bool = False
    operating_point: str = ""

    @property
    def not_computable(self) -> NotComputable | None:
        """Why the analysis (or its headline part, ``explanation``) was not computed."""
        if isinstance(self.source, NotComputable):
            return self.source
        return self.explanation


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def _or_reason(result: Any, frame: Callable[[Any], pd.DataFrame]) -> Callable[[], pd.DataFrame]:
    """``frame(result)``, or the one-row reason when ``result`` is not computable."""
    return lambda: result.to_frame() if isinstance(result, NotComputable) else frame(result)


def _with_first(frame: pd.DataFrame, **columns: Any) -> pd.DataFrame:
    frame = frame.copy()
    for position, (name, value) in enumerate(columns.items()):
        frame.insert(position, name, value)
    return frame


def _concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _roc_frame(
    result: BinaryClassificationResult | NotComputable, folds: Any = None
) -> pd.DataFrame:
    parts = []
    if isinstance(result, BinaryClassificationResult):
        parts.append(_with_first(result.roc.to_frame(), curve="pooled"))
    if isinstance(folds, FoldRocSummary):
        for name, curve in folds.fold_curves.items():
            parts.append(_with_first(curve.to_frame(), curve=name))
        mean = folds.to_frame().rename(columns={"mean tpr": "tpr"})
        parts.append(_with_first(mean, curve="mean across folds"))
    return _concat(parts) if parts else result.to_frame()


def _km_frame(result: KaplanMeierResult | NotComputable) -> pd.DataFrame:
    if isinstance(result, NotComputable):
        return result.to_frame()
    parts = []
    for group in result.groups:
        curve = result.curves[group]
        if isinstance(curve, KaplanMeierCurve):
            parts.append(_with_first(curve.to_frame(), group=group))
        else:
            parts.append(pd.DataFrame([{"group": group, "note": curve.reason}]))
    return _concat(parts)


def _site_frame(result: SiteRocResult | NotComputable) -> pd.DataFrame:
    if isinstance(result, NotComputable):
        return result.to_frame()
    parts = [
        _with_first(curve.to_frame(), curve=site)
        for site, curve in result.curves.items()
        if not isinstance(curve, NotComputable)
    ]
    if not isinstance(result.micro_curve, NotComputable):
        parts.append(_with_first(result.micro_curve.to_frame(), curve="micro-average"))
    return _concat(parts)


def _development_values(result: DevelopmentResult | NotComputable) -> pd.DataFrame:
    if isinstance(result, NotComputable):
        return result.to_frame()
    return _concat(
        pd.DataFrame({"group": group, "metastasis_risk_score": values})
        for group, values in result.group_values.items()
    )


def _classification_table(
    results: dict[str, BinaryClassificationResult | NotComputable],
) -> pd.DataFrame:
    rows = []
    for key, result in results.items():
        if isinstance(result, NotComputable):
            rows.append(pd.DataFrame([{"analysis": key, "note": result.reason}]))
        else:
            rows.append(result.to_frame())
    return _concat(rows)


def _confusion_table(
    results: dict[str, BinaryClassificationResult | NotComputable],
) -> pd.DataFrame:
    rows = []
    for key, result in results.items():
        if isinstance(result, NotComputable):
            rows.append(pd.DataFrame([{"analysis": key, "note": result.reason}]))
            continue
        matrix = result.at_threshold.matrix().reset_index(names="actual")
        rows.append(_with_first(matrix, analysis=key, threshold=result.at_threshold.threshold))
    return _concat(rows)


def _medians_table(curves: dict[str, KaplanMeierResult | NotComputable]) -> pd.DataFrame:
    rows = []
    for grouping, result in curves.items():
        if isinstance(result, NotComputable):
            rows.append(pd.DataFrame([{"grouping": grouping, "note": result.reason}]))
        else:
            rows.append(_with_first(result.to_frame(), grouping=grouping))
    return _concat(rows)


def _split_note(grouping: str, note: str) -> str:
    """The uncorrected-p note of the groupings made with the MRS cut."""
    return note if grouping.startswith(("mrs_group", "risk_group")) else ""


def _logrank_table(
    curves: dict[str, KaplanMeierResult | NotComputable], note: str = ""
) -> pd.DataFrame:
    rows = []
    for grouping, result in curves.items():
        test = result.logrank if isinstance(result, KaplanMeierResult) else result
        if isinstance(test, NotComputable):
            rows.append({"grouping": grouping, "note": test.reason})
        else:
            rows.append(
                {
                    "grouping": grouping,
                    "groups": " / ".join(test.groups),
                    "chi-square": test.chi_square,
                    "df": test.df,
                    "p": test.p_value,
                    "note": _split_note(grouping, note),
                }
            )
    return pd.DataFrame(rows)


def _at_risk_table(curves: dict[str, KaplanMeierResult | NotComputable]) -> pd.DataFrame:
    rows = []
    for grouping, result in curves.items():
        if isinstance(result, NotComputable):
            continue
        for group in result.groups:
            for time, count in zip(result.at_risk_times, result.at_risk[group], strict=True):
                rows.append({"grouping": grouping, "group": group, "time": time, "at risk": count})
    return pd.DataFrame(rows)


def _c_index_table(results: Results) -> pd.DataFrame:
    models: dict[str, Any] = {}
    if results.cox is not None:
        models["chosen multivariable model"] = results.cox.c_index
    if results.analysis is not None:
        models.update(
            {
                "MRS alone": results.analysis.c_index["metastasis_risk_score"],
                "MRS group + CA19-9 group + resectability": results.analysis.c_index[
                    "mrs_ca19_9_resectability"
                ],
            }
        )
    rows = []
    for name, result in models.items():
        if isinstance(result, NotComputable):
            rows.append({"model": name, "note": result.reason})
        else:
            rows.append(
                {"model": name, "C-index": result.c_index, "n": result.n, "events": result.n_events}
            )
    return pd.DataFrame(rows)


def _cox_table(result: CoxResult | CoxTable | NotComputable) -> pd.DataFrame:
    if isinstance(result, CoxResult):
        frame = result.to_frame()
        notes = [*result.notes]
        if result.adjusted_for:
            notes.append("adjusted for " + ", ".join(result.adjusted_for))
        frame["n"] = result.n
        frame["events"] = result.n_events
        frame["concordance"] = result.concordance
        frame["note"] = "; ".join(notes)
        frame["proportional hazards (cox.zph)"] = result.ph_flag
        return frame
    return result.to_frame()


def _ph_table(result: CoxResult | CoxTable | NotComputable) -> pd.DataFrame:
    """The cox.zph check of each model of a Cox table, a row per term and GLOBAL."""
    models = result.models if isinstance(result, CoxTable) else {"model": result}
    frames = []
    for name, model in models.items():
        check = model.proportional_hazards if isinstance(model, CoxResult) else model
        if check is None:
            continue
        frames.append(_with_first(check.to_frame(), model=name))
    return _concat(frames)


def _ph_title_flag(result: CoxResult | CoxTable | NotComputable) -> str:
    """ ": PROPORTIONAL HAZARDS VIOLATED ..." when any model's check has p < 0.05."""
    models = result.models.values() if isinstance(result, CoxTable) else [result]
    flags = [
        model.ph_flag
        for model in models
        if isinstance(model, CoxResult) and model.ph_flag.startswith("PROPORTIONAL")
    ]
    return f": {'; '.join(flags)}" if flags else ""


def _development_tests(result: DevelopmentResult) -> pd.DataFrame:
    rows = []
    kruskal = result.kruskal_wallis
    if isinstance(kruskal, NotComputable):
        rows.append({"test": "Kruskal-Wallis", "note": kruskal.reason})
    else:
        rows.append(
            {"test": "Kruskal-Wallis", "statistic": kruskal.statistic, "p": kruskal.p_value}
        )
    for comparison in result.pairwise:
        if isinstance(comparison, PairwiseComparison):
            rows.append(
                {
                    "test": f"Mann-Whitney {comparison.group_1} vs {comparison.group_2}",
                    "n": f"{comparison.n_1} vs {comparison.n_2}",
                    "statistic": comparison.u_statistic,
                    "p": comparison.p_value,
                    "p (Holm)": comparison.p_value_holm,
                }
            )
        else:
            rows.append({"test": comparison.analysis, "note": comparison.reason})
    return pd.DataFrame(rows)


def _development_roc(result: DevelopmentResult) -> pd.DataFrame:
    return _concat(
        _with_first(item.to_frame(), comparison=name)
        if isinstance(item, BinaryClassificationResult)
        else pd.DataFrame([{"comparison": name, "note": item.reason}])
        for name, item in result.early_vs_late.items()
    )


# --------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------


_SYMBOLS = (("<=", " le "), (">=", " ge "), ("<", " lt "), (">", " gt "))


def _slug(text: str) -> str:
    """``"< 3 vs >= 3 months"`` -> ``"lt-3-vs-ge-3-months"`` (names in URLs and element ids)."""
    for symbol, word in _SYMBOLS:
        text = text.replace(symbol, word)
    slug = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    return "-".join(part for part in slug.split("-") if part)


class _Builder:
    def __init__(self, synthetic: bool, operating_point: str = ""):
        self.synthetic = synthetic
        self.operating_point = operating_point
        self.items: list[Entry] = []

    def _drawn_title(self, title: str) -> str:
        """The figure's own title: with the operating point under it, so a PNG/SVG says it."""
        if not self.operating_point:
            return title
        lines = textwrap.wrap(f"Operating point: {self.operating_point}", 110)
        return title + "".join(f"<br><sup>{line}</sup>" for line in lines)

    def figure(
        self,
        section: str,
        name: str,
        title: str,
        source: Any,
        draw: Callable[..., go.Figure],
        data: Callable[[], pd.DataFrame] | None = None,
        explanation: NotComputable | None = None,
        wide: bool = False,
        **keywords: Any,
    ) -> None:
        """``draw`` is a builder of :mod:`analytics.figures` (they draw a not-computable
        result as the reason); ``data`` gives the figure's data (default: ``to_frame()``)."""
        self.items.append(
            Entry(
                name=name,
                title=title,
                section=section,
                kind="figure",
                source=source,
                frame=data or (lambda: source.to_frame()),
                figure=lambda: draw(
                    source, title=self._drawn_title(title), synthetic=self.synthetic, **keywords
                ),
                explanation=explanation,
                wide=wide,
                operating_point=self.operating_point,
            )
        )

    def table(
        self,
        section: str,
        name: str,
        title: str,
        source: Any,
        frame: Callable[[], pd.DataFrame] | None = None,
        explanation: NotComputable | None = None,
    ) -> None:
        self.items.append(
            Entry(
                name=name,
                title=title,
                section=section,
                kind="table",
                source=source,
                frame=(lambda: source.to_frame())
                if frame is None or isinstance(source, NotComputable)
                else frame,
                explanation=explanation,
                operating_point=self.operating_point,
            )
        )


_LEVELS = {
    "patient_mrs": "patient level, MRS",
    "patient_fraction": "patient level, fraction of slices positive",
    "slice": "slice level",
}


def _evaluation(build: _Builder, analysis: AnalysisResult) -> None:
    section = "evaluation"
    classification = analysis.classification
    point = analysis.options.operating_point
    if point is not None:
        build.table(
            section,
            "operating-point",
            f"Operating point: {point.name} ({point.model_version})"
            + (", NOT USED: re-tuned on this cohort" if analysis.options.retune_on_cohort else ""),
            point,
        )
    for key, result in classification.items():
        label, slug = _LEVELS.get(key, key), _slug(key)
        folds = analysis.folds if key == "patient_mrs" else None
        build.figure(
            section,
            f"roc-{slug}",
            f"ROC: metastasis ({label})",
            result,
            fig.roc_figure,
            data=lambda r=result, f=folds: _roc_frame(r, f),
            fold_summary=folds,
        )
        build.figure(
            section,
            f"precision-recall-{slug}",
            f"Precision-recall: metastasis ({label})",
            result,
            fig.precision_recall_figure,
            data=_or_reason(result, lambda r: r.precision_recall.to_frame()),
        )
        build.figure(
            section,
            f"confusion-{slug}",
            f"Confusion matrix at the operating point ({label})",
            result,
            fig.confusion_matrix_figure,
            data=_or_reason(result, lambda r: r.at_threshold.to_frame()),
        )
    build.figure(
        section,
        "sites-roc",
        "ROC by metastasis site (one-vs-rest)",
        analysis.sites,
        fig.site_roc_figure,
        data=lambda: _site_frame(analysis.sites),
    )
    build.figure(
        section,
        "calibration",
        "Calibration of the MRS",
        analysis.calibration,
        fig.calibration_figure,
    )
    curves = analysis.decision_curves
    if curves is not None:
        build.figure(
            section,
            "decision-curves",
            "Decision curves: net benefit of the MRS, CA19-9 and the risk group",
            curves,
            fig.decision_curve_figure,
            wide=True,
        )
        build.table(section, "decision-curves", "Decision curves (net benefit)", curves)
    build.table(
        section,
        "classification",
        "Classification metrics (AUROC with DeLong CI, threshold metrics)",
        classification,
        frame=lambda: _classification_table(classification),
    )
    build.table(
        section,
        "confusion-matrices",
        "Confusion matrices at the operating point",
        classification,
        frame=lambda: _confusion_table(classification),
    )
    folds = analysis.folds
    build.table(
        section,
        "folds",
        "AUROC across fold models (mean, t-based CI)",
        folds,
        frame=_or_reason(folds, lambda r: r.auroc_summary.to_frame()),
    )
    build.table(section, "sites", "AUROC by metastasis site", analysis.sites)
    build.table(section, "calibration-bins", "Calibration bins", analysis.calibration)
    build.table(
        section,
        "missed-at-imaging",
        "Metastases missed at imaging that the model flags",
        analysis.missed_at_imaging,
    )


def _survival(build: _Builder, results: Results) -> None:
    section = "survival"
    analysis = results.analysis
    cut = analysis.mrs_cutpoint if analysis is not None else needs_model_version("Cut-point")
    build.figure(
        section,
        "mrs-cutpoint",
        "MRS cut-point: maximally selected log-rank statistic",
        cut,
        fig.cutpoint_figure,
        data=_or_reason(cut, lambda r: r.candidates_frame()),
    )
    titles = {
        "overall": "Overall survival, all patients",
        "mrs_group": "Overall survival by MRS group",
        "ca19_9_group": "Overall survival by CA19-9 group",
        "nccn_resectability": "Overall survival by NCCN resectability",
        "risk_group": "Overall survival by risk group (MRS x CA19-9)",
    }
    split_note = analysis.mrs_split_note if analysis is not None else ""
    for grouping, result in results.kaplan_meier.items():
        draw = fig.risk_group_figure if grouping == "risk_group" else fig.kaplan_meier_figure
        build.figure(
            section,
            f"km-{_slug(grouping)}",
            titles.get(grouping, f"Overall survival by {grouping}"),
            result,
            draw,
            data=lambda r=result: _km_frame(r),
            p_note=_split_note(grouping, split_note),
        )
    if analysis is not None:
        for stratum, result in analysis.mrs_within_resectability.items():
            build.figure(
                section,
                f"km-mrs-within-{_slug(stratum)}",
                f"Overall survival by MRS group: {stratum}",
                result,
                fig.kaplan_meier_figure,
                data=lambda r=result: _km_frame(r),
                p_note=split_note,
            )
    if results.custom_group and results.custom_group not in results.kaplan_meier:
        custom = results.custom_kaplan_meier
        build.figure(
            section,
            f"km-{_slug(results.custom_group)}",
            f"Overall survival by {results.custom_group}",
            custom,
            fig.kaplan_meier_figure,
            data=lambda: _km_frame(custom),
        )
    chosen = results.cutpoint
    if chosen is not None:
        name = _slug(chosen.variable)
        build.figure(
            section,
            f"cutpoint-{name}",
            f"Cut-point of {chosen.variable}: maximally selected log-rank statistic",
            chosen.cutpoint,
            fig.cutpoint_figure,
            data=_or_reason(chosen.cutpoint, lambda r: r.candidates_frame()),
        )
        build.figure(
            section,
            f"km-cutpoint-{name}",
            f"Overall survival by {chosen.variable} (maxstat cut, low = value <= cut)",
            chosen.kaplan_meier,
            fig.kaplan_meier_figure,
            data=lambda: _km_frame(chosen.kaplan_meier),
        )
        build.table(section, f"cutpoint-{name}", f"Cut-point of {chosen.variable}", chosen.cutpoint)
    curves = results.all_kaplan_meier
    build.table(section, "mrs-cutpoint", "MRS cut-point", cut)
    build.table(
        section,
        "kaplan-meier-medians",
        "Median overall survival by group (days, 95% CI)",
        curves,
        frame=lambda: _medians_table(curves),
    )
    note = analysis.mrs_split_note if analysis is not None else ""
    build.table(
        section, "logrank", "Log-rank tests", curves, frame=lambda: _logrank_table(curves, note)
    )
    build.table(
        section, "numbers-at-risk", "Numbers at risk", curves, frame=lambda: _at_risk_table(curves)
    )


def _cox(build: _Builder, results: Results) -> None:
    section = "cox"
    cox = results.cox
    analysis = results.analysis
    risk = analysis.cox_risk_groups if analysis is not None else needs_model_version("Cox model")
    if cox is not None:
        build.figure(
            section,
            "cox-univariable",
            "Univariable Cox regression: hazard ratios",
            cox.univariable,
            fig.cox_forest_figure,
            data=lambda: _cox_table(cox.univariable),
            wide=True,
        )
        build.figure(
            section,
            "cox-multivariable",
            "Multivariable Cox regression: hazard ratios",
            cox.multivariable,
            fig.cox_forest_figure,
            data=lambda: _cox_table(cox.multivariable),
            wide=True,
        )
    build.figure(
        section,
        "cox-risk-groups",
        "Cox regression of the risk groups",
        risk,
        fig.cox_forest_figure,
        data=lambda: _cox_table(risk),
        wide=True,
    )
    if cox is not None:
        build.table(
            section,
            "cox-univariable",
            "Univariable Cox regression",
            cox.univariable,
            frame=lambda: _cox_table(cox.univariable),
        )
        build.table(
            section,
            "cox-multivariable",
            "Multivariable Cox regression",
            cox.multivariable,
            frame=lambda: _cox_table(cox.multivariable),
        )
    build.table(
        section,
        "cox-risk-groups",
        "Cox regression of the risk groups",
        risk,
        lambda: _cox_table(risk),
    )
    checked = {"cox-risk-groups": ("the risk groups", risk)}
    if cox is not None:
        checked = {
            "cox-univariable": ("the univariable models", cox.univariable),
            "cox-multivariable": ("the multivariable model", cox.multivariable),
            **checked,
        }
    for name, (label, model) in checked.items():
        build.table(
            section,
            f"ph-{name.removeprefix('cox-')}",
            f"Proportional-hazards check (cox.zph, scaled Schoenfeld residuals) of {label}"
            + _ph_title_flag(model),
            model,
            frame=lambda m=model: _ph_table(m),
        )
    build.table(
        section, "c-index", "Harrell's C-index", results, frame=lambda: _c_index_table(results)
    )


def _development(build: _Builder, analysis: AnalysisResult) -> None:
    section = "development"
    result = analysis.development
    build.figure(
        section,
        "development",
        "MRS by time to metastasis development",
        result,
        fig.development_figure,
        data=lambda: _development_values(result),
    )
    if isinstance(result, DevelopmentResult):
        for name, item in result.early_vs_late.items():
            build.figure(
                section,
                f"development-roc-{_slug(name)}",
                f"ROC: metastasis {name}",
                item,
                fig.roc_figure,
                data=lambda r=item: _roc_frame(r),
            )
            build.figure(
                section,
                f"development-confusion-{_slug(name)}",
                f"Confusion matrix: metastasis {name} (Youden cut on these data, optimistic)",
                item,
                fig.confusion_matrix_figure,
                data=_or_reason(item, lambda r: r.at_threshold.to_frame()),
            )
    build.table(section, "development-groups", "MRS by time-to-metastasis group", result)
    build.table(
        section,
        "development-tests",
        "Tests of the MRS between groups",
        result,
        frame=lambda: _development_tests(result),
    )
    build.table(
        section,
        "development-roc",
        "Early vs late metastasis: ROC analyses",
        result,
        frame=lambda: _development_roc(result),
    )


def _subgroups(build: _Builder, analysis: AnalysisResult) -> None:
    table = analysis.subgroups
    overall = table.overall if isinstance(table, SubgroupAurocTable) else None
    explanation = overall if isinstance(overall, NotComputable) else None
    build.figure(
        "subgroups",
        "subgroups",
        "AUROC by subgroup (tumour size, location, age, sex, CT manufacturer)",
        table,
        fig.subgroup_forest_figure,
        explanation=explanation,
        wide=True,
    )
    build.table("subgroups", "subgroups", "AUROC by subgroup", table, explanation=explanation)


def entries(results: Results, sections: Iterable[str] | None = None) -> list[Entry]:
    """The figures and tables of ``sections`` (all by default) that ``results`` hold."""
    wanted = list(SECTIONS) if sections is None else list(sections)
    analysis = results.analysis
    build = _Builder(
        results.synthetic, analysis.options.operating_point_label if analysis is not None else ""
    )
    for section in wanted:
        if section == "survival":
            _survival(build, results)
        elif section == "cox":
            _cox(build, results)
        elif analysis is None:
            continue
        elif section == "evaluation":
            _evaluation(build, analysis)
        elif section == "development":
            _development(build, analysis)
        elif section == "subgroups":
            _subgroups(build, analysis)
            if results.chosen_subgroups is not None:
                chosen = results.chosen_subgroups
                build.table(
                    section,
                    "auroc-chosen-subgroups",
                    "AUROC by the chosen subgroups (" + ", ".join(chosen.variables) + ")",
                    chosen,
                )
    return build.items


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return ""
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        if abs(number) < 1e-12:
            return "0"  # floating-point noise of a computation on values near 1 (2.78e-17)
        if abs(number) < 1e-4:
            return "< 0.0001" if number > 0 else "> -0.0001"
        if abs(number) < 0.001:
            return f"{number:.3g}"
        return f"{number:.4g}" if abs(number) < 1e5 else f"{number:.0f}"
    return str(value)


def display_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Column names and rows of formatted cells (4 significant digits; empty for missing)."""
    columns = [str(column) for column in frame.columns]
    rows = [[_cell(value) for value in row] for row in frame.itertuples(index=False)]
    return columns, rows
