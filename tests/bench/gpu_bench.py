"""GPU benchmark of PMPD inference and training, prepared for a machine with one H100.

    PYTHONPATH=. python3 tests/bench/gpu_bench.py            # full run, about 2-3 minutes
    PYTHONPATH=. python3 tests/bench/gpu_bench.py --smoke    # tiny sizes, runs on CPU too

Prints, each beside its baseline measured in the same run:
  * inference patches/s of ResNet50 PMPDNet at 224 through ``predict.predict_slices`` (bf16
    autocast, channels_last, inference_mode, batch 256) beside a plain fp32 eager loop
    (contiguous memory format, no autocast, ``torch.no_grad``), with CUDA-synchronised timing
    after warm-up; optionally a ``torch.compile`` variant, if time allows;
  * the time of one training epoch over 8,040 random 2x224x224 patches (the paper's 335
    patients x 24 patches) through ``train.train_step`` (bf16 autocast, channels_last, fused
    AdamW) beside the same epoch in fp32 without channels_last (convolutions in TF32, PyTorch's
    default on CUDA), after warm-up steps at both batch shapes of the epoch.
Writes the figures as JSON to $OUT/gpu_bench.json when OUT is set. Imports only torch, numpy,
MONAI and inference.pmpd.model/predict/train (no SimpleITK, no pydicom).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from inference.pmpd.model import ModelConfig, PMPDNet, model_summary, prepare_model  # noqa: E402
from inference.pmpd.predict import PredictConfig, predict_slices  # noqa: E402
from inference.pmpd.train import TrainConfig, TrainingBatch, make_optimizer, train_step  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Mean seconds per call after one untimed warm-up call, synchronised around the loop."""
    function()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def inference_benchmark(
    sizes: dict[str, int], device: torch.device, results: dict[str, object]
) -> None:
    config = ModelConfig(depth=sizes["depth"], input_size=sizes["input"])
    torch.manual_seed(0)
    batch = sizes["infer_batch"]
    patches = torch.rand(sizes["infer_patches"], 2, sizes["input"], sizes["input"], device=device)

    eager = PMPDNet(config).to(device).eval()
    eager_batches = [patches[i : i + batch] for i in range(0, len(patches), batch)]

    def run_eager() -> None:
        with torch.no_grad():
            for chunk in eager_batches:
                eager(chunk)

    # Warm-up inside ``timed``: cuDNN picks its algorithms on the first calls.
    eager_seconds = timed(run_eager, device, sizes["repeats"])
    results["fp32_eager_patches_per_s"] = len(patches) / eager_seconds

    model = prepare_model(PMPDNet(config), device, channels_last=True).eval()
    predict = PredictConfig(channels_last=True, batch_size=batch)
    fast_seconds = timed(
        lambda: predict_slices(model, patches, device=device, config=predict),
        device,
        sizes["repeats"],
    )
    results["bf16_channels_last_patches_per_s"] = len(patches) / fast_seconds
    print(
        f"inference ResNet{config.depth} {config.input_size}px, batch {batch}: "
        f"predict_slices bf16+channels_last {results['bf16_channels_last_patches_per_s']:,.0f} "
        f"patches/s  vs  fp32 eager {results['fp32_eager_patches_per_s']:,.0f} patches/s "
        f"(x{eager_seconds / fast_seconds:.2f})",
        flush=True,
    )


def compile_benchmark(
    sizes: dict[str, int], device: torch.device, results: dict[str, object], deadline: float
) -> None:
    """torch.compile of the inference model, only when enough of the time budget is left;
    a failure is recorded, not raised (the other figures are already in)."""
    if not sizes["compile"] or time.perf_counter() > deadline - 100:
        results["compiled_bf16_patches_per_s"] = None
        print("torch.compile skipped (smoke run, --no-compile or not enough time left)", flush=True)
        return
    config = ModelConfig(depth=sizes["depth"], input_size=sizes["input"])
    torch.manual_seed(0)
    batch = sizes["infer_batch"]
    patches = torch.rand(sizes["infer_patches"], 2, sizes["input"], sizes["input"], device=device)
    model = prepare_model(PMPDNet(config), device, channels_last=True).eval()
    try:
        started = time.perf_counter()
        compiled = torch.compile(model)

        def run_compiled() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                for i in range(0, len(patches), batch):
                    compiled(patches[i : i + batch].contiguous(memory_format=torch.channels_last))

        run_compiled()
        synchronize(device)
        results["compile_seconds"] = time.perf_counter() - started
        compiled_seconds = timed(run_compiled, device, sizes["repeats"])
    except Exception as error:  # noqa: BLE001 - report any compiler failure and go on
        results["compile_error"] = f"{type(error).__name__}: {error}"[:500]
        results["compiled_bf16_patches_per_s"] = None
        print(f"torch.compile failed: {results['compile_error']}", flush=True)
        return
    results["compiled_bf16_patches_per_s"] = len(patches) / compiled_seconds
    print(
        f"inference with torch.compile bf16: {results['compiled_bf16_patches_per_s']:,.0f} "
        f"patches/s (compiled in {results['compile_seconds']:.0f} s)  vs  predict_slices "
        f"{results['bf16_channels_last_patches_per_s']:,.0f} patches/s",
        flush=True,
    )


