"""CPU benchmark of scoring one patient: 5 fold models x 4 slices, ResNet50 PMPDNet at 224.

    .venv/bin/python tests/bench/bench_inference_cpu.py

Prints, each beside its baseline from the same run:
  * ``score_patient`` as the platform runs it (fold models from ``load_fold_models``: BatchNorm
    folded into the convolutions, one batch per fold, inference_mode, channels_last, fp32)
    beside a plain loop that feeds one patch at a time to models in the default memory
    format, without inference_mode; and the same without the BatchNorm folding;
  * the platform's default, which adds bf16 autocast where the CPU computes bf16 natively
    (AVX512-BF16/AMX), and the same with bf16 forced on;
  * the achieved GFLOP/s (the model's FLOPs counted by FlopCounterMode) beside the measured
    fp32 matrix-multiply peak (torch.mm 2048x2048);
  * scoring with the ensemble's Grad-CAM as the scoring step runs it (``score_and_explain``:
    one forward pass per fold, the backward pass from the logit to layer4 only) beside
    ``score_patient`` followed by the textbook Grad-CAM (a second fp32 forward pass and the
    whole network's backward pass per fold);
  * the process's peak resident memory.
Asserts nothing: the machine's cores may be shared, so read the numbers as a person would.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]

from gradcam_reference import textbook_ensemble_gradcam  # noqa: E402

from inference.pmpd.gradcam import score_and_explain  # noqa: E402
from inference.pmpd.model import (  # noqa: E402
    ModelConfig,
    PMPDNet,
    cpu_has_native_bf16,
    fuse_batchnorm,
    prepare_model,
)
from inference.pmpd.predict import (  # noqa: E402
    FoldModel,
    FoldThresholds,
    PredictConfig,
    score_patient,
)

N_FOLDS, N_SLICES, SIZE = 5, 4, 224


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up: oneDNN builds its kernels for the shapes on the first call
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU scoring benchmark")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(depth=50, input_size=SIZE)
    plain_models = [PMPDNet(config).eval() for _ in range(N_FOLDS)]
    unfused_models, fold_models = [], []
    for model in plain_models:
        for fuse, target in ((False, unfused_models), (True, fold_models)):
            fast = PMPDNet(config)
            fast.load_state_dict(model.state_dict())
            fast.eval()
            if fuse:
                fuse_batchnorm(fast)
            fast = prepare_model(fast, torch.device("cpu"), channels_last=True)
            target.append(FoldModel(model=fast, thresholds=FoldThresholds(0.5, 0.5), card={}))
    patches = np.random.default_rng(0).random((N_SLICES, 2, SIZE, SIZE), dtype=np.float32)
    tensor = torch.from_numpy(patches)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def naive() -> list[float]:
        return [
            float(torch.sigmoid(model(tensor[i : i + 1]).metastasis_logit).detach())
            for model in plain_models
            for i in range(N_SLICES)
        ]

    fp32 = PredictConfig(bf16_on_cpu=False)
    fast_s = median_seconds(lambda: score_patient(patches, fold_models, config=fp32), repeats=5)
    default_s = median_seconds(lambda: score_patient(patches, fold_models), repeats=5)
    naive_s = median_seconds(naive, repeats=3)
    unfused_s = median_seconds(
        lambda: score_patient(patches, unfused_models, config=fp32), repeats=3
    )
    unfused_mrs = score_patient(patches, unfused_models, config=fp32).metastasis_risk_score
    bf16 = PredictConfig(bf16_on_cpu=True)
    bf16_s = median_seconds(lambda: score_patient(patches, fold_models, config=bf16), repeats=3)
    fp32_mrs = score_patient(patches, fold_models, config=fp32).metastasis_risk_score
    bf16_mrs = score_patient(patches, fold_models, config=bf16).metastasis_risk_score
    naive_mrs = float(np.mean(naive()))
    one_pass_s = median_seconds(lambda: score_and_explain([patches], fold_models), repeats=3)

    def apart() -> None:
        score_patient(patches, fold_models)
        textbook_ensemble_gradcam([f.model for f in fold_models], patches)

    apart_s = median_seconds(apart, repeats=3)

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        plain_models[0](tensor[:1])
    flops_per_patch = counter.get_total_flops()
    total_flops = flops_per_patch * N_FOLDS * N_SLICES
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm_s = median_seconds(lambda: torch.mm(a, b), repeats=10)
    peak_gflops = 2 * 2048**3 / mm_s / 1e9
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    mm16_s = median_seconds(lambda: torch.mm(a16, b16), repeats=10)
    peak16_gflops = 2 * 2048**3 / mm16_s / 1e9

    print(f"one patient = {N_FOLDS} folds x {N_SLICES} slices, ResNet50 at {SIZE}x{SIZE}")
    native = cpu_has_native_bf16()
    print(
        f"  score_patient as the platform runs it (BN folded, bf16 autocast "
        f"{'on: this CPU has native bf16' if native else 'off: no native bf16 here'}): "
        f"{default_s:.2f} s   vs  plain fp32 one-patch loop: {naive_s:.2f} s   "
        f"(x{naive_s / default_s:.2f})"
    )
    print(
        f"  score_patient (fused BN, batched, inference_mode, channels_last, fp32): {fast_s:.2f} s"
        f"   vs  plain one-patch loop: {naive_s:.2f} s   (x{naive_s / fast_s:.2f})"
    )
    print(
        f"  score_patient without the BatchNorm folding:                 {unfused_s:.2f} s"
        f"   (x{naive_s / unfused_s:.2f} the loop); MRS {unfused_mrs:.4f} vs fused "
        f"{fp32_mrs:.4f}"
    )
    print(
        f"  score_patient with bf16 autocast on CPU:                     {bf16_s:.2f} s"
        f"   vs  fp32 {fast_s:.2f} s; MRS {bf16_mrs:.4f} vs {fp32_mrs:.4f} "
        f"(|diff| {abs(bf16_mrs - fp32_mrs):.4f}); plain loop MRS {naive_mrs:.4f}"
    )
    print(
        f"  achieved {total_flops / fast_s / 1e9:.1f} GFLOP/s "
        f"({flops_per_patch / 1e9:.2f} GFLOP per patch)   vs  torch.mm 2048^2 fp32 peak "
        f"{peak_gflops:.1f} GFLOP/s ({100 * total_flops / fast_s / 1e9 / peak_gflops:.0f}%)"
    )
    print(
        f"  with bf16: {total_flops / default_s / 1e9:.1f} GFLOP/s   vs  torch.mm 2048^2 bf16 "
        f"peak {peak16_gflops:.1f} GFLOP/s; the one-patch loop reaches "
        f"{total_flops / naive_s / 1e9:.1f} GFLOP/s ({100 * total_flops / naive_s / 1e9 / peak_gflops:.0f}% "
        f"of the fp32 peak), so no scoring at the bf16 peak is more than "
        f"x{peak16_gflops / (total_flops / naive_s / 1e9):.2f} faster than it"
    )
    print(
        f"  scoring with Grad-CAM in one pass (score_and_explain): {one_pass_s:.2f} s   vs  "
        f"score_patient then the textbook Grad-CAM: {apart_s:.2f} s   (x{apart_s / one_pass_s:.2f})"
    )
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"  peak RSS of this process (5 fold models in three copies: plain, unfused, fused): {peak_rss_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
