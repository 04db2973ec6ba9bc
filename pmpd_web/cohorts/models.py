"""Cohorts and their patients' clinical variables (pseudonymised: a study ID, never a name)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

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


class Patient(models.Model):
    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, related_name="patients")
    study_id = models.CharField(
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
    metastasis_at_diagnosis = models.CharField(
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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cohort_id", "study_id"]
        constraints = [
            models.UniqueConstraint(fields=["cohort", "study_id"], name="study_id_unique_in_cohort")
        ]
        indexes = [models.Index(fields=["cohort", "metastasis_at_diagnosis"])]

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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.original_filename} into {self.cohort}"
