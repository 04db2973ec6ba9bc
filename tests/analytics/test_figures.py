"""Figure builders: traces, the synthetic-data caption and the not-computable annotation."""

import numpy as np
import plotly.graph_objects as go
import pytest

from analytics import figures
from analytics.stats import (
    NotComputable,
    adjusted_cox,
    calibration_curve,
    cox_univariable,
    evaluate_binary,
    fold_roc_summary,
    kaplan_meier_by_group,
    maxstat_cutpoint,
    metastasis_development_analysis,
    run_full_analysis,
    site_roc,
    subgroup_auroc,
    synthetic_cohort,
)

NOT_COMPUTABLE = NotComputable(
    "AUROC", "only one class present (3 positive, 0 negative)", ("negative cases",)
)


def annotation_names(figure):
    return [annotation.name for annotation in figure.layout.annotations]


def trace_names(figure):
    return [trace.name for trace in figure.data]


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(200, seed=8)


@pytest.fixture(scope="module")
def binary(cohort):
    return evaluate_binary(cohort["metastasis_label"], cohort["metastasis_risk_score"])


@pytest.fixture(scope="module")
def survival_by_risk(cohort):
    groups = np.where(cohort["metastasis_risk_score"] > 0.5, "high", "low")
    return kaplan_meier_by_group(
        cohort["overall_survival_days"],
        cohort["death"],
        groups,
        group_variable="risk_group",
        group_order=["low", "mid", "high"],
    )


def test_roc_figure(binary, cohort):
    figure = figures.roc_figure(binary)
    assert isinstance(figure, go.Figure)
    names = trace_names(figure)
    assert len(names) == 3
    assert names[0] == "chance"
    assert names[1] == f"AUROC {binary.auroc.formatted()}"
    assert names[2].startswith("Youden threshold")
    folds = fold_roc_summary(
        cohort["metastasis_label"], {f"fold {k}": cohort[f"mrs_fold_{k}"] for k in range(1, 6)}
    )
    with_folds = figures.roc_figure(binary, fold_summary=folds)
    names = trace_names(with_folds)
    assert len(names) == 1 + 5 + 3 + 2
    assert any(name.startswith("mean of 5 folds: AUROC") for name in names)
    assert any("band across folds" in name for name in names)
    folds_only = figures.roc_figure(NOT_COMPUTABLE, fold_summary=folds, show_fold_curves=False)
    assert len(folds_only.data) == 4


def test_precision_recall_and_confusion_figures(binary):
    pr = figures.precision_recall_figure(binary)
    assert trace_names(pr) == [
        f"prevalence {binary.precision_recall.prevalence:.3f}",
        f"AUPRC {binary.average_precision:.3f}",
    ]
    confusion = figures.confusion_matrix_figure(binary)
    assert len(confusion.data) == 1 and isinstance(confusion.data[0], go.Heatmap)
    counts = binary.at_threshold.matrix().to_numpy()
    assert str(counts[1, 1]) in confusion.data[0].text[1][1]
    assert "metrics" in annotation_names(confusion)


def test_site_figure(cohort):
    sites = ("liver", "lung", "peritoneum")
    result = site_roc(
        {s: cohort[f"site_{s}"] for s in sites}, {s: cohort[f"prob_{s}"] for s in sites}
    )
    figure = figures.site_roc_figure(result)
    names = trace_names(figure)
    assert names[0] == "chance" and names[-1].startswith("micro-average")
    assert len(names) == 2 + sum(1 for s in sites if result.curves[s].computable)
    assert "averages" in annotation_names(figure)


def test_kaplan_meier_figure(survival_by_risk):
    figure = figures.kaplan_meier_figure(survival_by_risk)
    names = trace_names(figure)
    # low and high have curves (band, curve, censoring); "mid" is empty: at-risk row only.
    assert len(names) == 2 * 3 + 3
    assert names[0] == "low 95% CI" and names[1].startswith("low (n=")
    assert names[-3:] == ["low at risk", "mid at risk", "high at risk"]
    assert list(figure.data[-3].text) == [str(v) for v in survival_by_risk.at_risk["low"]]
    p_annotation = [a for a in figure.layout.annotations if a.name == "p-value"]
    assert p_annotation and p_annotation[0].text.startswith("Log-rank p")
    bare = figures.kaplan_meier_figure(
        survival_by_risk, show_ci=False, show_at_risk=False, show_censored=False
    )
    assert len(bare.data) == 2


def test_risk_group_figure_highlights_one_group(survival_by_risk):
    figure = figures.risk_group_figure(survival_by_risk, highlight_group="high")
    curves = {trace.name.split(" ")[0]: trace for trace in figure.data if "(n=" in trace.name}
    assert curves["high"].line.width == 4
    assert curves["high"].line.color == "#D62728"
    # issue 11 item 10: the other groups keep their own colours, faded (not two greys)
    assert curves["low"].line.color == "rgba(44, 160, 44, 0.45)"
    missing = figures.risk_group_figure(survival_by_risk, highlight_group="unknown")
    assert "highlight-missing" in annotation_names(missing)


