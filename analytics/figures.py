"""Plotly figure builders: results from :mod:`analytics.stats` in, ``go.Figure`` out.

No Django here: the views render ``figure.to_json()`` (or ``to_html``) and the notebooks call
``figure.show()``. Every builder

- accepts the result dataclass *or* the :class:`~analytics.stats.NotComputable` that an
  analysis returned instead, and in the latter case returns a figure whose only content is an
  annotation saying what is missing and why;
- takes ``synthetic: bool``: when true the figure carries a "Synthetic data" caption, so a
  demo figure can never be mistaken for patient data;
- takes ``title`` (a sensible default otherwise).

Annotations that tests and templates look for carry a ``name``: ``"synthetic-data"``,
``"not-computable"``, ``"p-value"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analytics.stats import (
    AurocEstimate,
    BinaryClassificationResult,
    CalibrationResult,
    ConfusionMatrixResult,
    CoxResult,
    CoxTable,
    CutpointResult,
    DecisionCurveResult,
    DevelopmentResult,
    FoldRocSummary,
    KaplanMeierCurve,
    KaplanMeierResult,
    NotComputable,
    PairwiseComparison,
    RocCurve,
    SiteRocResult,
    SubgroupAurocTable,
    p_text,
)

__all__ = [
    "SYNTHETIC_CAPTION",
    "calibration_figure",
    "confusion_matrix_figure",
    "cox_forest_figure",
    "cutpoint_figure",
    "decision_curve_figure",
    "development_figure",
    "figures_for_analysis",
    "kaplan_meier_figure",
    "not_computable_figure",
    "precision_recall_figure",
    "risk_group_figure",
    "roc_figure",
    "site_roc_figure",
    "subgroup_forest_figure",
]

SYNTHETIC_CAPTION = "Synthetic data: not patient data"

_PALETTE = ("#1F77B4", "#D62728", "#2CA02C", "#FF7F0E", "#9467BD", "#8C564B", "#E377C2", "#17BECF")
_GROUP_COLOURS = {"low": "#2CA02C", "mid": "#FF7F0E", "high": "#D62728", "unknown": "#7F7F7F"}

# A small white template: assigning plotly's full "plotly_white" deep-copies thousands of
# properties per figure (most of the build time); these are the parts the figures use.
_AXIS_STYLE = {
    "gridcolor": "#EBF0F8",
    "linecolor": "#EBF0F8",
    "zerolinecolor": "#EBF0F8",
    "ticks": "",
    "automargin": True,
}
_TEMPLATE = go.layout.Template(
    layout={
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "font": {"color": "#2A3F5F"},
        "colorway": list(_PALETTE),
        "hovermode": "closest",
        "xaxis": _AXIS_STYLE,
        "yaxis": _AXIS_STYLE,
    }
)


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


#: Top margin of every figure: the synthetic-data badge on its own line, then the title (and
#: its operating-point subtitle) under it, never on top of each other.
_TOP_MARGIN = 110
_BADGE_HEIGHT = 26


def _finish(fig: go.Figure, *, title: str, synthetic: bool, height: int | None = None) -> go.Figure:
    total_height = height or fig.layout.height or 450  # plotly's default height
    fig.update_layout(
        title={
            "text": title,
            "x": 0.0,
            "xanchor": "left",
            # under the badge's line when there is one (plotly anchors a title of several
            # lines by its middle line: each further line moves its top up by ~half a line)
            "y": 1.0
            - (((_BADGE_HEIGHT + 6) if synthetic else 8) + 9 * title.count("<br>")) / total_height,
            "yref": "container",
            "yanchor": "top",
        },
        template=_TEMPLATE,
        margin={"l": 70, "r": 30, "t": _TOP_MARGIN, "b": 60},
        legend={"bgcolor": "rgba(255,255,255,0.7)"},
    )
    if height is not None:
        fig.update_layout(height=height)
    if synthetic:
        fig.add_annotation(
            name="synthetic-data",
            text=f"<b>{SYNTHETIC_CAPTION}</b>",
            xref="paper",
            yref="paper",
            x=1.0,
            y=1.0,
            xanchor="right",
            yanchor="bottom",
            # from the top of the plot area up to the top line of the figure
            yshift=_TOP_MARGIN - _BADGE_HEIGHT,
            showarrow=False,
            font={"color": "#B00020", "size": 13},
            bgcolor="rgba(255, 235, 238, 0.9)",
        )
    return fig


def not_computable_figure(
    result: NotComputable, *, title: str | None = None, synthetic: bool = False
) -> go.Figure:
    """An empty figure that says which analysis could not be computed, and why."""
    fig = go.Figure()
    missing = f"<br>Missing: {', '.join(result.missing)}" if result.missing else ""
    fig.add_annotation(
        name="not-computable",
        text=f"<b>Not computable: {result.analysis}</b><br>{result.reason}{missing}",
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        showarrow=False,
        align="center",
        font={"size": 14},
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _finish(fig, title=title or result.analysis, synthetic=synthetic, height=320)


def _colour(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def _distinct_colours(groups: Sequence[str], given: Mapping[str, str]) -> dict[str, str]:
    """A colour per group, no two alike while the palette lasts: the given ones (or the
    risk-group colours for low/mid/high), then palette colours not yet taken."""
    colours = {g: given.get(g, _GROUP_COLOURS.get(g, "")) for g in groups}
    free = [c for c in _PALETTE if c not in colours.values()]
    for index, group in enumerate(groups):
        if not colours[group]:
            colours[group] = free.pop(0) if free else _colour(index)
    return colours


def _log_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """Ticks of a hazard-ratio log axis at 1-2-5 steps, labelled as numbers ("0.2", not
    plotly's "2" for the minor ticks of a decade)."""
    values: list[float] = []
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):  # finer steps on a narrow axis
        candidates = [m * 10.0**e for e in range(-4, 5) for m in mantissas]
        values = [v for v in candidates if low <= v <= high]
        if len(values) >= 4:
            break
    if len(values) > 9:
        values = [v for v in values if round(v / 10.0 ** math.floor(math.log10(v))) != 2]
    return values or [1.0], [f"{v:.4g}" for v in values or [1.0]]


