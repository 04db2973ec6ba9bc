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


def test_the_gpu_session_script_runs_its_steps_at_toy_sizes(tmp_path):
    """tests/bench/gpu_session.sh, the one script a lent GPU machine runs, at toy sizes on the
    CPU (``GPU_SESSION_SMOKE=1``): the training and the end-to-end scoring with a gpu-queue
    worker beside a cpu-queue worker, each step's exit status said, the log kept in $OUT.
    (The GPU benchmark's smoke run is the test above; nnU-Net's has tests of its own.)"""
    environment = {
        key: value
        for key, value in os.environ.items()
        # The benchmarks' own throw-away SQLite and file-system broker, not the test servers.
        if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")
    }
    environment.update(
        OUT=str(tmp_path),
        PYTHON=sys.executable,
        GPU_SESSION_SMOKE="1",
        GPU_SESSION_STEPS="train scoring",
        GPU_SESSION_KIT=str(tmp_path / "no-kit.tar.xz"),
        GPU_SESSION_SECONDS="400",
        PMPD_DATA_DIR=str(tmp_path / "var"),
    )
    completed = subprocess.run(
        ["bash", "tests/bench/gpu_session.sh"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = (tmp_path / "gpu_session.log").read_text()
    assert completed.returncode == 0, log[-3000:]
    assert "modules import" in log and "cannot import" not in log
    assert "== train: exit status 0" in log, log[-3000:]
    assert "== scoring: exit status 0" in log, log[-3000:]
    assert "layout gpu-host: gpu-queue workers beside 1 cpu-queue workers" in log
    assert "end to end, 2 scoring worker(s)" in log and "model only" in log
    assert "== gpu_bench" not in log and "== nnunet" not in log


def gpu_kit_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_kit", ROOT / "tests/bench/gpu_kit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_kit_carries_what_the_machine_lacks_and_unpacks_without_xz(tmp_path):
    """The kit holds the pinned platform packages the GPU machine's image lacks (not PyTorch,
    NumPy or pandas, which it has; not the S3 client or PostgreSQL driver, which no check
    uses), and unpacks with Python's own tarfile, the top folder dropped."""
    import tarfile

    kit = gpu_kit_module()
    pins = kit.pinned_requirements()
    carried = kit.wanted(pins)
    for name in ("django", "celery", "simpleitk", "pydicom", "nnunetv2", "lifelines"):
        assert carried[name] == pins[name]
    for name in ("torch", "numpy", "pandas", "scipy", "boto3", "psycopg", "gunicorn"):
        assert name in pins and name not in carried
    archive = tmp_path / "site.tar.xz"
    (tmp_path / "site" / "package").mkdir(parents=True)
    (tmp_path / "site" / "package" / "__init__.py").write_text("VALUE = 7\n")
    with tarfile.open(archive, "w:xz") as packed:
        packed.add(tmp_path / "site", arcname="site")
    assert kit.unpack(archive, tmp_path / "unpacked") == 1
    assert (tmp_path / "unpacked" / "package" / "__init__.py").read_text() == "VALUE = 7\n"
