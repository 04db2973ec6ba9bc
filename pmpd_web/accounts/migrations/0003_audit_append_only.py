"""On PostgreSQL, refuse UPDATE and DELETE of audit events at the database itself."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION pmpd_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'The audit trail cannot be edited';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER pmpd_audit_append_only BEFORE UPDATE OR DELETE ON accounts_auditevent
    FOR EACH ROW EXECUTE FUNCTION pmpd_audit_append_only();
"""
DROP = """
DROP TRIGGER IF EXISTS pmpd_audit_append_only ON accounts_auditevent;
DROP FUNCTION IF EXISTS pmpd_audit_append_only();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