def _auroc_label(estimate: AurocEstimate | NotComputable | None, fallback: float) -> str:
    if isinstance(estimate, AurocEstimate):
        return f"AUROC {estimate.formatted()}"
    return f"AUROC {fallback:.3f}"


def _chance_line() -> go.Scatter:
    return go.Scatter(
        x=[0, 1],
        y=[0, 1],
        mode="lines",
        name="chance",
        line={"dash": "dash", "color": "#999999", "width": 1},
        hoverinfo="skip",
    )


def _square_axes(fig: go.Figure, x_title: str, y_title: str) -> None:
    fig.update_xaxes(title=x_title, range=[-0.01, 1.01], constrain="domain")
    fig.update_yaxes(title=y_title, range=[-0.01, 1.01], scaleanchor="x", scaleratio=1)


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def roc_figure(
    result: BinaryClassificationResult | RocCurve | NotComputable,
    *,
    fold_summary: FoldRocSummary | NotComputable | None = None,
    show_fold_curves: bool = True,
    title: str | None = None,
    synthetic: bool = False,
) -> go.Figure:
    """ROC curve with the AUROC (DeLong 95% CI) in the legend and the Youden point.

    With ``fold_summary`` the figure adds each fold's curve (faint), the mean curve across
    folds and its pointwise 95% band, labelled with the mean AUROC and its t-based CI. When
    ``result`` is not computable but the fold summary is, the folds are drawn alone.
    """
    folds_ok = isinstance(fold_summary, FoldRocSummary)
    if isinstance(result, NotComputable) and not folds_ok:
        return not_computable_figure(result, title=title, synthetic=synthetic)
    fig = go.Figure()
    fig.add_trace(_chance_line())
    if isinstance(fold_summary, FoldRocSummary):
        if show_fold_curves:
            for index, (name, curve) in enumerate(fold_summary.fold_curves.items()):
                fig.add_trace(
                    go.Scatter(
                        x=curve.fpr,
                        y=curve.tpr,
                        mode="lines",
                        name=f"{name}: AUROC {curve.auroc:.3f}",
                        line={"width": 1, "color": _colour(index)},
                        opacity=0.35,
                        legendgroup="folds",
                    )
                )
        fig.add_trace(
            go.Scatter(
                x=fold_summary.fpr_grid,
                y=fold_summary.tpr_upper,
                mode="lines",
                line={"width": 0},
                name="fold band upper",
                showlegend=False,
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=fold_summary.fpr_grid,
                y=fold_summary.tpr_lower,
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor="rgba(31, 119, 180, 0.18)",
                name=f"{fold_summary.auroc_summary.confidence_level:.0%} band across folds",
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=fold_summary.fpr_grid,
                y=fold_summary.mean_tpr,
                mode="lines",
                line={"width": 3, "color": "#1F77B4"},
                name=f"mean of {len(fold_summary.fold_curves)} folds: AUROC "
                f"{fold_summary.auroc_summary.formatted()}",
            )
        )
    if not isinstance(result, NotComputable):
        curve = result.roc if isinstance(result, BinaryClassificationResult) else result
        estimate = result.auroc if isinstance(result, BinaryClassificationResult) else None
        fig.add_trace(
            go.Scatter(
                x=curve.fpr,
                y=curve.tpr,
                mode="lines",
                line={"width": 2.5, "color": "#D62728" if folds_ok else "#1F77B4"},
                name=_auroc_label(estimate, curve.auroc),
                customdata=curve.thresholds,
                hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>threshold %{customdata:.4g}"
                "<extra></extra>",
            )
        )
        if isinstance(result, BinaryClassificationResult):
            youden = result.youden
            fig.add_trace(
                go.Scatter(
                    x=[1.0 - youden.specificity],
                    y=[youden.sensitivity],
                    mode="markers",
                    marker={"size": 11, "symbol": "star", "color": "#000000"},
                    name=f"Youden threshold {youden.threshold:.3g} "
                    f"(sens {youden.sensitivity:.2f}, spec {youden.specificity:.2f})",
                )
            )
    _square_axes(fig, "1 - specificity (false-positive rate)", "Sensitivity (true-positive rate)")
    fig.update_layout(legend={"x": 0.98, "y": 0.02, "xanchor": "right", "yanchor": "bottom"})
    default = "ROC curve"
    if isinstance(result, BinaryClassificationResult):
        default = f"ROC: {result.name} ({result.level} level)"
    return _finish(fig, title=title or default, synthetic=synthetic, height=560)


