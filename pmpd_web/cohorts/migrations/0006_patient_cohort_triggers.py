"""Patient.cohort checked by statement-level triggers instead of a per-row foreign key.

PostgreSQL checks a foreign key once per row: Django's deferred constraint ran one query per
new patient at the COMMIT, 40 ms of a 10,000-row import of 180 ms. The triggers below
check each statement's rows in one join instead, and keep the guarantee of the foreign key
under READ COMMITTED (the isolation level of Django and of the platform):

- a patient inserted, or updated, must name an existing cohort; the cohorts named are locked
  FOR KEY SHARE as a foreign key locks them, so a concurrent DELETE of one waits for this
  transaction and then finds its patients (and a patient inserted after a concurrent DELETE
  of its cohort waits for it and then finds no cohort);
- a cohort that patients reference cannot be deleted, change its id, or be truncated alone.

Each refusal raises SQLSTATE 23503 (foreign_key_violation), which Django raises as an
IntegrityError, and names the cohort. The triggers are PostgreSQL's only: on SQLite (the
embedded default of ``make demo``) this migration only drops the foreign key with the
field's ``db_constraint=False``; Django still deletes a cohort's patients with it there, in
Python, as on PostgreSQL.
"""

import django.db.models.deletion
from django.db import migrations, models

CREATE = """
-- The refusal, worded as PostgreSQL words a foreign key's (the same DETAIL line).
CREATE OR REPLACE FUNCTION pmpd_patient_cohort_refused(
    on_table text, message text, detail text
) RETURNS void AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = message, DETAIL = detail,
        ERRCODE = 'foreign_key_violation', TABLE = on_table,
        CONSTRAINT = 'pmpd_patient_cohort';
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION pmpd_patient_cohort_exists() RETURNS trigger AS $$
DECLARE
    wanted bigint[];
    locked integer;
    missing bigint;
BEGIN
    SELECT array_agg(DISTINCT cohort_id) INTO wanted FROM new_rows;
    IF wanted IS NULL THEN
        RETURN NULL;  -- no row (cohort_id is NOT NULL)
    END IF;
    -- Locked as a foreign key locks them: a concurrent DELETE of one waits for this
    -- transaction.
    SELECT count(*) INTO locked FROM (
        SELECT 1 FROM cohorts_cohort WHERE id = ANY (wanted) FOR KEY SHARE
    ) AS cohorts;
    IF locked < cardinality(wanted) THEN
        SELECT w INTO missing FROM unnest(wanted) AS w
            WHERE NOT EXISTS (SELECT 1 FROM cohorts_cohort AS c WHERE c.id = w) LIMIT 1;
        PERFORM pmpd_patient_cohort_refused(
            'cohorts_patient',
            format('insert or update on table "cohorts_patient" violates its reference to '
                '"cohorts_cohort": cohort %s does not exist', missing),
            format('Key (cohort_id)=(%s) is not present in table "cohorts_cohort".', missing)
        );
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION pmpd_cohort_not_referenced() RETURNS trigger AS $$
DECLARE
    referenced bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- After the statement: a TRUNCATE of both tables together leaves no patient.
        SELECT cohort_id INTO referenced FROM cohorts_patient LIMIT 1;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT o.id INTO referenced FROM old_rows AS o
            WHERE EXISTS (SELECT 1 FROM cohorts_patient AS p WHERE p.cohort_id = o.id) LIMIT 1;
    ELSE  -- UPDATE: an id that patients reference must not disappear
        SELECT o.id INTO referenced FROM old_rows AS o
            WHERE NOT EXISTS (SELECT 1 FROM new_rows AS n WHERE n.id = o.id)
                AND EXISTS (SELECT 1 FROM cohorts_patient AS p WHERE p.cohort_id = o.id)
            LIMIT 1;
    END IF;
    IF FOUND THEN
        PERFORM pmpd_patient_cohort_refused(
            'cohorts_cohort',
            format('%s on table "cohorts_cohort" violates the reference from '
                '"cohorts_patient": cohort %s still has patients', lower(TG_OP), referenced),
            format('Key (id)=(%s) is still referenced from table "cohorts_patient".', referenced)
        );
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER pmpd_patient_cohort_insert AFTER INSERT ON cohorts_patient
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pmpd_patient_cohort_exists();
-- A trigger with transition tables cannot name columns (UPDATE OF cohort_id): every UPDATE
-- of patients is checked; the distinct cohorts of its rows are one hash aggregate.
CREATE TRIGGER pmpd_patient_cohort_update AFTER UPDATE ON cohorts_patient
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pmpd_patient_cohort_exists();
CREATE TRIGGER pmpd_cohort_delete AFTER DELETE ON cohorts_cohort
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pmpd_cohort_not_referenced();
CREATE TRIGGER pmpd_cohort_update AFTER UPDATE ON cohorts_cohort
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pmpd_cohort_not_referenced();
CREATE TRIGGER pmpd_cohort_truncate AFTER TRUNCATE ON cohorts_cohort
    FOR EACH STATEMENT EXECUTE FUNCTION pmpd_cohort_not_referenced();
"""
DROP = """
DROP TRIGGER IF EXISTS pmpd_patient_cohort_insert ON cohorts_patient;
DROP TRIGGER IF EXISTS pmpd_patient_cohort_update ON cohorts_patient;
DROP TRIGGER IF EXISTS pmpd_cohort_delete ON cohorts_cohort;
DROP TRIGGER IF EXISTS pmpd_cohort_update ON cohorts_cohort;
DROP TRIGGER IF EXISTS pmpd_cohort_truncate ON cohorts_cohort;
DROP FUNCTION IF EXISTS pmpd_patient_cohort_exists();
DROP FUNCTION IF EXISTS pmpd_cohort_not_referenced();
DROP FUNCTION IF EXISTS pmpd_patient_cohort_refused(text, text, text);
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("cohorts", "0005_patient_import_speed")]

    operations = [
        migrations.AlterField(
            model_name="patient",
            name="cohort",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="patients",
                to="cohorts.cohort",
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