def training_epoch(
    sizes: dict[str, int], device: torch.device, *, fast: bool
) -> tuple[float, float]:
    """Seconds for one epoch over ``train_patches`` random patches, and the mean loss."""
    torch.manual_seed(0)
    config = TrainConfig(
        model=ModelConfig(depth=sizes["depth"], input_size=sizes["input"]),
        batch_size=sizes["train_batch"],
        channels_last=fast,
    )
    model = prepare_model(PMPDNet(config.model), device, channels_last=fast)
    optimizer = make_optimizer(model, config)
    n = sizes["train_patches"]
    images = torch.rand(n, 2, sizes["input"], sizes["input"], device=device)
    labels = (torch.rand(n, device=device) < 0.315).float()
    sites = torch.zeros(n, 4, device=device)
    sites[:, 0] = 1.0 - labels
    site_mask = torch.ones(n, 4, device=device)
    step_size = config.batch_size

    memory_format = torch.channels_last if fast else torch.contiguous_format

    def batch_at(index: torch.Tensor) -> TrainingBatch:
        # As train.py does: NCHW store, each batch made channels_last.
        batch_images = images[index].contiguous(memory_format=memory_format)
        return TrainingBatch(batch_images, labels[index], sites[index], site_mask[index])

    def step(index: torch.Tensor) -> torch.Tensor:
        # The baseline is the same step in fp32 throughout (no autocast).
        return train_step(
            model, optimizer, batch_at(index), site_loss_weight=0.3, mixed_precision=fast
        )

    for size in {step_size, n % step_size or step_size}:  # both batch shapes of an epoch
        warm = torch.arange(size, device=device)
        for _ in range(2):
            step(warm)
    synchronize(device)
    order = torch.randperm(n, device=device)

    started = time.perf_counter()
    losses = [step(order[i : i + step_size]) for i in range(0, n, step_size)]
    synchronize(device)
    seconds = time.perf_counter() - started
    return seconds, float(torch.stack(losses).mean())


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: torch.mm(a, b), device, 10)
    return 2 * n**3 / seconds / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description="PMPD GPU benchmark")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget-s", type=float, default=220.0, help="soft time budget")
    args = parser.parse_args()
    started = time.perf_counter()
    deadline = started + args.budget_s
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        sizes = dict(depth=10, input=32, infer_batch=8, infer_patches=16, repeats=1,
                     train_batch=8, train_patches=16, compile=0)  # fmt: skip
    else:
        sizes = dict(depth=50, input=224, infer_batch=256, infer_patches=2048, repeats=5,
                     train_batch=128, train_patches=8040, compile=int(not args.no_compile))  # fmt: skip
    # cudnn.benchmark stays off, as in the platform: with it on, every new batch shape (the
    # last batch of an epoch, a patient with 3 slices) costs seconds of autotuning (3.2 s for
    # ResNet50 at batch 104 on an H100) for a ~7% faster step.
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "smoke": args.smoke,
        "sizes": sizes,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    summary = model_summary(PMPDNet(ModelConfig(depth=sizes["depth"], input_size=sizes["input"])))
    results["parameters"] = summary.total_parameters
    print(f"{results['device']}, torch {torch.__version__}\n{summary}", flush=True)
    if device.type == "cuda":
        peak = matmul_peak(device, torch.bfloat16, 8192)
        results["bf16_matmul_tflops"] = peak
        print(f"bf16 8192^3 matmul: {peak:,.0f} TFLOP/s", flush=True)

    inference_benchmark(sizes, device, results)

    fast_seconds, fast_loss = training_epoch(sizes, device, fast=True)
    results["train_epoch_bf16_channels_last_s"] = fast_seconds
    results["train_bf16_patches_per_s"] = sizes["train_patches"] / fast_seconds
    slow_seconds, slow_loss = training_epoch(sizes, device, fast=False)
    results["train_epoch_fp32_s"] = slow_seconds
    results["train_fp32_patches_per_s"] = sizes["train_patches"] / slow_seconds
    print(
        f"training epoch of {sizes['train_patches']:,} patches, batch {sizes['train_batch']}: "
        f"bf16+channels_last {fast_seconds:.1f} s ({results['train_bf16_patches_per_s']:,.0f} "
        f"patches/s, loss {fast_loss:.3f})  vs  fp32 {slow_seconds:.1f} s "
        f"({results['train_fp32_patches_per_s']:,.0f} patches/s, loss {slow_loss:.3f})",
        flush=True,
    )
    if not all(np.isfinite([fast_loss, slow_loss])):
        raise SystemExit("non-finite training loss")
    if device.type == "cuda":
        results["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    write_results(results, started)
    compile_benchmark(sizes, device, results, deadline)
    write_results(results, started)
    print(f"total {results['total_seconds']:.0f} s", flush=True)


def write_results(results: dict[str, object], started: float) -> None:
    """Write the figures so far to $OUT/gpu_bench.json (when OUT is set)."""
    results["total_seconds"] = time.perf_counter() - started
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
