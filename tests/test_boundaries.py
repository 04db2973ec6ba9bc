"""The boundaries a checker enforces: import contracts (import-linter), the Django-free modules
import without Django or Celery, and the embedded broker keeps its files under the data folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

DJANGO_FREE = [
    "inference.pmpd.preprocess",
    "inference.pmpd.phantom",
    "analytics.stats",
    "pmpd_web.imaging.deid",
    "pmpd_web.imaging.dicom_series",
    "pmpd_web.imaging.volumes",
    "pmpd_web.imaging.archives",
    "pmpd_web.imaging.dicomweb_protocol",
    "pmpd_web.cohorts.table",
    "pmpd_web.cohorts.rules",
]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_django_free_modules_import_without_django_or_celery():
    done = _python(
        "import importlib, json, sys\n"
        f"for name in {DJANGO_FREE!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in ('django', 'celery', 'kombu', 'rest_framework')"
        " if m in sys.modules)))"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_starting_django_imports_no_engine_statistics_or_figures():
    """The web and every management command start without the training and scoring code, the
    table reader, the statistics and the figures (pandas, SciPy, Plotly, PyTorch):
    django.setup() took 1.6 s with them (the job receivers of the engine and of the import,
    the patients table's results and the consistency rules imported them), 0.37 s without.
    They are imported when a job or a page needs them."""
    heavy = (
        "pmpd_web.cohorts.importer",
        "pandas",
        "inference.jobs",
        "inference.training",
        "inference.scoring",
        "analytics.services",
        "analytics.stats",
        "scipy.stats",
        "plotly",
        "torch",
    )
    done = _python(
        "import django, json, sys\n"
        "django.setup()\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))",
        DJANGO_SETTINGS_MODULE="pmpd_web.settings",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_the_celery_app_is_built_when_a_worker_or_django_asks_for_it():
    done = _python(
        "import django, pmpd_web\n"
        "django.setup()\n"
        "from celery import current_app\n"
        "print(current_app.main, pmpd_web.celery_app is current_app._get_current_object())",
        DJANGO_SETTINGS_MODULE="pmpd_web.settings",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pmpd_web", "True"]


@pytest.mark.slow
def test_the_file_system_broker_keeps_its_control_folder_under_the_data_folder(tmp_path):
    done = _python(
        "import json, django\n"
        "django.setup()\n"
        "from django.conf import settings\n"
        "print(json.dumps(settings.CELERY_BROKER_TRANSPORT_OPTIONS))",
        DJANGO_SETTINGS_MODULE="pmpd_web.settings",
        CELERY_BROKER_URL="filesystem://",
        PMPD_DATA_DIR=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    options = json.loads(done.stdout.strip().splitlines()[-1])
    control = Path(options["control_folder"])
    assert control.is_dir() and control.is_relative_to(tmp_path)
    tracked = subprocess.run(
        ["git", "ls-files", "control"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert tracked.stdout == ""


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_the_import_contracts_hold():
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("inference/pmpd/phantom.py", "import django", "pure libraries"),
        ("analytics/stats/__init__.py", "import celery", "pure libraries"),
        ("pmpd_web/imaging/deid.py", "import django.db", "import no Django or Celery"),
        ("pmpd_web/accounts/models.py", "import inference.models", "Apps are layered"),
    ],
)
def test_a_broken_contract_fails_the_check(tmp_path, module, line, contract):
    """The checker is shown to catch each kind of violation, in a copy of the sources."""
    for package in ("pmpd_web", "inference", "analytics"):
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__", "static", "templates", "ohif", "*.js"),
        )
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    broken = tmp_path / module
    broken.write_text(f"{line}  # deliberately broken\n" + broken.read_text())
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    report = " ".join(done.stdout.split())
    assert "BROKEN" in report and contract in report