def precision_recall_figure(
    result: BinaryClassificationResult | NotComputable,
    *,
    title: str | None = None,
    synthetic: bool = False,
) -> go.Figure:
    """Precision-recall curve (step) with AUPRC in the legend and the prevalence baseline."""
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    curve = result.precision_recall
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[curve.prevalence, curve.prevalence],
            mode="lines",
            name=f"prevalence {curve.prevalence:.3f}",
            line={"dash": "dash", "color": "#999999", "width": 1},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=curve.recall,
            y=curve.precision,
            mode="lines",
            line_shape="vh",
            line={"width": 2.5, "color": "#1F77B4"},
            name=f"AUPRC {curve.average_precision:.3f}",
        )
    )
    _square_axes(fig, "Recall (sensitivity)", "Precision (PPV)")
    fig.update_layout(legend={"x": 0.02, "y": 0.02, "xanchor": "left", "yanchor": "bottom"})
    default = f"Precision-recall: {result.name} ({result.level} level)"
    return _finish(fig, title=title or default, synthetic=synthetic, height=560)


def confusion_matrix_figure(
    result: ConfusionMatrixResult | BinaryClassificationResult | NotComputable,
    *,
    title: str | None = None,
    synthetic: bool = False,
) -> go.Figure:
    """Annotated 2x2 heatmap (counts and row percentages) with the metrics under it."""
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    matrix = result.at_threshold if isinstance(result, BinaryClassificationResult) else result
    negative, positive = (
        result.classes
        if isinstance(result, BinaryClassificationResult)
        else ("no metastasis", "metastasis")
    )
    counts = matrix.matrix().to_numpy()
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(
        counts, row_totals, out=np.zeros_like(counts, dtype=float), where=row_totals > 0
    )
    text = [[f"<b>{counts[i, j]}</b><br>{shares[i, j]:.1%}" for j in range(2)] for i in range(2)]
    fig = go.Figure(
        go.Heatmap(
            z=shares,
            x=[f"Predicted {negative}", f"Predicted {positive}"],
            y=[f"Actual {negative}", f"Actual {positive}"],
            text=text,
            texttemplate="%{text}",
            textfont={"size": 16},
            colorscale="Blues",
            zmin=0,
            zmax=1,
            showscale=False,
            name="confusion matrix",
            hovertemplate="%{y} / %{x}: %{text}<extra></extra>",
        )
    )

    def show(value: float) -> str:
        return "NA" if not np.isfinite(value) else f"{value:.3f}"

    metrics = (
        f"accuracy {show(matrix.accuracy)} | sensitivity {show(matrix.sensitivity)} | "
        f"specificity {show(matrix.specificity)}<br>PPV {show(matrix.ppv)} | "
        f"NPV {show(matrix.npv)} | F1 {show(matrix.f1)}"
    )
    fig.add_annotation(
        name="metrics",
        text=metrics,
        xref="paper",
        yref="paper",
        x=0.5,
        y=-0.2,
        showarrow=False,
        font={"size": 12},
    )
    degenerate = [note for note in matrix.notes if note.startswith("degenerate")]
    if degenerate:
        fig.add_annotation(
            name="degenerate",
            text=f"<b>{degenerate[0]}</b>",
            xref="paper",
            yref="paper",
            x=0.5,
            y=-0.32,
            showarrow=False,
            font={"size": 12, "color": "#B00020"},
        )
    fig.update_yaxes(autorange="reversed", title="")
    fig.update_xaxes(title="", side="top")
    rule = (
        f"threshold {matrix.threshold:.3g} (positive if score >= threshold)"
        if np.isfinite(matrix.threshold)
        else "the stored calls"
    )
    default = f"Confusion matrix at {rule}"
    fig = _finish(fig, title=title or default, synthetic=synthetic, height=460)
    fig.update_layout(margin={"b": 140})
    return fig


