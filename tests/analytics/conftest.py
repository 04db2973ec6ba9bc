"""Fixtures of the analytics shell tests: a cohort scored by a model version."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture
def scored(cohort):
    """80 synthetic-valued patients of ``cohort`` scored by a model version (the cohort itself
    is not flagged synthetic, so the pages must not say so)."""
    from scored import make_model_version, make_scored_cohort

    version = make_model_version()
    patients = make_scored_cohort(cohort, version, 80)
    return SimpleNamespace(
        cohort=cohort,
        version=version,
        patients=patients,
        query={"cohort": cohort.pk, "model_version": version.pk},
    )
