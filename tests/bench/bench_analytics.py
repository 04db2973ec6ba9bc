"""Benchmark of the analysis set: ``run_full_analysis`` beside the bare library calls it wraps.

Run with ``.venv/bin/python tests/bench/bench_analytics.py [--sizes 661 10000] [--repeats 3]``.
Prints timings; asserts nothing (goals: under 1 s for 661 patients, under 10 s for 10,000,
and the wrapper within 2x of the bare calls).

The "bare" column does the same statistical work with the plain lifelines / scikit-learn /
scipy calls and no result objects: the same Cox models (lifelines ``CoxPHFitter`` on the same
design matrices), Kaplan-Meier fits and log-rank tests per group, ROC/PR/AUROC/confusion
calls per score, per site, per subgroup, the calibration curve, the development tests. The
DeLong variances, the R-style median CIs and the maxstat cut-point have no bare equivalent in
those libraries and appear only in the first column.

The cohort carries two study-defined variables (ECOG, a category; weight loss, a number), and
the analyses a statistician runs on them without a model version (overall Kaplan-Meier, KM and
log-rank by ECOG, the maxstat cut of weight loss with the KM of its groups, a Cox model of both
with age) are timed with the full analysis, beside the same lifelines calls.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import CoxPHFitter, KaplanMeierFitter  # noqa: E402
from lifelines.statistics import multivariate_logrank_test  # noqa: E402
from lifelines.utils import concordance_index  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402
from sklearn import metrics  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402

from analytics.analyses import (  # noqa: E402
    cox_analysis,
    cutpoint_for,
    kaplan_meier_for,
    prepare_frame,
)
from analytics.stats import (  # noqa: E402
    AnalysisOptions,
    delong_auroc,
    evaluate_binary,
    kaplan_meier_by_group,
    maxstat_cutpoint,
    run_full_analysis,
    synthetic_cohort,
)
from analytics.stats.survival import cox_regression  # noqa: E402

STUDY_COX = ("ecog", "weight_loss_pct", "age_at_diagnosis_years")


def with_study_variables(frame: pd.DataFrame, seed: int = 11) -> pd.DataFrame:
    """The synthetic cohort with ECOG (0-2) and weight loss (%) as study variables would load."""
    rng = np.random.default_rng(seed)
    return frame.assign(
        ecog=rng.integers(0, 3, len(frame)).astype(str),
        weight_loss_pct=np.round(rng.uniform(0, 25, len(frame)), 1),
    )


def study_analyses(frame: pd.DataFrame, options: AnalysisOptions) -> None:
    """What the dashboards compute for the study variables (no model version needed)."""
    prepared = prepare_frame(frame, options)
    kaplan_meier_for(prepared, "overall", options)
    kaplan_meier_for(prepared, "ecog", options)
    cutpoint_for(prepared, "weight_loss_pct", options)
    cox_analysis(prepared, variables=STUDY_COX, univariable=(), options=options)


def bare_study(frame: pd.DataFrame) -> None:
    """The lifelines calls of :func:`study_analyses` (the cut itself has no bare equivalent:
    its groups are taken from the median here)."""
    time_ = frame["overall_survival_days"].to_numpy()
    event = frame["death"].to_numpy()
    KaplanMeierFitter().fit(time_, event)
    for values in (frame["ecog"], frame["weight_loss_pct"] > frame["weight_loss_pct"].median()):
        for level in pd.unique(values):
            mask = (values == level).to_numpy()
            KaplanMeierFitter().fit(time_[mask], event[mask])
        multivariate_logrank_test(time_, values, event)
    design = pd.concat(
        [
            frame[["overall_survival_days", "death", "weight_loss_pct", "age_at_diagnosis_years"]],
            pd.get_dummies(frame["ecog"], prefix="ecog", drop_first=True, dtype=float),
        ],
        axis=1,
    ).dropna()
    fitter = CoxPHFitter().fit(design, duration_col="overall_survival_days", event_col="death")
    _ = fitter.summary, fitter.concordance_index_


def best_of(function: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def bare_classification(frame: pd.DataFrame) -> None:
    labels = frame["metastasis_label"].to_numpy()
    for column in ("metastasis_risk_score", "predicted_positive_fraction"):
        scores = frame[column].to_numpy()
        metrics.roc_auc_score(labels, scores)
        fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
        metrics.precision_recall_curve(labels, scores)
        metrics.average_precision_score(labels, scores)
        best = thresholds[np.argmax(tpr - fpr)]
        predicted = (scores >= best).astype(int)
        metrics.confusion_matrix(labels, predicted)
        metrics.f1_score(labels, predicted)
    for k in range(1, 6):
        metrics.roc_auc_score(labels, frame[f"mrs_fold_{k}"])
        metrics.roc_curve(labels, frame[f"mrs_fold_{k}"], drop_intermediate=False)
    sites = ("liver", "lung", "peritoneum")
    truth = frame[[f"site_{s}" for s in sites]].to_numpy()
    probabilities = frame[[f"prob_{s}" for s in sites]].to_numpy()
    for average in ("micro", "macro", "weighted"):
        metrics.roc_auc_score(truth, probabilities, average=average)
    for k in range(3):
        metrics.roc_curve(truth[:, k], probabilities[:, k])
    metrics.roc_curve(truth.ravel(), probabilities.ravel())
    scores = frame["metastasis_risk_score"].to_numpy()
    size = pd.cut(frame["tumour_size_mm"], [-np.inf, 20, 40, np.inf])
    age = frame["age_at_diagnosis_years"] >= 65
    for column in (size, frame["tumour_location"], age, frame["sex"], frame["ct_manufacturer"]):
        for level in pd.unique(column):
            mask = (column == level).to_numpy()
            if len(np.unique(labels[mask])) == 2:
                metrics.roc_auc_score(labels[mask], scores[mask])
    calibration_curve(labels, scores, n_bins=10, strategy="quantile")
    metrics.brier_score_loss(labels, scores)


def bare_survival(frame: pd.DataFrame, groups: pd.DataFrame) -> None:
    time_ = frame["overall_survival_days"].to_numpy()
    event = frame["death"].to_numpy()
    groupings = {
        "mrs_group": groups["mrs_group"],
        "ca19_9_group": groups["ca19_9_group"],
        "nccn_resectability": frame["nccn_resectability"],
        "risk_group": groups["risk_group"].where(groups["risk_group"] != "unknown"),
    }
    for stratum in frame["nccn_resectability"].unique():
        groupings[stratum] = groups["mrs_group"].where(frame["nccn_resectability"] == stratum)
    for values in groupings.values():
        present = values.notna().to_numpy()
        for level in pd.unique(values[present]):
            mask = (values == level).to_numpy()
            KaplanMeierFitter().fit(time_[mask], event[mask])
        if values[present].nunique() > 1:
            multivariate_logrank_test(time_[present], values[present], event[present])
    concordance_index(time_, -frame["metastasis_risk_score"], event)


def cox_frames(frame: pd.DataFrame, groups: pd.DataFrame) -> list[pd.DataFrame]:
    """The design matrices of the 11 Cox models run_full_analysis fits."""
    base = pd.DataFrame(
        {
            "T": frame["overall_survival_days"],
            "E": frame["death"],
            "mrs": frame["metastasis_risk_score"] * 10,
            "mrs_high": (groups["mrs_group"] == "high").astype(float),
            "ca_high": (groups["ca19_9_group"] == "high")
            .astype(float)
            .where(groups["ca19_9_group"].notna()),
            "age": frame["age_at_diagnosis_years"],
        }
    )
    resect = pd.get_dummies(frame["nccn_resectability"], drop_first=True, dtype=float)
    risk = pd.get_dummies(
        groups["risk_group"].where(groups["risk_group"] != "unknown"), drop_first=True, dtype=float
    ).where(groups["risk_group"] != "unknown")
    sex = pd.get_dummies(frame["sex"], drop_first=True, dtype=float)
    centre = pd.get_dummies(frame["centre"], drop_first=True, dtype=float)
    te = base[["T", "E"]]
    adjust = pd.concat([base[["age"]], sex, centre], axis=1)
    multi = pd.concat([te, base[["mrs_high", "ca_high"]], resect], axis=1)
    return [
        pd.concat([te, base[["mrs"]]], axis=1),
        pd.concat([te, base[["mrs_high"]]], axis=1),
        pd.concat([te, base[["ca_high"]]], axis=1).dropna(),
        pd.concat([te, resect], axis=1),
        pd.concat([te, risk], axis=1).dropna(),
        pd.concat([te, base[["age"]]], axis=1),
        pd.concat([te, sex], axis=1),
        pd.concat([te, centre], axis=1),
        pd.concat([multi, adjust], axis=1).dropna(),
        pd.concat([te, risk, adjust], axis=1).dropna(),
        multi.dropna(),
    ]


def bare_cox(frames: list[pd.DataFrame]) -> None:
    for design in frames:
        fitter = CoxPHFitter().fit(design, duration_col="T", event_col="E")
        _ = fitter.summary, fitter.concordance_index_


def bare_development(frame: pd.DataFrame) -> None:
    cohort = frame[(frame["metastasis_label"] == 0) & (frame["developed_metastasis"] == 1)]
    months = cohort["days_to_metastasis"] / 30.4375
    mrs = cohort["metastasis_risk_score"]
    samples = [mrs[months < 3], mrs[(months >= 3) & (months <= 6)], mrs[months > 6]]
    scipy_stats.kruskal(*samples)
    for first, second in ((0, 1), (0, 2), (1, 2)):
        scipy_stats.mannwhitneyu(samples[first], samples[second])
    for bound in (3, 6):
        metrics.roc_auc_score(months < bound, mrs)
        metrics.roc_curve(months < bound, mrs)


def run(size: int, repeats: int) -> None:
    frame = with_study_variables(synthetic_cohort(size, seed=2025))
    options = AnalysisOptions(synthetic=True)
    run_full_analysis(frame, options=options)  # warm-up: imports, lifelines caches
    analysis = run_full_analysis(frame, options=options)
    groups = analysis.patient_groups
    frames = cox_frames(frame, groups)
    labels = frame["metastasis_label"]
    mrs = frame["metastasis_risk_score"]
    time_, event = frame["overall_survival_days"], frame["death"]

    ours = {
        "classification (2 scores)": lambda: [
            evaluate_binary(labels, frame[c])
            for c in ("metastasis_risk_score", "predicted_positive_fraction")
        ],
        "Kaplan-Meier + log-rank (mrs group)": lambda: kaplan_meier_by_group(
            time_, event, groups["mrs_group"]
        ),
        "Cox (mrs group + CA19-9 + resectability)": lambda: cox_regression(
            pd.DataFrame(
                {
                    "t": time_,
                    "e": event,
                    "mrs_group": groups["mrs_group"],
                    "ca19_9_group": groups["ca19_9_group"],
                    "nccn_resectability": frame["nccn_resectability"],
                }
            ),
            duration_col="t",
            event_col="e",
            variables=["mrs_group", "ca19_9_group", "nccn_resectability"],
        ),
        "DeLong AUROC (MRS)": lambda: delong_auroc(labels, mrs),
        "maxstat cut-point (MRS)": lambda: maxstat_cutpoint(time_, event, mrs),
    }
    bare = {
        "classification (2 scores)": lambda: [
            (
                metrics.roc_auc_score(labels, frame[c]),
                metrics.roc_curve(labels, frame[c]),
                metrics.precision_recall_curve(labels, frame[c]),
                metrics.average_precision_score(labels, frame[c]),
                metrics.confusion_matrix(labels, frame[c] >= 0.5),
            )
            for c in ("metastasis_risk_score", "predicted_positive_fraction")
        ],
        "Kaplan-Meier + log-rank (mrs group)": lambda: (
            [
                KaplanMeierFitter().fit(
                    time_[groups["mrs_group"] == g], event[groups["mrs_group"] == g]
                )
                for g in ("low", "high")
            ]
            + [multivariate_logrank_test(time_, groups["mrs_group"], event)]
        ),
        "Cox (mrs group + CA19-9 + resectability)": lambda: (
            CoxPHFitter().fit(frames[-1], duration_col="T", event_col="E").summary
        ),
        "DeLong AUROC (MRS)": lambda: metrics.roc_auc_score(labels, mrs),
    }
    print(f"\n=== {size} synthetic patients (best of {repeats}) ===")
    print(f"{'component':45s} {'ours (s)':>10s} {'bare (s)':>10s} {'ratio':>7s}")
    for name, function in ours.items():
        ours_time = best_of(function, repeats)
        if name in bare:
            bare_time = best_of(bare[name], repeats)
            print(f"{name:45s} {ours_time:10.4f} {bare_time:10.4f} {ours_time / bare_time:7.2f}")
        else:
            print(f"{name:45s} {ours_time:10.4f} {'(none)':>10s} {'':>7s}")

    full = best_of(lambda: run_full_analysis(frame, options=options), repeats)
    study = best_of(lambda: study_analyses(frame, options), repeats)
    parts = {
        "scikit-learn (ROC, PR, AUC, sites, subgroups, calibration)": lambda: bare_classification(
            frame
        ),
        "lifelines KM + log-rank (all groupings) + C-index": lambda: bare_survival(frame, groups),
        "lifelines CoxPHFitter (the 11 models)": lambda: bare_cox(frames),
        "scipy (development tests)": lambda: bare_development(frame),
        "lifelines on the study variables (KM, log-rank, Cox)": lambda: bare_study(frame),
    }
    bare_total = 0.0
    print("\nbare calls doing the same work as run_full_analysis:")
    for name, function in parts.items():
        elapsed = best_of(function, repeats)
        bare_total += elapsed
        print(f"  {name:62s} {elapsed:8.4f} s")
    goal = 1.0 if size <= 1000 else 10.0
    print(f"  {'total bare':62s} {bare_total:8.4f} s")
    print(f"  study-variable analyses (ours, no model version needed)      {study:8.4f} s")
    whole = full + study
    print(
        f"run_full_analysis + study-variable analyses: {whole:.3f} s (goal < {goal:g} s); "
        f"bare total {bare_total:.3f} s; ratio {whole / bare_total:.2f} (goal <= 2)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[661, 10_000])
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"Python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}; "
        f"{os.cpu_count()} CPU(s) visible"
    )
    for size in arguments.sizes:
        run(size, arguments.repeats if size <= 1000 else max(1, arguments.repeats // 3))


if __name__ == "__main__":
    main()
