"""The Python packages the GPU checks need on a lent GPU machine, packed to travel with the
working tree (the device tool's ``carry``), and the check that they import there.

The lent machine (the device tool's ``nvidia-h200``: Python 3.12, PyTorch with CUDA, no package
registry) has PyTorch, NumPy, pandas, SciPy, scikit-learn and the like, but not Django,
Celery, SimpleITK, pydicom, nnU-Net and the rest of the platform. ``make gpu-kit`` runs

    .venv/bin/python tests/bench/gpu_kit.py build

here: it takes the versions of requirements/base.txt for every package the machine lacks
(``DEVICE_PACKAGES``, from the device tool's KINDS.md, read 2026-11-17), less those no GPU check
imports (``NOT_NEEDED``), fetches their CPython 3.12 manylinux wheels (a pure-Python package
published only as a source archive is built into a wheel here), installs them into a folder as
pip would there, and packs that folder as ``.gpu-kit/site.tar.xz`` (git ignores ``.gpu-kit``).
The folder must stay under the tool's 64 MiB with the working tree; the build says its size.

On the GPU machine, ``tests/bench/gpu_session.sh`` unpacks it into ``/tmp/site``
(``gpu_kit.py unpack``: Python's own tarfile and lzma), puts it first on ``PYTHONPATH`` and runs

    python3 tests/bench/gpu_kit.py check

which imports every module the checks use and names each one that fails, before any check
spends device time.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / ".gpu-kit"
WHEELS = REPO / "var" / "gpu-kit-wheels"
ARCHIVE = KIT / "site.tar.xz"
TRAVEL_LIMIT_MIB = 64

PYTHON_VERSION = "3.12"
PLATFORMS = (
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)

# The Python packages of the device tool's nvidia-h200 image ("Python packages already there",
# KINDS.md, read on 2026-11-17). Their versions are the machine's own.
DEVICE_PACKAGES = frozenset(
    [
        "absl-py",
        "accelerate",
        "aiofiles",
        "aiohappyeyeballs",
        "aiohttp",
        "aiosignal",
        "annotated-doc",
        "anyio",
        "attrs",
        "botorch",
        "build",
        "certifi",
        "charset-normalizer",
        "chex",
        "click",
        "cloudpickle",
        "cmake",
        "colorama",
        "contourpy",
        "coverage",
        "cuda-bindings",
        "cuda-core",
        "cuda-pathfinder",
        "cuda-toolkit",
        "cupy-cuda13x",
        "cycler",
        "cython",
        "diffrax",
        "e3nn",
        "einops",
        "equinox",
        "etils",
        "execnet",
        "filelock",
        "flatbuffers",
        "flax",
        "fonttools",
        "formulaic",
        "frozenlist",
        "fsspec",
        "gpytorch",
        "grpcio",
        "h11",
        "h5py",
        "hf-xet",
        "httpcore",
        "httpx",
        "huggingface-hub",
        "humanize",
        "hypothesis",
        "idna",
        "imageio",
        "iniconfig",
        "interface-meta",
        "jax",
        "jax-cuda13-pjrt",
        "jax-cuda13-plugin",
        "jaxlib",
        "jaxtyping",
        "jinja2",
        "joblib",
        "kiwisolver",
        "lazy-loader",
        "lightning",
        "lightning-utilities",
        "linear-operator",
        "lineax",
        "llvmlite",
        "lxml",
        "markdown",
        "markdown-it-py",
        "markupsafe",
        "matplotlib",
        "mdurl",
        "meson",
        "ml-dtypes",
        "mpi4py",
        "mpmath",
        "msgpack",
        "multidict",
        "multipledispatch",
        "mypy-extensions",
        "nanobind",
        "narwhals",
        "networkx",
        "ninja",
        "numba",
        "numba-cuda",
        "numpy",
        "numpyro",
        "nvidia-cublas",
        "nvidia-cuda-cupti",
        "nvidia-cuda-nvrtc",
        "nvidia-cuda-runtime",
        "nvidia-cudnn-cu13",
        "nvidia-cufft",
        "nvidia-cufile",
        "nvidia-curand",
        "nvidia-cusolver",
        "nvidia-cusparse",
        "nvidia-cusparselt-cu13",
        "nvidia-ml-py",
        "nvidia-nccl-cu13",
        "nvidia-nvjitlink",
        "nvidia-nvshmem-cu13",
        "nvidia-nvtx",
        "onnx",
        "onnx-ir",
        "onnxruntime",
        "onnxscript",
        "opencv-python-headless",
        "optax",
        "opt-einsum",
        "opt-einsum-fx",
        "optimistix",
        "orbax-checkpoint",
        "packaging",
        "pandas",
        "pathspec",
        "patsy",
        "peft",
        "pillow",
        "pip",
        "pluggy",
        "portalocker",
        "prometheus-client",
        "propcache",
        "protobuf",
        "psutil",
        "pyarrow",
        "pybind11",
        "py-cpuinfo",
        "pygments",
        "pyparsing",
        "pyproject-hooks",
        "pyre-extensions",
        "pytest",
        "pytest-benchmark",
        "pytest-cov",
        "pytest-mock",
        "pytest-timeout",
        "pytest-xdist",
        "python-dateutil",
        "pytorch-lightning",
        "pyyaml",
        "regex",
        "requests",
        "rich",
        "sacrebleu",
        "safetensors",
        "scikit-build-core",
        "scikit-image",
        "scikit-learn",
        "scipy",
        "seaborn",
        "sentencepiece",
        "sentence-transformers",
        "setuptools",
        "shellingham",
        "simplejson",
        "six",
        "sortedcontainers",
        "statsmodels",
        "sympy",
        "tabulate",
        "tensorboard",
        "tensorboard-data-server",
        "tensorstore",
        "threadpoolctl",
        "tifffile",
        "tiktoken",
        "timm",
        "tokenizers",
        "toolz",
        "torch",
        "torchaudio",
        "torchdiffeq",
        "torch-geometric",
        "torchmetrics",
        "torchvision",
        "tqdm",
        "transformers",
        "treescope",
        "triton",
        "typer",
        "typing-extensions",
        "typing-inspect",
        "urllib3",
        "uvloop",
        "wadler-lindig",
        "werkzeug",
        "wheel",
        "wrapt",
        "xarray",
        "xxhash",
        "yarl",
        "zipp",
    ]
)

# Packages of requirements/base.txt that no GPU check imports: the S3 client (the checks use
# the file-system storage), the PostgreSQL driver (SQLite), the web server, the image codecs
# nnU-Net lists for TIFF data, and the clients of blosc2's and huggingface-hub's network
# features. Leaving them out keeps the kit under the tool's size limit.
NOT_NEEDED = frozenset(
    [
        "boto3",
        "botocore",
        "s3transfer",
        "jmespath",
        "psycopg",
        "psycopg-binary",
        "gunicorn",
        "imagecodecs",
        "httpx2",
        "httpcore2",
        "truststore",
        "h2",
        "hpack",
        "hyperframe",
    ]
)

# What the GPU checks import (tests/bench/gpu_bench.py, bench_train_cpu.py, bench_scoring.py
# with its Celery workers, bench_nnunet.py): the check imports each one.
MODULES = (
    "torch",
    "numpy",
    "pandas",
    "scipy",
    "sklearn",
    "SimpleITK",
    "pydicom",
    "highdicom",
    "nibabel",
    "monai",
    "django",
    "rest_framework",
    "drf_spectacular",
    "django_filters",
    "axes",
    "storages",
    "whitenoise",
    "celery",
    "kombu",
    "redis",
    "lifelines",
    "plotly",
    "openpyxl",
    "nnunetv2",
    "nnunetv2.inference.predict_from_raw_data",
    "nnunetv2.run.run_training",
    "dynamic_network_architectures",
    "batchgenerators",
    "batchgeneratorsv2",
    "acvl_utils",
    "blosc2",
    "cc3d",
    "inference.pmpd.model",
    "inference.pmpd.train",
    "inference.pmpd.gradcam",
    "inference.segmentation.nnunet_core",
)


def pinned_requirements(path: Path = REPO / "requirements" / "base.txt") -> dict[str, str]:
    """``name -> version`` of the compiled requirements (names normalised as PyPI does)."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wanted(pins: dict[str, str]) -> dict[str, str]:
    """The packages to carry: required, missing on the machine, and used by a check."""
    return {
        name: version
        for name, version in sorted(pins.items())
        if name not in DEVICE_PACKAGES and name not in NOT_NEEDED
    }


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )


def _platform_arguments() -> list[str]:
    arguments = ["--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        arguments += ["--platform", platform]
    return arguments


def fetch(name: str, version: str) -> Path:
    """The wheel of ``name==version`` for CPython 3.12 on x86-64 Linux, from the cache or the
    registry; a source-only package is built here and must then be pure Python."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    stem = normalise(name).replace("-", "_")

    def cached() -> list[Path]:
        return [
            path
            for path in WHEELS.glob("*.whl")
            if normalise(path.name.split("-")[0]).replace("-", "_") == stem
            and path.name.split("-")[1] == version
        ]

    if not cached():
        download = _pip(
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            *_platform_arguments(),
            "--dest",
            str(WHEELS),
            f"{name}=={version}",
        )
        if download.returncode != 0:
            built = _pip(
                "wheel", "--quiet", "--no-deps", "--wheel-dir", str(WHEELS), f"{name}=={version}"
            )
            if built.returncode != 0:
                raise SystemExit(
                    f"{name}=={version}: no wheel for CPython {PYTHON_VERSION} on x86-64 Linux "
                    f"and no build here:\n{download.stderr[-800:]}\n{built.stderr[-800:]}"
                )
    found = cached()
    if len(found) != 1:
        raise SystemExit(f"{name}=={version}: expected one wheel in {WHEELS}, found {found}")
    wheel = found[0]
    tags = wheel.name[: -len(".whl")].split("-")[-3:]
    if tags[2] != "any" and not any(platform in tags[2] for platform in PLATFORMS):
        raise SystemExit(f"{wheel.name} is not for x86-64 Linux (built here from its source?)")
    return wheel


def build() -> Path:
    packages = wanted(pinned_requirements())
    wheels = []
    for index, (name, version) in enumerate(packages.items(), start=1):
        print(f"[{index:>2}/{len(packages)}] {name}=={version}", flush=True)
        wheels.append(fetch(name, version))
    with tempfile.TemporaryDirectory(prefix="pmpd-gpu-kit-") as folder:
        site = Path(folder) / "site"
        installed = _pip(
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--only-binary=:all:",
            *_platform_arguments(),
            "--target",
            str(site),
            *map(str, wheels),
        )
        if installed.returncode != 0:
            raise SystemExit(f"installing the wheels into the kit failed:\n{installed.stderr}")
        for cache in site.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
        (site / "PMPD_GPU_KIT.txt").write_text(
            "Packages of requirements/base.txt for the GPU checks (tests/bench/gpu_kit.py):\n"
            + "".join(f"{name}=={version}\n" for name, version in packages.items())
        )
        KIT.mkdir(exist_ok=True)
        partial = ARCHIVE.with_suffix(".partial")
        print(f"packing {len(wheels)} packages into {ARCHIVE.relative_to(REPO)} (xz)", flush=True)
        with tarfile.open(partial, "w:xz", preset=9) as archive:
            archive.add(site, arcname="site")
        partial.replace(ARCHIVE)
    mib = ARCHIVE.stat().st_size / 2**20
    print(f"{ARCHIVE.relative_to(REPO)}: {mib:.1f} MiB (the tool carries {TRAVEL_LIMIT_MIB} MiB)")
    if mib > TRAVEL_LIMIT_MIB - 6:
        raise SystemExit(
            f"the kit is {mib:.1f} MiB: with the working tree it would not travel; "
            "leave more packages out (NOT_NEEDED)"
        )
    return ARCHIVE


def check() -> int:
    """Import every module the checks use; print each failure; exit status 1 if any."""
    sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]
    failures = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the status
            failures.append(f"{module}: {type(exc).__name__}: {exc}")
    try:
        import torch
    except ImportError:
        print(f"Python {sys.version.split()[0]}, no torch")
    else:
        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, {cuda}")
    for line in failures:
        print(f"cannot import {line}")
    print(f"{len(MODULES) - len(failures)} of {len(MODULES)} modules import")
    return 1 if failures else 0


def unpack(archive: Path, site: Path) -> int:
    """Unpack the kit into ``site`` with Python's own tarfile and lzma (the machine need not
    have the xz program); returns the number of files."""
    site.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(archive, "r:xz") as kit:
        for member in kit:
            parts = Path(member.name).parts
            if len(parts) < 2 or parts[0] != "site":
                continue
            member.name = str(Path(*parts[1:]))
            kit.extract(member, site, filter="data")
            count += member.isfile()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "check", "unpack"])
    parser.add_argument("archive", nargs="?", type=Path, default=ARCHIVE)
    parser.add_argument("site", nargs="?", type=Path, default=Path("/tmp/site"))
    args = parser.parse_args()
    if args.action == "build":
        build()
    elif args.action == "unpack":
        print(f"{unpack(args.archive, args.site)} files unpacked into {args.site}")
    else:
        raise SystemExit(check())


if __name__ == "__main__":
    main()