def site_roc_figure(
    result: SiteRocResult | NotComputable, *, title: str | None = None, synthetic: bool = False
) -> go.Figure:
    """One-vs-rest ROC per site plus the micro-average curve; macro and weighted in a note."""
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    fig = go.Figure()
    fig.add_trace(_chance_line())
    for index, site in enumerate(result.sites):
        curve = result.curves[site]
        if isinstance(curve, NotComputable):
            continue
        fig.add_trace(
            go.Scatter(
                x=curve.fpr,
                y=curve.tpr,
                mode="lines",
                line={"width": 2, "color": _colour(index)},
                name=f"{site} (n={result.support[site]}): "
                + _auroc_label(result.per_site[site], curve.auroc),
            )
        )
    if isinstance(result.micro_curve, RocCurve):
        fig.add_trace(
            go.Scatter(
                x=result.micro_curve.fpr,
                y=result.micro_curve.tpr,
                mode="lines",
                line={"width": 2, "dash": "dot", "color": "#000000"},
                name=f"micro-average: AUROC {result.micro_auroc:.3f}",
            )
        )
    excluded = [site for site in result.sites if isinstance(result.per_site[site], NotComputable)]
    note = f"macro-average AUROC {result.macro_auroc:.3f}; weighted-average {result.weighted_auroc:.3f}"
    if excluded:
        note += f"<br>not computable: {', '.join(excluded)} (one class only)"
    fig.add_annotation(
        name="averages",
        text=note,
        xref="paper",
        yref="paper",
        x=0.98,
        y=0.45,
        xanchor="right",
        showarrow=False,
        align="right",
    )
    _square_axes(fig, "1 - specificity", "Sensitivity")
    fig.update_layout(legend={"x": 0.98, "y": 0.02, "xanchor": "right", "yanchor": "bottom"})
    return _finish(
        fig, title=title or "ROC by metastasis site (one-vs-rest)", synthetic=synthetic, height=560
    )


# --------------------------------------------------------------------------------------------
# Survival
# --------------------------------------------------------------------------------------------


def _step_band(curve: KaplanMeierCurve) -> tuple[np.ndarray, np.ndarray]:
    """Closed polygon of the step-shaped confidence band (upper forwards, lower backwards)."""
    time = np.r_[0.0, curve.time]
    lower = np.r_[1.0, np.where(np.isnan(curve.lower), curve.survival, curve.lower)]
    upper = np.r_[1.0, np.where(np.isnan(curve.upper), curve.survival, curve.upper)]
    step_x = np.repeat(time, 2)[1:]
    step_x = np.r_[step_x, time[-1]]
    upper_y = np.repeat(upper, 2)[:-1]
    upper_y = np.r_[upper_y, upper[-1]]
    lower_y = np.repeat(lower, 2)[:-1]
    lower_y = np.r_[lower_y, lower[-1]]
    return np.r_[step_x, step_x[::-1]], np.r_[upper_y, lower_y[::-1]]


