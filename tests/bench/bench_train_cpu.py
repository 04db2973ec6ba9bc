"""Quality check of the whole PMPD training path on CPU, run by hand (too slow for the suite).

A phantom cohort (default 120 patients, 256 matrix) is pre-processed, then cross-validated twice
with a small backbone: once with its real labels and once with shuffled labels. Prints the
out-of-fold patient-level AUROC of each run and the time taken, beside their targets:
real labels >= 0.85 within 15 minutes, shuffled labels between 0.35 and 0.65; and the mean epoch
time beside its forward/backward share, with the rest (validation, keeping the best weights,
gathering batches) as a share of the epoch (target < 20%, checked by
tests/inference/test_pmpd_train.py on a small run). It asserts
nothing: timings on a shared machine vary, and the numbers are for a person to read.

    .venv/bin/python tests/bench/bench_train_cpu.py [--patients 120] [--depth 10] ...
    python tests/bench/bench_train_cpu.py --device cuda --depth 50 --input-size 224  # on a GPU

(Until 2026-11-26 the device was fixed to "cpu": the "short GPU training" of the first GPU
session therefore ran ResNet50 at 224 on one CPU thread and seemed to stall at fold 1.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference.pmpd.model import ModelConfig  # noqa: E402
from inference.pmpd.phantom import PhantomConfig, iter_cohort  # noqa: E402
from inference.pmpd.preprocess import PreprocessConfig, preprocess_patient  # noqa: E402
from inference.pmpd.train import TrainConfig, cross_validate, epoch_overhead_share  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--size", type=int, default=256, help="phantom in-plane matrix")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--angles", type=int, default=6, help="rotations per slice (0 first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stop-on",
        choices=("loss", "auroc", "none"),
        default="none",
        help="early stopping on the inner validation loss or AUROC, or none (every epoch)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default, one per core); 1 is steadier when other "
        "work shares the cores",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (the check this script is for), cuda or auto: the GPU script runs the short "
        "ResNet50 training with --device cuda",
    )
    parser.add_argument("--skip-shuffled", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    phantom = PhantomConfig(size=args.size)
    angles = tuple(float(a) for a in np.arange(args.angles) * 360.0 / args.angles)
    preprocess = PreprocessConfig(input_size=args.input_size, rotation_angles_deg=angles)
    data, labels, sites, ids, strengths = [], [], [], [], []
    for patient in iter_cohort(args.patients, seed=args.seed, config=phantom):
        if patient.clinical["metastasis_at_diagnosis"] == "unknown":
            continue
        data.append(
            preprocess_patient(
                patient.ct,
                patient.mask,
                spacing=patient.spacing,
                direction=patient.direction,
                config=preprocess,
                augment=True,
            )
        )
        labels.append(int(patient.metastatic))
        sites.append(patient.site_labels)
        ids.append(patient.study_id)
        strengths.append(patient.signal_strength)
    prepared = time.perf_counter() - started
    labels_arr = np.array(labels)
    from sklearn.metrics import roc_auc_score

    print(
        f"cohort: {len(data)} patients ({labels_arr.sum()} metastatic), phantom {args.size}^2, "
        f"generated and pre-processed in {prepared:.0f} s"
    )
    print(
        f"  phantom signal strength AUROC (best achievable): "
        f"{roc_auc_score(labels_arr, strengths):.3f}"
    )

    config = TrainConfig(
        model=ModelConfig(depth=args.depth, input_size=args.input_size),
        max_epochs=args.epochs,
        early_stopping_patience=args.patience,
        early_stopping_metric=args.stop_on,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        seed=args.seed,
        device=args.device,
        num_threads=args.threads or None,
    )

    def progress(fold: int, epoch: int, message: str, percent: float) -> None:
        print(f"  [{percent:5.1f}%] {message}", flush=True)

    import torch

    torch_threads = args.threads or torch.get_num_threads()
    runs = [("real labels", labels_arr, "target >= 0.85 in <= 15 min")]
    if not args.skip_shuffled:
        shuffled = np.random.default_rng(args.seed + 1).permutation(labels_arr)
        runs.append(("shuffled labels", shuffled, "target 0.35-0.65"))
    print(
        f"ResNet{args.depth}, input {args.input_size}, {args.epochs} epochs max, "
        f"device {args.device}, "
        f"{len(angles)} angles x 4 slices, {torch_threads} thread(s), "
        f"early stopping: {args.stop_on}"
    )
    for name, run_labels, target in runs:
        t0 = time.perf_counter()
        result = cross_validate(
            data,
            run_labels,
            config,
            progress,
            patient_ids=ids,
            site_labels=np.array(sites) if name == "real labels" else None,
        )
        seconds = time.perf_counter() - t0
        print(
            f"{name:>16}: out-of-fold patient AUROC (MRS) {result.metrics['patient_auroc_mrs']:.3f}"
            f", by positive fraction {result.metrics['patient_auroc_positive_fraction']:.3f}, "
            f"slice AUROC {result.metrics['slice_auroc']:.3f}, folds "
            f"{result.metrics['fold_patient_auroc_mean']:.3f} +- "
            f"{result.metrics['fold_patient_auroc_std']:.3f}; "
            f"{seconds / 60:.1f} min ({target})",
            flush=True,
        )
        epochs = [f.epochs_run for f in result.folds]
        print(f"{'':>18}epochs run per fold {epochs}, best {[f.best_epoch for f in result.folds]}")
        history = [record for fold in result.folds for record in fold.history]
        epoch_seconds = np.mean([record["epoch_seconds"] for record in history])
        step_seconds = np.mean([record["train_step_seconds"] for record in history])
        print(
            f"{'':>18}epoch {epoch_seconds:.2f} s, of which forward/backward/step "
            f"{step_seconds:.2f} s; overhead (validation, best weights, batches) "
            f"{epoch_overhead_share(history):.1%} of the epoch (target < 20%)",
            flush=True,
        )
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