def test_cox_forest_figures(cohort):
    frame = cohort.assign(mrs_group=np.where(cohort["metastasis_risk_score"] > 0.5, "high", "low"))
    model = adjusted_cox(
        frame,
        duration_col="overall_survival_days",
        event_col="death",
        variables=["mrs_group"],
        reference_levels={"mrs_group": "low"},
    )
    figure = figures.cox_forest_figure(model)
    assert trace_names(figure) == ["hazard ratio (95% CI)"]
    assert len(figure.data[0].y) == len(model.terms)
    assert figure.data[0].y[0] == "mrs_group: high vs low"
    assert annotation_names(figure).count("hr-text") == len(model.terms)
    assert figure.layout.xaxis.type == "log"
    table = cox_univariable(
        frame.assign(constant=1.0),
        duration_col="overall_survival_days",
        event_col="death",
        variables=["mrs_group", "constant"],
        reference_levels={"mrs_group": "low"},
    )
    univariable = figures.cox_forest_figure(table)
    assert len(univariable.data[0].y) == 1
    assert "not-computable" in annotation_names(univariable)


def test_development_subgroup_calibration_and_cutpoint_figures(cohort):
    developed = cohort[cohort["developed_metastasis"] == 1]
    development = metastasis_development_analysis(
        developed["days_to_metastasis"], developed["metastasis_risk_score"]
    )
    figure = figures.development_figure(development)
    assert len(figure.data) == 3 and all(isinstance(t, go.Box) for t in figure.data)
    assert annotation_names(figure).count("p-value") == 1 + len(development.pairwise)

    table = subgroup_auroc(
        cohort["metastasis_label"],
        cohort["metastasis_risk_score"],
        {"sex": cohort["sex"], "empty": np.where(cohort["metastasis_label"] == 1, "x", None)},
    )
    forest = figures.subgroup_forest_figure(table)
    assert len(forest.data) == 1 and list(forest.data[0].y)[0] == "Overall"
    assert len(forest.data[0].y) == 1 + len(table.rows)
    assert "not-computable" in annotation_names(forest)

    calibration = figures.calibration_figure(
        calibration_curve(cohort["metastasis_label"], cohort["metastasis_risk_score"])
    )
    assert trace_names(calibration)[0] == "perfect calibration"
    assert trace_names(calibration)[1].startswith("observed (95% CI)")
    assert "brier" in annotation_names(calibration)

    cut = maxstat_cutpoint(
        cohort["overall_survival_days"], cohort["death"], cohort["metastasis_risk_score"]
    )
    assert len(figures.cutpoint_figure(cut).data) == 1


BUILDERS = [
    figures.roc_figure,
    figures.precision_recall_figure,
    figures.confusion_matrix_figure,
    figures.site_roc_figure,
    figures.kaplan_meier_figure,
    figures.risk_group_figure,
    figures.cox_forest_figure,
    figures.cutpoint_figure,
    figures.development_figure,
    figures.subgroup_forest_figure,
    figures.calibration_figure,
]


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda builder: builder.__name__)
def test_not_computable_gives_an_explaining_figure(builder):
    figure = builder(NOT_COMPUTABLE, synthetic=True)
    assert isinstance(figure, go.Figure)
    assert len(figure.data) == 0
    texts = {a.name: a.text for a in figure.layout.annotations}
    assert "only one class present" in texts["not-computable"]
    assert "Not computable: AUROC" in texts["not-computable"]
    assert figures.SYNTHETIC_CAPTION in texts["synthetic-data"]


def test_synthetic_caption_only_when_asked(binary, survival_by_risk):
    for figure in (
        figures.roc_figure(binary, synthetic=True),
        figures.kaplan_meier_figure(survival_by_risk, synthetic=True),
    ):
        assert "synthetic-data" in annotation_names(figure)
    for figure in (figures.roc_figure(binary), figures.kaplan_meier_figure(survival_by_risk)):
        assert "synthetic-data" not in annotation_names(figure)


@pytest.mark.slow
def test_figures_for_analysis_marks_every_figure_synthetic(cohort):
    from analytics.stats import AnalysisOptions

    analysis = run_full_analysis(cohort.head(150), options=AnalysisOptions(synthetic=True))
    built = figures.figures_for_analysis(analysis)
    assert {
        "roc/patient_mrs",
        "kaplan_meier/risk_group",
        "cox_multivariable",
        "development",
    } <= set(built)
    for name, figure in built.items():
        assert "synthetic-data" in annotation_names(figure), name
        assert figure.to_json()