def _rgba(colour: str, alpha: float) -> str:
    colour = colour.lstrip("#")
    red, green, blue = (int(colour[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({red}, {green}, {blue}, {alpha})"


def kaplan_meier_figure(
    result: KaplanMeierResult | NotComputable,
    *,
    title: str | None = None,
    show_ci: bool = True,
    show_censored: bool = True,
    show_at_risk: bool = True,
    highlight_group: str | None = None,
    colours: Mapping[str, str] | None = None,
    time_unit: str = "days",
    synthetic: bool = False,
    p_note: str = "",
) -> go.Figure:
    """Kaplan-Meier curves with CI bands, censoring ticks, the numbers-at-risk table under the
    plot and the log-rank p-value (with ``p_note`` under it, e.g. that it is uncorrected for a
    cut-point chosen on the same data).

    ``highlight_group`` draws that group in colour and the others muted (the clinician's view:
    "this patient is in the high-risk group"). Traces per group, in order: CI band
    (``"<group> 95% CI"``), curve (``"<group> (n=..)"``), censoring marks
    (``"<group> censored"``), then one numbers-at-risk text trace per group
    (``"<group> at risk"``).
    """
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    rows = 2 if show_at_risk else 1
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.78, 0.22] if show_at_risk else [1.0],
        vertical_spacing=0.1,
    )
    palette = _distinct_colours(result.groups, colours or {})
    computed = [g for g in result.groups if isinstance(result.curves[g], KaplanMeierCurve)]
    ci_label = f"{result.confidence_level:.0%} CI"
    for group in computed:
        curve = result.curves[group]
        assert isinstance(curve, KaplanMeierCurve)
        muted = highlight_group is not None and group != highlight_group
        # another group of a highlighted figure keeps its own colour, faded: never two greys
        colour = _rgba(palette[group], 0.45) if muted else palette[group]
        if show_ci:
            band_x, band_y = _step_band(curve)
            fig.add_trace(
                go.Scatter(
                    x=band_x,
                    y=band_y,
                    fill="toself",
                    mode="lines",
                    line={"width": 0},
                    fillcolor=_rgba(palette[group], 0.07 if muted else 0.18),
                    name=f"{group} {ci_label}",
                    legendgroup=group,
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=1,
                col=1,
            )
        median = curve.median.formatted()
        fig.add_trace(
            go.Scatter(
                x=np.r_[0.0, curve.time],
                y=np.r_[1.0, curve.survival],
                mode="lines",
                line_shape="hv",
                line={"color": colour, "width": 4 if group == highlight_group else 2},
                name=f"{group} (n={curve.n}, median {median})",
                legendgroup=group,
                hovertemplate=f"{group}<br>%{{x:g}} {time_unit}: S = %{{y:.3f}}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        if show_censored:
            censored = curve.n_censor > 0
            fig.add_trace(
                go.Scatter(
                    x=curve.time[censored],
                    y=curve.survival[censored],
                    mode="markers",
                    marker={"symbol": "line-ns-open", "size": 8, "color": colour},
                    name=f"{group} censored",
                    legendgroup=group,
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=1,
                col=1,
            )
    if show_at_risk:
        for group in result.groups:
            muted = highlight_group is not None and group != highlight_group
            fig.add_trace(
                go.Scatter(
                    x=result.at_risk_times,
                    y=[group] * len(result.at_risk_times),
                    mode="text",
                    text=[str(count) for count in result.at_risk[group]],
                    textfont={"color": palette[group], "size": 12},
                    opacity=0.6 if muted else 1.0,
                    name=f"{group} at risk",
                    showlegend=False,
                    hoverinfo="skip",
                    cliponaxis=False,
                ),
                row=2,
                col=1,
            )
        fig.update_yaxes(
            title="At risk",
            autorange="reversed",
            showgrid=False,
            categoryorder="array",
            categoryarray=list(result.groups),
            row=2,
            col=1,
        )
        fig.update_xaxes(title=f"Time ({time_unit})", tickvals=result.at_risk_times, row=2, col=1)
        fig.update_xaxes(tickvals=result.at_risk_times, row=1, col=1)
    else:
        fig.update_xaxes(title=f"Time ({time_unit})", row=1, col=1)
    # The axis covers every break of the numbers-at-risk table with a margin on both sides,
    # so the first and last counts are never cut off.
    last = max(
        [float(np.max(result.at_risk_times))]
        + [float(result.curves[g].time.max()) for g in computed if result.curves[g].time.size]
    )
    pad = 0.04 * last if last > 0 else 1.0
    fig.update_xaxes(range=[-pad, last + pad])
    fig.update_yaxes(title="Survival probability", range=[0, 1.03], row=1, col=1)
    logrank = result.logrank
    p_label = (
        f"Log-rank {p_text(logrank.p_value)}"
        if not isinstance(logrank, NotComputable)
        else f"Log-rank: not computable ({logrank.reason})"
    )
    if p_note and not isinstance(logrank, NotComputable):
        p_label += f"<br><span style='font-size:11px;color:#B00020'>{p_note}</span>"
    fig.add_annotation(
        name="p-value",
        text=p_label,
        xref="x domain",
        yref="y domain",
        x=0.98,
        y=0.98,
        xanchor="right",
        yanchor="top",
        showarrow=False,
        font={"size": 13},
    )
    if highlight_group is not None and highlight_group not in computed:
        fig.add_annotation(
            name="highlight-missing",
            text=f"Group '{highlight_group}' has no curve here",
            xref="x domain",
            yref="y domain",
            x=0.98,
            y=0.88,
            xanchor="right",
            showarrow=False,
            font={"color": "#B00020"},
        )
    default = f"Overall survival by {result.group_variable}"
    n_groups = len(result.groups)
    height = (560 + 22 * n_groups) if show_at_risk else 480
    fig = _finish(fig, title=title or default, synthetic=synthetic, height=height)
    # The legend sits under the plot, off the curves (survminer puts it outside the panel).
    fig.update_layout(
        legend={
            "orientation": "h",
            "x": 0.0,
            "xanchor": "left",
            "y": 0.0,
            "yanchor": "bottom",
            "yref": "container",
            "bgcolor": "rgba(255,255,255,0)",
        },
        margin={"b": 60 + 24 * math.ceil(n_groups / 2)},
    )
    if show_at_risk:
        rows_share = min(0.4, 0.12 + 0.035 * n_groups)
        fig.update_layout(
            yaxis={"domain": [rows_share + 0.1, 1.0]}, yaxis2={"domain": [0.0, rows_share]}
        )
    return fig


def risk_group_figure(
    result: KaplanMeierResult | NotComputable,
    *,
    highlight_group: str | None = None,
    title: str | None = None,
    synthetic: bool = False,
    p_note: str = "",
) -> go.Figure:
    """Kaplan-Meier curves of the MRS x CA19-9 risk groups (low green, mid orange, high red),
    optionally highlighting one patient's group."""
    return kaplan_meier_figure(
        result,
        highlight_group=highlight_group,
        p_note=p_note,
        colours=_GROUP_COLOURS,
        title=title or "Overall survival by risk group (MRS x CA19-9)",
        synthetic=synthetic,
    )


def _row_labels(fig: go.Figure, rows: list[str], texts: list[str], *, names: list[str]) -> None:
    """Text beside each row of a forest plot, right of the plot area (added in one update:
    one ``add_annotation`` per row is slow with many rows)."""
    fig.update_layout(
        annotations=[
            *fig.layout.annotations,
            *(
                {
                    "name": name,
                    "text": text,
                    "xref": "paper",
                    "x": 1.01,
                    "yref": "y",
                    "y": row,
                    "xanchor": "left",
                    "showarrow": False,
                    "font": {
                        "size": 11,
                        "color": "#B00020" if name == "not-computable" else "#000000",
                    },
                }
                for row, text, name in zip(rows, texts, names, strict=True)
            ),
        ]
    )


def _describe_term(term: Any) -> str:
    if term.level is None:
        return term.variable
    return f"{term.variable}: {term.level} vs {term.reference}"


def cox_forest_figure(
    result: CoxResult | CoxTable | NotComputable,
    *,
    title: str | None = None,
    synthetic: bool = False,
) -> go.Figure:
    """Forest plot of hazard ratios with 95% CIs (log scale), HR (CI) and p beside each row.

    A :class:`CoxTable` (univariable models) draws every model's terms; models that were not
    computable are listed in a note.
    """
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    if isinstance(result, CoxTable):
        models = [model for model in result.models.values() if isinstance(model, CoxResult)]
        skipped = {
            name: model.reason
            for name, model in result.models.items()
            if isinstance(model, NotComputable)
        }
        if not models:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
            return not_computable_figure(
                NotComputable("Univariable Cox regression", reasons or "no models"),
                title=title,
                synthetic=synthetic,
            )
        terms = [term for model in models for term in model.terms]
        default = "Univariable Cox regression: hazard ratios"
    else:
        terms = list(result.terms)
        skipped = {}
        default = "Cox regression: hazard ratios" + (
            f" (adjusted for {', '.join(result.adjusted_for)})" if result.adjusted_for else ""
        )
    labels = [_describe_term(term) for term in terms]
    hr = np.array([term.hazard_ratio for term in terms])
    lower = np.array([term.hr_lower for term in terms])
    upper = np.array([term.hr_upper for term in terms])
    fig = go.Figure(
        go.Scatter(
            x=hr,
            y=labels,
            mode="markers",
            marker={"symbol": "square", "size": 10, "color": "#1F77B4"},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": upper - hr,
                "arrayminus": hr - lower,
                "thickness": 2,
            },
            name="hazard ratio (95% CI)",
            hovertemplate="%{y}: HR %{x:.2f}<extra></extra>",
        )
    )
    fig.add_vline(x=1.0, line={"dash": "dash", "color": "#999999"})
    _row_labels(
        fig,
        labels,
        [
            f"{term.hazard_ratio:.2f} ({term.hr_lower:.2f}-{term.hr_upper:.2f}), "
            f"{p_text(term.p_value)}"
            for term in terms
        ],
        names=["hr-text"] * len(terms),
    )
    if skipped:
        fig.add_annotation(
            name="not-computable",
            text="Not computable: " + "; ".join(f"{n} ({r})" for n, r in skipped.items()),
            xref="paper",
            yref="paper",
            x=0,
            y=-0.15,
            showarrow=False,
            xanchor="left",
            font={"size": 11, "color": "#B00020"},
        )
    finite = np.isfinite(lower) & np.isfinite(upper) & (lower > 0)
    low = float(min(lower[finite].min(), 1.0)) if finite.any() else 0.5
    high = float(max(upper[finite].max(), 1.0)) if finite.any() else 2.0
    ticks, texts = _log_ticks(low / 1.15, high * 1.15)
    fig.update_xaxes(
        type="log",
        title="Hazard ratio (log scale)",
        range=[math.log10(low / 1.15), math.log10(high * 1.15)],
        tickvals=ticks,
        ticktext=texts,
    )
    fig.update_yaxes(autorange="reversed")
    fig = _finish(
        fig, title=title or default, synthetic=synthetic, height=max(320, 60 + 34 * len(terms))
    )
    fig.update_layout(margin={"r": 230}, showlegend=False)
    return fig


def cutpoint_figure(
    result: CutpointResult | NotComputable, *, title: str | None = None, synthetic: bool = False
) -> go.Figure:
    """Standardised log-rank statistic at every candidate cut (survminer's maxstat plot)."""
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    fig = go.Figure(
        go.Scatter(
            x=result.candidate_cuts,
            y=result.candidate_statistics,
            mode="markers+lines",
            marker={"size": 4},
            name="standardised log-rank statistic",
        )
    )
    fig.add_vline(x=result.cutpoint, line={"dash": "dash"})
    fig.add_annotation(
        name="cutpoint",
        text=f"cut-point {result.cutpoint:.4g} (statistic {result.statistic:.2f})",
        x=result.cutpoint,
        y=result.statistic,
        showarrow=True,
        arrowhead=2,
    )
    fig.update_xaxes(title=result.variable)
    fig.update_yaxes(title="Standardised log-rank statistic")
    return _finish(
        fig, title=title or "Maximally selected rank statistics", synthetic=synthetic, height=420
    )


# --------------------------------------------------------------------------------------------
# Development, subgroups, calibration
# --------------------------------------------------------------------------------------------


def development_figure(
    result: DevelopmentResult | NotComputable,
    *,
    title: str | None = None,
    synthetic: bool = False,
) -> go.Figure:
    """MRS by time to metastasis: box and points per group, Kruskal-Wallis p at the top and
    pairwise Mann-Whitney p-values (Holm-adjusted in brackets) over brackets."""
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    fig = go.Figure()
    for index, group in enumerate(result.groups):
        values = result.group_values[group]
        fig.add_trace(
            go.Box(
                y=values,
                x=[group] * values.size,
                name=f"{group} (n={values.size})",
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                marker={"color": _colour(index), "size": 5, "opacity": 0.6},
                line={"color": _colour(index)},
            )
        )
    top = max((float(v.max()) for v in result.group_values.values() if v.size), default=1.0)
    step = 0.08
    position = {group: index for index, group in enumerate(result.groups)}
    level = 0
    for comparison in result.pairwise:
        if not isinstance(comparison, PairwiseComparison):
            continue
        level += 1
        height = top + step * level
        x0, x1 = comparison.group_1, comparison.group_2
        fig.add_shape(
            type="line",
            x0=x0,
            x1=x1,
            y0=height,
            y1=height,
            xref="x",
            yref="y",
            line={"color": "#555555", "width": 1},
        )
        middle = (position[x0] + position[x1]) / 2.0
        fig.add_annotation(
            name="p-value",
            text=f"{p_text(comparison.p_value)} (Holm {p_text(comparison.p_value_holm)[2:]})",
            x=middle,
            y=height,
            xref="x",
            yref="y",
            yanchor="bottom",
            showarrow=False,
            font={"size": 11},
        )
    kruskal = result.kruskal_wallis
    fig.add_annotation(
        name="p-value",
        text=(
            f"Kruskal-Wallis {p_text(kruskal.p_value)}"
            if not isinstance(kruskal, NotComputable)
            else f"Kruskal-Wallis: not computable ({kruskal.reason})"
        ),
        xref="paper",
        yref="paper",
        x=0.0,
        y=1.0,
        xanchor="left",
        yanchor="bottom",
        showarrow=False,
    )
    fig.update_xaxes(
        title="Time from diagnosis to metastasis",
        categoryorder="array",
        categoryarray=list(result.groups),
    )
    fig.update_yaxes(title="Metastasis Risk Score", range=[0, top + step * (level + 1.5)])
    fig.update_layout(showlegend=False)
    return _finish(
        fig, title=title or "MRS by time to metastasis development", synthetic=synthetic, height=520
    )


def subgroup_forest_figure(
    result: SubgroupAurocTable | NotComputable,
    *,
    title: str | None = None,
    synthetic: bool = False,
) -> go.Figure:
    """Forest plot of the AUROC (DeLong 95% CI) overall and in each subgroup level; rows that
    are not computable are labelled with the reason."""
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    rows: list[tuple[str, Any, int]] = [("Overall", result.overall, -1)]
    rows += [
        (f"{row.variable}: {row.level} (n={row.n})", row.estimate, index)
        for index, row in enumerate(result.rows)
    ]
    labels = [label for label, _, _ in rows]
    estimates = [estimate for _, estimate, _ in rows]
    computed = [isinstance(estimate, AurocEstimate) for estimate in estimates]
    auc = np.array([e.auroc if ok else np.nan for e, ok in zip(estimates, computed, strict=True)])
    lower = np.array(
        [e.ci_lower if ok else np.nan for e, ok in zip(estimates, computed, strict=True)]
    )
    upper = np.array(
        [e.ci_upper if ok else np.nan for e, ok in zip(estimates, computed, strict=True)]
    )
    colours = ["#000000" if label == "Overall" else "#1F77B4" for label in labels]
    fig = go.Figure(
        go.Scatter(
            x=auc,
            y=labels,
            mode="markers",
            marker={"symbol": "square", "size": 10, "color": colours},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": upper - auc,
                "arrayminus": auc - lower,
                "thickness": 2,
            },
            name="AUROC (95% CI)",
            hovertemplate="%{y}: AUROC %{x:.3f}<extra></extra>",
        )
    )
    fig.add_vline(x=0.5, line={"dash": "dot", "color": "#999999"})
    if isinstance(result.overall, AurocEstimate):
        fig.add_vline(x=result.overall.auroc, line={"dash": "dash", "color": "#555555"})
    _row_labels(
        fig,
        labels,
        [
            estimate.formatted() if ok else f"not computable: {estimate.reason}"
            for estimate, ok in zip(estimates, computed, strict=True)
        ],
        names=["auroc-text" if ok else "not-computable" for ok in computed],
    )
    fig.update_xaxes(title="AUROC", range=[0.0, 1.0])
    fig.update_yaxes(autorange="reversed")
    fig = _finish(
        fig,
        title=title or "AUROC by subgroup",
        synthetic=synthetic,
        height=max(320, 60 + 28 * len(labels)),
    )
    fig.update_layout(margin={"r": 260}, showlegend=False)
    return fig


def decision_curve_figure(
    result: DecisionCurveResult | NotComputable,
    *,
    title: str | None = None,
    synthetic: bool = False,
) -> go.Figure:
    """Net benefit against threshold probability per strategy (Vickers & Elkin 2006), with
    treat all (grey) and treat none (black); the y axis spans from a little below zero to the
    prevalence, where treat all starts, so no curve's useful range is cut off."""
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    fig = go.Figure()
    fixed = {"treat all": "#7F7F7F", "treat none": "#000000"}
    for index, (name, values) in enumerate(result.net_benefit.items()):
        colour = fixed.get(name, _colour(index))
        fig.add_trace(
            go.Scatter(
                x=result.thresholds,
                y=values,
                mode="lines",
                name=f"{name} (n = {result.n[name]})",
                line={"color": colour, "width": 1.5 if name in fixed else 2.5},
                hovertemplate=f"{name}<br>threshold %{{x:.2f}}<br>net benefit %{{y:.3f}}"
                "<extra></extra>",
            )
        )
    top = max(result.prevalence, 0.01)
    fig.update_xaxes(title="Threshold probability", range=[0, float(result.thresholds.max())])
    fig.update_yaxes(title="Net benefit", range=[-0.05 * top - 0.01, top * 1.1])
    fig = _finish(
        fig,
        title=title or f"Decision curves: {result.outcome}",
        synthetic=synthetic,
        height=520,
    )
    fig.update_layout(legend={"x": 1.02, "y": 1.0, "xanchor": "left"}, margin={"r": 220})
    return fig


def calibration_figure(
    result: CalibrationResult | NotComputable,
    *,
    title: str | None = None,
    synthetic: bool = False,
) -> go.Figure:
    """Observed fraction (Wilson 95% CI) against mean predicted probability per quantile bin,
    the perfect-calibration diagonal and the Brier score."""
    if isinstance(result, NotComputable):
        return not_computable_figure(result, title=title, synthetic=synthetic)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="perfect calibration",
            line={"dash": "dash", "color": "#999999", "width": 1},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=result.mean_predicted,
            y=result.observed_fraction,
            mode="lines+markers",
            marker={"size": 8, "color": "#1F77B4"},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": result.observed_upper - result.observed_fraction,
                "arrayminus": result.observed_fraction - result.observed_lower,
            },
            customdata=result.counts,
            name=f"observed ({result.confidence_level:.0%} CI), {len(result.counts)} bins",
            hovertemplate="predicted %{x:.3f}<br>observed %{y:.3f}<br>n %{customdata}"
            "<extra></extra>",
        )
    )
    fig.add_annotation(
        name="brier",
        text=f"Brier score {result.brier_score:.3f} (n = {result.n})",
        xref="paper",
        yref="paper",
        x=0.02,
        y=0.98,
        xanchor="left",
        yanchor="top",
        showarrow=False,
    )
    _square_axes(fig, "Mean predicted probability (MRS)", "Observed fraction with metastasis")
    fig.update_layout(legend={"x": 0.98, "y": 0.02, "xanchor": "right", "yanchor": "bottom"})
    return _finish(fig, title=title or "Calibration", synthetic=synthetic, height=560)


