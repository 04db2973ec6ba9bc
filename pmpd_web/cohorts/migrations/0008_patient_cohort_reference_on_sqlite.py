"""Patient.cohort enforced on SQLite too (the embedded default of ``make demo``).

Migration 0006 replaced the foreign key of a patient's cohort by statement-level triggers on
PostgreSQL and left SQLite without a check. SQLite has no statement-level triggers; its
row-level ones cost little there, so:

- a patient inserted, or moved to another cohort, must name an existing cohort (refused with
  SQLite's constraint error, which Django raises as IntegrityError);
- a cohort deleted takes its remaining patients with it, as ON DELETE CASCADE would (Django
  deletes them first anyway; ``manage.py flush`` empties the cohorts before the patients),
  and the foreign keys to those patients are still checked at the commit;
- a cohort whose id changes while patients reference it is refused.

SQLite loses a table's triggers when Django rebuilds the table for a later schema change:
``tests/cohorts/test_patient_collation.py`` migrates an embedded SQLite database and checks
that these triggers are there and work.
"""

from django.db import migrations

CREATE = [
    """
    CREATE TRIGGER IF NOT EXISTS pmpd_patient_cohort_insert BEFORE INSERT ON cohorts_patient
    WHEN NOT EXISTS (SELECT 1 FROM cohorts_cohort WHERE id = NEW.cohort_id)
    BEGIN
        SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: the patient''s cohort does not exist');
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS pmpd_patient_cohort_update
    BEFORE UPDATE OF cohort_id ON cohorts_patient
    WHEN NOT EXISTS (SELECT 1 FROM cohorts_cohort WHERE id = NEW.cohort_id)
    BEGIN
        SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: the patient''s cohort does not exist');
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS pmpd_cohort_delete AFTER DELETE ON cohorts_cohort
    BEGIN
        DELETE FROM cohorts_patient WHERE cohort_id = OLD.id;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS pmpd_cohort_update BEFORE UPDATE OF id ON cohorts_cohort
    WHEN NEW.id <> OLD.id AND EXISTS (SELECT 1 FROM cohorts_patient WHERE cohort_id = OLD.id)
    BEGIN
        SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: the cohort still has patients');
    END
    """,
]
DROP = [
    f"DROP TRIGGER IF EXISTS {name}"
    for name in (
        "pmpd_patient_cohort_insert",
        "pmpd_patient_cohort_update",
        "pmpd_cohort_delete",
        "pmpd_cohort_update",
    )
]


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for statement in CREATE:
            schema_editor.execute(statement, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for statement in DROP:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [("cohorts", "0007_patient_byte_order_collation")]

    operations = [migrations.RunPython(forwards, backwards)]
