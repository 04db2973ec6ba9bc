"""Study IDs (and metastasis at diagnosis) compared byte by byte on PostgreSQL (COLLATE "C"),
for a cheaper import; nothing sorts differently, and SQLite keeps its default."""

from __future__ import annotations

import os
import sqlite3
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
def test_the_embedded_sqlite_database_migrates_and_keeps_the_patients_cohort(tmp_path):
    """``make demo``'s default database: the migrations of the import's speed (no foreign
    key, statement-level triggers and collation on PostgreSQL only) apply on SQLite, and
    SQLite's own triggers keep a patient's cohort there (a later migration that rebuilds a
    table would drop them: this test says so)."""
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
    database = sqlite3.connect(tmp_path / "pmpd.sqlite3")
    triggers = {
        row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    assert {
        "pmpd_patient_cohort_insert",
        "pmpd_patient_cohort_update",
        "pmpd_cohort_delete",
        "pmpd_cohort_update",
    } <= triggers

    def row(table: str, **values) -> None:
        """A row of ``table`` with ``values`` and a blank or zero in every other required
        column (the test does not depend on them)."""
        for _, name, kind, required, default, key in database.execute(
            f"PRAGMA table_info({table})"
        ):
            if required and default is None and not key and name not in values:
                values[name] = 0 if kind.lower().startswith(("int", "bool", "real")) else ""
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        database.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(values.values()))

    with database:
        row("cohorts_cohort", id=1, name="A")
        row("cohorts_cohort", id=2, name="B")
    with pytest.raises(sqlite3.IntegrityError, match="cohort does not exist"), database:
        row("cohorts_patient", cohort_id=9, study_id="P-9")
    with database:
        row("cohorts_patient", cohort_id=1, study_id="P-1")
        row("cohorts_patient", cohort_id=2, study_id="P-2")
    with pytest.raises(sqlite3.IntegrityError, match="cohort does not exist"), database:
        database.execute("UPDATE cohorts_patient SET cohort_id = 9 WHERE study_id = 'P-1'")
    with pytest.raises(sqlite3.IntegrityError, match="still has patients"), database:
        database.execute("UPDATE cohorts_cohort SET id = 7 WHERE id = 1")
    with database:
        database.execute("DELETE FROM cohorts_cohort WHERE id = 1")
    assert [row[0] for row in database.execute("SELECT study_id FROM cohorts_patient")] == ["P-2"]