def figures_for_analysis(result: Any, *, synthetic: bool | None = None) -> dict[str, go.Figure]:
    """Every figure of an :class:`~analytics.stats.AnalysisResult`, keyed by section name.

    ``synthetic`` defaults to the analysis options' flag.
    """
    flag = result.options.synthetic if synthetic is None else synthetic
    figures: dict[str, go.Figure] = {}
    for name, item in result.classification.items():
        figures[f"roc/{name}"] = roc_figure(
            item, fold_summary=result.folds if name == "patient_mrs" else None, synthetic=flag
        )
        figures[f"precision_recall/{name}"] = precision_recall_figure(item, synthetic=flag)
        figures[f"confusion_matrix/{name}"] = confusion_matrix_figure(item, synthetic=flag)
    figures["sites"] = site_roc_figure(result.sites, synthetic=flag)
    figures["subgroups"] = subgroup_forest_figure(result.subgroups, synthetic=flag)
    figures["calibration"] = calibration_figure(result.calibration, synthetic=flag)
    if result.decision_curves is not None:
        figures["decision curves"] = decision_curve_figure(result.decision_curves, synthetic=flag)
    figures["mrs_cutpoint"] = cutpoint_figure(result.mrs_cutpoint, synthetic=flag)
    for name, item in result.kaplan_meier.items():
        builder = risk_group_figure if name == "risk_group" else kaplan_meier_figure
        figures[f"kaplan_meier/{name}"] = builder(item, synthetic=flag)
    for stratum, item in result.mrs_within_resectability.items():
        figures[f"mrs_within_resectability/{stratum}"] = kaplan_meier_figure(
            item, title=f"Overall survival by MRS group: {stratum}", synthetic=flag
        )
    figures["cox_univariable"] = cox_forest_figure(result.cox_univariable, synthetic=flag)
    figures["cox_multivariable"] = cox_forest_figure(result.cox_multivariable, synthetic=flag)
    figures["cox_risk_groups"] = cox_forest_figure(result.cox_risk_groups, synthetic=flag)
    figures["development"] = development_figure(result.development, synthetic=flag)
    if isinstance(result.development, DevelopmentResult):
        for name, item in result.development.early_vs_late.items():
            figures[f"development/roc {name}"] = roc_figure(item, synthetic=flag)
            figures[f"development/confusion {name}"] = confusion_matrix_figure(item, synthetic=flag)
    return figures
