"""Study IDs and metastasis at diagnosis compared byte by byte on PostgreSQL (COLLATE "C"),
not through strcoll (the database's C.UTF-8): 3% of the import's COPY, which fills the
(cohort, study ID) and (cohort, metastasis at diagnosis) indexes. Both are ASCII, where C
and C.UTF-8 order alike. PostgreSQL rebuilds the two indexes; on SQLite nothing changes (the
field has no collation there)."""

import django.core.validators
from django.db import migrations

import pmpd_web.cohorts.models


class Migration(migrations.Migration):
    dependencies = [
        ("cohorts", "0006_patient_cohort_triggers"),
    ]

    operations = [
        migrations.AlterField(
            model_name="patient",
            name="metastasis_at_diagnosis",
            field=pmpd_web.cohorts.models.ByteOrderCharField(
                choices=[("yes", "Yes"), ("no", "No"), ("unknown", "Unknown")],
                default="unknown",
                max_length=8,
            ),
        ),
        migrations.AlterField(
            model_name="patient",
            name="study_id",
            field=pmpd_web.cohorts.models.ByteOrderCharField(
                help_text="Pseudonym, unique within the cohort; never a name",
                max_length=64,
                validators=[
                    django.core.validators.RegexValidator(
                        "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                        "A study ID is a pseudonym of letters, digits, '.', '_' or '-' (max 64).",
                    )
                ],
            ),
        ),
    ]
