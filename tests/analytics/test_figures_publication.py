"""Figures at survminer/ggforest grade (issue 11 item 10): numbers at risk never clipped,
legends off the curves, a colour per group, readable log axes, a degenerate confusion matrix
said to be one and its rows named after the classes compared."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analytics import figures
from analytics.stats import (
    adjusted_cox,
    evaluate_binary,
    kaplan_meier_by_group,
    metastasis_development_analysis,
    synthetic_cohort,
)


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(300, seed=21)


def test_kaplan_meier_at_risk_table_legend_and_colours(cohort):
    groups = np.array(["A", "B", "C", "D", "E"])[np.arange(len(cohort)) % 5]
    result = kaplan_meier_by_group(
        cohort["overall_survival_days"], cohort["death"], groups, group_variable="centre"
    )
    figure = figures.kaplan_meier_figure(result)
    curves = [trace for trace in figure.data if "(n=" in trace.name]
    assert len({trace.line.color for trace in curves}) == 5
    at_risk = [trace for trace in figure.data if trace.name.endswith(" at risk")]
    assert all(trace.cliponaxis is False for trace in at_risk)
    low, high = figure.layout.xaxis.range
    assert low < 0 and high > max(result.at_risk_times)  # first and last counts inside
    steps = np.diff(result.at_risk_times)
    assert np.allclose(steps, steps[0])  # regular breaks
    legend = figure.layout.legend
    assert legend.orientation == "h" and legend.yref == "container" and legend.y == 0.0


def test_forest_plot_log_axis_reads_as_numbers(cohort):
    frame = cohort.assign(
        mrs_group=np.where(cohort["metastasis_risk_score"] > 0.5, "high", "low"),
    )
    model = adjusted_cox(
        frame,
        duration_col="overall_survival_days",
        event_col="death",
        variables=["mrs_group", "age_at_diagnosis_years"],
        reference_levels={"mrs_group": "high"},
        adjust_for=(),
    )
    axis = figures.cox_forest_figure(model).layout.xaxis
    hazard_ratio = model.term("mrs_group[low]").hazard_ratio
    assert hazard_ratio < 0.5  # the low group against the high: a ratio well below 1
    assert axis.type == "log" and list(axis.ticktext) == [f"{v:.4g}" for v in axis.tickvals]
    assert {"0.3", "0.5", "1"} <= set(axis.ticktext) and "3" not in axis.ticktext
    assert len(axis.tickvals) >= 4


def test_degenerate_early_vs_late_confusion_matrix_is_named_and_flagged():
    # Every early metastasis has a higher MRS than... nothing: Youden falls on the lowest score
    days = pd.Series([30, 45, 60, 200, 250, 300, 400, 500], dtype=float)
    mrs = pd.Series([0.0005, 0.3, 0.2, 0.9, 0.8, 0.7, 0.6, 0.95])
    result = metastasis_development_analysis(days, mrs)
    early = result.early_vs_late["< 3 vs >= 3 months"]
    assert early.classes == (">= 3 months", "< 3 months")
    figure = figures.confusion_matrix_figure(early)
    heatmap = figure.data[0]
    assert list(heatmap.y) == ["Actual >= 3 months", "Actual < 3 months"]
    assert list(heatmap.x) == ["Predicted >= 3 months", "Predicted < 3 months"]
    assert "optimistic" in early.threshold_source
    degenerate = evaluate_binary([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], threshold=0.05)
    assert any(note.startswith("degenerate") for note in degenerate.at_threshold.notes)
    drawn = figures.confusion_matrix_figure(degenerate)
    assert "degenerate" in [a.name for a in drawn.layout.annotations]
    assert list(drawn.data[0].y) == ["Actual no metastasis", "Actual metastasis"]


def test_the_title_sits_under_the_synthetic_badge(cohort):
    groups = np.where(cohort["metastasis_risk_score"] > 0.5, "high", "low")
    result = kaplan_meier_by_group(
        cohort["overall_survival_days"], cohort["death"], groups, group_variable="mrs_group"
    )
    title = "A long title<br><sup>Operating point: locked at training (pmpd-1): ...</sup>"
    figure = figures.kaplan_meier_figure(result, title=title, synthetic=True)
    badge = next(a for a in figure.layout.annotations if a.name == "synthetic-data")
    height = figure.layout.height
    badge_bottom_px = figure.layout.margin.t - badge.yshift  # from the top of the figure
    title_top_px = (1.0 - figure.layout.title.y) * height
    assert figure.layout.title.yref == "container" and figure.layout.title.yanchor == "top"
    assert title_top_px - 9 >= badge_bottom_px  # the top line of a 2-line title, ~9 px up
    plain = figures.kaplan_meier_figure(result, title="A title")
    assert (1.0 - plain.layout.title.y) * plain.layout.height < badge_bottom_px
