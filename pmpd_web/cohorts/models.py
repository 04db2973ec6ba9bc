"""Cohorts and their patients' clinical variables (pseudonymised: a study ID, never a name)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Now

from . import vocabulary as v
from .rules import SITE_FIELDS, check_patient


def _choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(value, v.label(value)) for value in values]


class Cohort(models.Model):
    class Role(models.TextChoices):
        DEVELOPMENT = "development", "Development (cross-validation)"
        INTERNAL_TEST = "internal_test", "Internal test"
        EXTERNAL_VALIDATION = "external_validation", "External validation"

    name = models.CharField(max_length=120, unique=True)
    description = models.TextField(blank=True)
    role = models.CharField(max_length=24, choices=Role.choices, default=Role.DEVELOPMENT)
    centres = models.CharField(
        max_length=300, blank=True, help_text="Participating centres, comma-separated"
    )
    is_synthetic = models.BooleanField(
        default=False, help_text="Generated data (phantom): every page says so"
    )
    data_version = models.PositiveIntegerField(
        default=0, help_text="Bumped by every change of the clinical table; keys caches"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def centre_list(self) -> list[str]:
        return [c.strip() for c in self.centres.split(",") if c.strip()]

    def bump_data_version(self) -> None:
        Cohort.objects.filter(pk=self.pk).update(data_version=models.F("data_version") + 1)
        self.refresh_from_db(fields=["data_version"])


class ByteOrderCharField(models.CharField):
    """A CharField that PostgreSQL compares and sorts byte by byte (``COLLATE "C"``) rather
    than in the database's collation (C.UTF-8, which PostgreSQL 15 compares through strcoll,
    and sorts without abbreviated keys): 3% of the import's COPY, which fills the unique
    (cohort, study ID) index. Only for ASCII text, where C and C.UTF-8 order alike: nothing sorts
    differently. SQLite (the embedded default) compares bytes already (BINARY) and knows no
    collation named "C", so the field keeps its default there (``db_collation="C"`` would
    fail its migration)."""

    def db_parameters(self, connection):
        parameters = super().db_parameters(connection)
        if connection.vendor == "postgresql":
            parameters["collation"] = "C"
        return parameters


class Patient(models.Model):
    # No index of its own: the unique (cohort, study ID) index serves every lookup by cohort,
    # and one index less is one less to fill per imported row.
    # No foreign-key constraint either: PostgreSQL checks a foreign key once per row (a
    # deferred check, one query per row at the COMMIT: 40 ms of a 10,000-row import). The
    # database still enforces the reference, by statement-level triggers (migration 0006)
    # that check each statement's rows in one join: a patient's cohort must exist (and is
    # locked FOR KEY SHARE, so a concurrent delete of it waits, as with a foreign key), and a
    # cohort that patients reference cannot be deleted, renumbered or truncated. That is the
    # same guarantee as the foreign key under READ COMMITTED, the isolation level of Django
    # and of the platform. Django still deletes a cohort's patients with it (CASCADE, done
    # by Django before the cohort's own DELETE).
    cohort = models.ForeignKey(
        Cohort,
        on_delete=models.CASCADE,
        related_name="patients",
        db_index=False,
        db_constraint=False,
    )
    # Letters, digits, '.', '_' and '-' (the validator, and the import's check): ASCII,
    # compared byte by byte.
    study_id = ByteOrderCharField(
        max_length=64,
        validators=[
            RegexValidator(
                v.STUDY_ID_PATTERN,
                "A study ID is a pseudonym of letters, digits, '.', '_' or '-' (max 64).",
            )
        ],
        help_text="Pseudonym, unique within the cohort; never a name",
    )
    age_at_diagnosis_years = models.PositiveSmallIntegerField(null=True, blank=True)
    sex = models.CharField(max_length=8, choices=_choices(v.SEX), blank=True)
    centre = models.CharField(max_length=120, blank=True)
    tumour_location = models.CharField(
        max_length=8, choices=_choices(v.TUMOUR_LOCATION), blank=True
    )
    tumour_size_mm = models.DecimalField(max_digits=5, decimal_places=1, null=True, blank=True)
    ct_manufacturer = models.CharField(max_length=64, blank=True)
    ca19_9_u_per_ml = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    nccn_resectability = models.CharField(
        max_length=24, choices=_choices(v.NCCN_RESECTABILITY), blank=True
    )
    # yes, no or unknown (ASCII codes: compared byte by byte in the cohort page's filters).
    metastasis_at_diagnosis = ByteOrderCharField(
        max_length=8, choices=_choices(v.YES_NO_UNKNOWN), default="unknown"
    )
    site_liver = models.BooleanField(default=False)
    site_lung = models.BooleanField(default=False)
    site_peritoneum = models.BooleanField(default=False)
    site_other = models.BooleanField(default=False)
    site_unknown = models.BooleanField(default=False)
    metastasis_detection = models.CharField(
        max_length=12, choices=_choices(v.METASTASIS_DETECTION), blank=True
    )
    overall_survival_days = models.PositiveIntegerField(null=True, blank=True)
    vital_status = models.CharField(max_length=8, choices=_choices(v.VITAL_STATUS), blank=True)
    developed_metastasis = models.CharField(max_length=4, choices=_choices(v.YES_NO), blank=True)
    days_to_metastasis = models.PositiveIntegerField(null=True, blank=True)
    study_values = models.JSONField(
        default=dict,
        # The import's COPY leaves it to this default when the file has no study variable.
        db_default={},
        blank=True,
        help_text="Values of the cohort's study-defined variables, by variable name (null or "
        "absent: no value)",
    )
    # The database's clock as default: the import's COPY leaves both out (parsing two
    # timestamps per row took a third of the COPY).
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        ordering = ["cohort_id", "study_id"]
        constraints = [
            models.UniqueConstraint(fields=["cohort", "study_id"], name="study_id_unique_in_cohort")
        ]
        # No index on (cohort, metastasis at diagnosis): the unique (cohort, study ID) index
        # finds a cohort's patients for the counts and filters as fast at 10,000 patients
        # (tests/bench/bench_import.py), and the index cost 7-9 ms of a 10,000-row import.

    def __str__(self) -> str:
        return self.study_id

    @property
    def metastasis_sites(self) -> list[str]:
        return [field.removeprefix("site_") for field in SITE_FIELDS if getattr(self, field)]

    def clean(self) -> None:
        super().clean()
        problems = check_patient({f.attname: getattr(self, f.attname) for f in self._meta.fields})
        errors: dict[str, list[str]] = {}
        for problem in problems:
            field = "site_liver" if problem.field == "metastasis_sites" else problem.field
            errors.setdefault(field, []).append(problem.message)
        if errors:
            raise ValidationError(errors)


class StudyVariable(models.Model):
    """A variable a cohort's study adds to the clinical table (REDCap's data dictionary).

    Its values live in ``Patient.study_values`` (a JSON object keyed by the variable's name)
    rather than in a value table: a patient stays one row, so the import writes it with one
    COPY, the analytics read a cohort with one query, and a cohort's variables differ from
    another's without a migration. The import checks each value against the type and range
    defined here.
    """

    class Kind(models.TextChoices):
        NUMBER = "number", "Number"
        WHOLE_NUMBER = "int", "Whole number"
        CATEGORY = "choice", "Category"
        DATE = "date", "Date (YYYY-MM-DD)"

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="study_variables")
    name = models.CharField(
        max_length=40,
        validators=[
            RegexValidator(
                r"^[a-z][a-z0-9_]{0,39}$",
                "A variable name is lower-case letters, digits and '_', starting with a letter "
                "(the column name in the table; e.g. ecog_performance_status).",
            )
        ],
    )
    label = models.CharField(max_length=120, help_text="How the variable reads in tables")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    unit = models.CharField(max_length=24, blank=True)
    minimum = models.FloatField(null=True, blank=True, help_text="Smallest allowed value")
    maximum = models.FloatField(null=True, blank=True, help_text="Largest allowed value")
    choices = models.JSONField(
        default=list, blank=True, help_text="Allowed values of a category (codes)"
    )
    required = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cohort_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cohort", "name"], name="study_variable_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.cohort})"

    def clean(self) -> None:
        super().clean()
        from .table import COLUMN_NAMES
        from .vocabulary import DERIVED_NAMES

        errors: dict[str, str] = {}
        if self.name in COLUMN_NAMES or self.name in DERIVED_NAMES:
            errors["name"] = f"{self.name} is already a variable of the platform"
        if self.kind == self.Kind.CATEGORY:
            codes = [str(c).strip() for c in self.choices or [] if str(c).strip()]
            if len(codes) < 2:
                errors["choices"] = "a category needs at least two allowed values"
            elif any(not re.fullmatch(r"[a-z0-9][a-z0-9_]{0,39}", c) for c in codes):
                errors["choices"] = (
                    "allowed values are codes: lower-case letters, digits and '_' (e.g. 0, 1, "
                    "2 or adjuvant, none)"
                )
            self.choices = codes
        elif self.choices:
            errors["choices"] = "only a category has allowed values"
        if self.kind in {self.Kind.CATEGORY, self.Kind.DATE} and (
            self.minimum is not None or self.maximum is not None
        ):
            errors["minimum"] = "only numbers have a range"
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            errors["maximum"] = "must be at least the minimum"
        if errors:
            raise ValidationError(errors)

    def column(self):
        """This variable as a column of the clinical table."""
        from .table import study_column

        return study_column(
            name=self.name,
            label=self.label,
            kind=self.kind,
            unit=self.unit,
            minimum=self.minimum,
            maximum=self.maximum,
            choices=self.choices,
            required=self.required,
        )


def table_columns(cohort: Cohort, variables: Iterable[StudyVariable] | None = None) -> tuple:
    """The template's columns followed by the cohort's study-defined variables (``variables``
    when the caller has read them already)."""
    from .table import COLUMNS

    if variables is None:
        variables = cohort.study_variables.all()
    return (*COLUMNS, *(variable.column() for variable in variables))


def _import_path(instance: TableImport, filename: str) -> str:
    # The uploaded name is never used as a path: only kept as a label.
    return f"imports/cohort-{instance.cohort_id}/{instance.sha256}.bin"


class TableImport(models.Model):
    """An uploaded clinical table: its preview (dry run) and, once committed, its outcome."""

    class Status(models.TextChoices):
        PREVIEWING = "previewing", "Being checked"
        PREVIEWED = "previewed", "Previewed"
        INVALID = "invalid", "Has problems"
        COMMITTING = "committing", "Importing"
        COMMITTED = "committed", "Imported"
        FAILED = "failed", "Failed"

    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="imports")
    uploaded_by = models.ForeignKey(
        "auth.User", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    original_filename = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    file = models.FileField(upload_to=_import_path)
    size_bytes = models.PositiveBigIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices)
    summary = models.JSONField(default=dict, blank=True)
    problems = models.JSONField(default=list, blank=True)
    job = models.OneToOneField(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="table_import"
    )
    # On PostgreSQL the rows formatted as the commit's COPY takes them (importer.CopyPayload),
    # elsewhere the checked rows and the plan as NumPy arrays (table.pack_checked); never a
    # pickle.
    checked = models.BinaryField(
        null=True,
        blank=True,
        editable=False,
        help_text="The preview's checked rows (compressed): the commit writes them as they are "
        "while the file and the cohort are unchanged",
    )
    checked_against = models.CharField(
        max_length=64,
        blank=True,
        help_text="The state of the cohort the preview was checked against",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.original_filename} into {self.cohort}"
