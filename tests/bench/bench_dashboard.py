"""Benchmark: the analytics dashboards at 661 and 10,000 synthetic patients, first and cached.

For each size, in a throw-away test database: a cohort of synthetic patients scored by a model
version; then, as a statistician through the Django test client,

- the five dashboard sections opened the first time (the full analysis, the Cox models and the
  figures are computed and stored) and a second time (read from the cache);
- the same sections after a patient changed (the cache is invalidated, all is recomputed);
- the HTML report from a warm cache;
- beside them, the baseline: ``run_full_analysis`` on the same frame, called directly.

Prints timings; asserts nothing (goal: a cached dashboard section under 0.5 s at 10,000).
Run with ``PYTHONPATH=. .venv/bin/python tests/bench/bench_dashboard.py [--sizes 661 10000]``
against DATABASE_URL (PostgreSQL; the embedded SQLite works too).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pmpd_web.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.urls import resolve  # noqa: E402

SECTIONS = ("evaluation", "survival", "cox", "development", "subgroups")


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def open_sections(client: Client, query: dict) -> tuple[float, dict[str, float], set[str]]:
    per_section = {}
    states = set()
    for section in SECTIONS:
        seconds, response = timed(lambda s=section: client.get(f"/analytics/{s}/", query))
        assert response.status_code == 200, (section, response.status_code)
        per_section[section] = seconds
        states.add(response["X-Analytics-Cache"])
    return sum(per_section.values()), per_section, states


def run(size: int) -> None:
    from factories import make_user
    from scored import make_model_version, make_scored_cohort

    from analytics.loaders import load_frame
    from analytics.models import AnalysisCache
    from analytics.parameters import AnalysisParameters
    from analytics.stats import run_full_analysis, synthetic_cohort
    from pmpd_web.accounts.models import Membership, Role
    from pmpd_web.cohorts.models import Cohort

    run_full_analysis(synthetic_cohort(200, seed=size))  # warm-up: imports, lifelines caches

    user = make_user(f"bench-{size}")
    cohort = Cohort.objects.create(name=f"bench-{size}", is_synthetic=True)
    Membership.objects.create(user=user, cohort=cohort, role=Role.STATISTICIAN)
    version = make_model_version(f"bench-model-{size}", is_synthetic=True)
    seconds, patients = timed(lambda: make_scored_cohort(cohort, version, size, seed=size))
    print(f"\n=== {size} synthetic patients (rows written in {seconds:.1f} s) ===")

    client = Client()
    client.force_login(user)
    query = {"cohort": cohort.pk, "model_version": version.pk}

    load_s, loaded = timed(lambda: load_frame([cohort], version))
    options = AnalysisParameters(cohort_ids=(cohort.pk,), model_version_id=version.pk).options(
        synthetic=True
    )
    bare_s, _ = timed(
        lambda: run_full_analysis(loaded.frame, options=options, slices=loaded.slices)
    )
    first, first_sections, first_states = open_sections(client, query)
    cached, cached_sections, cached_states = open_sections(client, query)
    patients[0].overall_survival_days += 1
    patients[0].save()
    changed, _, changed_states = open_sections(client, query)
    report_s, report = timed(lambda: client.get("/analytics/report.html", query))
    stored = sum(AnalysisCache.objects.values_list("payload_bytes", flat=True))

    print(f"{'baseline: load the frame from the database':52s} {load_s:8.3f} s")
    print(f"{'baseline: run_full_analysis on it, called directly':52s} {bare_s:8.3f} s")
    print(f"{'first open, 5 sections (' + '/'.join(sorted(first_states)) + ')':52s} {first:8.3f} s")
    for section in SECTIONS:
        print(
            f"  {section:50s} {first_sections[section]:8.3f} s   cached "
            f"{cached_sections[section]:7.3f} s"
        )
    states = "/".join(sorted(cached_states))
    print(f"{'cached open, 5 sections (' + states + ')':52s} {cached:8.3f} s")
    states = "/".join(sorted(changed_states))
    print(f"{'after a patient changed, 5 sections (' + states + ')':52s} {changed:8.3f} s")
    print(
        f"{'HTML report from the cache':52s} {report_s:8.3f} s ({len(report.content) / 1e6:.1f} MB)"
    )
    print(f"{'cache rows stored':52s} {stored / 1e6:8.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[661, 10_000])
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")
    setup_test_environment()
    settings.ALLOWED_HOSTS = ["testserver"]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Computed within the request here (a deployment hands selections above 2,000 patients to
    # a cpu worker): the time is the same, only where it is spent differs.
    settings.PMPD_ANALYTICS_INLINE_MAX = 10**9
    if connection.vendor == "postgresql":  # beside, not over, a test run's database
        settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = "test_pmpd_bench_dashboard"
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        print(f"database: {connection.vendor}; {os.cpu_count()} CPU(s) visible")
        # The first request of a process imports every app's URLs (and what they import):
        # paid once per worker process, not per dashboard, so it is kept out of the timings.
        seconds, _ = timed(lambda: resolve("/analytics/"))
        print(f"URLconf import (first request of a process): {seconds:.1f} s")
        for size in arguments.sizes:
            run(size)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
