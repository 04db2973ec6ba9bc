"""The prepared GPU benchmark runs end to end at tiny sizes on CPU (``--smoke``), so the script
that goes to a GPU machine is known to work before device time is spent on it, and it runs
where SimpleITK and pydicom are not installed (they are blocked here to prove it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Runs the GPU benchmark script and a training check on the CPU: left out of make test-fast.
pytestmark = pytest.mark.slow

WITHOUT_IMAGING_LIBRARIES = """
import runpy, sys

class Absent:
    blocked = ("SimpleITK", "pydicom", "highdicom", "django")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, Absent())
sys.argv = ["gpu_bench.py", "--smoke"]
runpy.run_path("tests/bench/gpu_bench.py", run_name="__main__")
"""


def test_gpu_bench_smoke_run_without_simpleitk_or_pydicom(tmp_path):
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OUT": str(tmp_path),
        "OMP_NUM_THREADS": "1",  # the cores are shared with the test process
    }
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_IMAGING_LIBRARIES],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "training epoch" in completed.stdout
    results = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert results["smoke"] is True
    assert results["bf16_channels_last_patches_per_s"] > 0
    assert results["fp32_eager_patches_per_s"] > 0
    assert results["train_epoch_bf16_channels_last_s"] > 0
    assert results["train_epoch_fp32_s"] > 0


def test_the_training_check_runs_on_the_device_it_is_given():
    """The short training of ``make bench-gpu`` passes its --device through (it once trained on
    the CPU whatever it was given); here at tiny sizes on the CPU."""
    completed = subprocess.run(
        [
            sys.executable,
            "tests/bench/bench_train_cpu.py",
            *("--patients", "14", "--size", "64", "--input-size", "32", "--epochs", "1"),
            *("--angles", "2", "--threads", "1", "--device", "cpu"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "device cpu" in completed.stdout
    assert "real labels: out-of-fold patient AUROC (MRS) " in completed.stdout
    assert "shuffled labels: out-of-fold patient AUROC (MRS) " in completed.stdout
