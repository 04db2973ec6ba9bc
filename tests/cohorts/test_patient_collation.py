"""Study IDs (and metastasis at diagnosis) compared byte by byte on PostgreSQL (COLLATE "C"),
for a cheaper import; nothing sorts differently, and SQLite keeps its default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from factories import make_patient

from pmpd_web.cohorts.models import ByteOrderCharField, Patient

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's collation")
def test_the_columns_compare_byte_by_byte_on_postgresql():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, collation_name FROM information_schema.columns "
            "WHERE table_name = 'cohorts_patient' AND collation_name IS NOT NULL"
        )
        collations = dict(cursor.fetchall())
    assert collations == {"study_id": "C", "metastasis_at_diagnosis": "C"}


@pytest.mark.django_db
def test_study_ids_sort_as_before_byte_by_byte(cohort):
    """Every kind of character a study ID may hold: the database's order is their byte order,
    as the C.UTF-8 of the development database ordered them (and Python's sorted())."""
    ids = ["b-2", "B-10", "a.1", "A_3", "0x", "Z-9", "a-1", "a1", "a_1", "9.9", "B-1"]
    for study_id in ids:
        make_patient(cohort, study_id)
    assert list(Patient.objects.values_list("study_id", flat=True)) == sorted(ids)
    assert list(
        Patient.objects.filter(study_id__icontains="b-1").values_list("study_id", flat=True)
    ) == ["B-1", "B-10"]


def test_the_field_has_no_collation_on_sqlite():
    """SQLite knows no collation named "C" (a ``db_collation="C"`` failed its migration):
    the field keeps SQLite's default there, which compares bytes already."""
    from django.db.backends.sqlite3.base import DatabaseWrapper

    sqlite = DatabaseWrapper({"NAME": ":memory:"}, alias="sqlite")
    field = ByteOrderCharField(max_length=8)
    assert field.db_parameters(sqlite)["collation"] is None
    assert field.db_parameters(connection)["collation"] == (
        "C" if connection.vendor == "postgresql" else None
    )


@pytest.mark.slow
def test_the_embedded_sqlite_database_migrates(tmp_path):
    """``make demo``'s default database: the migrations of the import's speed (no foreign
    key, triggers and collation on PostgreSQL only) apply on SQLite."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PMPD_"))}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'pmpd.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
