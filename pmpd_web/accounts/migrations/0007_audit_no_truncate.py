"""On PostgreSQL, refuse TRUNCATE of the audit trail too (0003 covers UPDATE and DELETE,
which are row triggers; TRUNCATE fires only statement-level triggers)."""

from django.db import migrations

CREATE = """
CREATE TRIGGER pmpd_audit_no_truncate BEFORE TRUNCATE ON accounts_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION pmpd_audit_append_only();
"""
DROP = "DROP TRIGGER IF EXISTS pmpd_audit_no_truncate ON accounts_auditevent;"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0006_api_tokens_and_login_audit")]
    operations = [migrations.RunPython(forwards, backwards)]
