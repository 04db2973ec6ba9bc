"""The PMPD engine's records: model versions (registry), the preprocessing cache, and patient
predictions.

Every computed row records where it came from (model version, input hash, code version), and a
re-run updates it, never duplicates it (unique constraints; upserts).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class ModelVersion(models.Model):
    """A trained PMPD model: five fold checkpoints, their thresholds and model cards."""

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        RETIRED = "retired", "Retired"

    name = models.CharField(max_length=120, unique=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.TRAINING)
    is_active = models.BooleanField(
        default=False, help_text="The version whose scores clinicians see by default"
    )
    trained_on = models.ForeignKey(
        "cohorts.Cohort",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="model_versions",
    )
    is_synthetic = models.BooleanField(
        default=False, help_text="Trained on synthetic data: every page showing it says so"
    )
    config = models.JSONField(default=dict, help_text="Training and preprocessing configuration")
    card = models.JSONField(
        default=dict, help_text="Model card: data hash, code version, metrics, per-fold details"
    )
    thresholds = models.JSONField(
        default=list, help_text="Per fold: slice and patient thresholds (Youden on its fold)"
    )
    metrics = models.JSONField(default=dict, help_text="Out-of-fold cross-validation metrics")
    operating_point = models.JSONField(
        default=dict,
        blank=True,
        help_text="The locked operating point (analytics.stats.OperatingPoint): per-fold "
        "thresholds, the rule and the MRS cut-point, fixed at training",
    )
    files = models.JSONField(default=list, help_text="Storage names of the fold checkpoints")
    data_hash = models.CharField(max_length=64, blank=True)
    code_version = models.CharField(max_length=64, blank=True)
    job = models.OneToOneField(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_version"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="one_active_model_version"
            )
        ]

    def __str__(self) -> str:
        return self.name


class PreprocessedPatient(models.Model):
    """The preprocessing cache: patches of a patient's canonical CT and mask, keyed by the
    hash of the inputs and the preprocessing configuration."""

    patient = models.ForeignKey(
        "cohorts.Patient", on_delete=models.CASCADE, related_name="preprocessed"
    )
    input_hash = models.CharField(max_length=64)
    file = models.FileField(max_length=300, help_text="NPZ: patches, slice indices")
    n_slices = models.PositiveSmallIntegerField()
    fewer_than_4_tumour_slices = models.BooleanField(default=False)
    slice_indices = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "input_hash"], name="one_cache_entry_per_input"
            )
        ]

    def __str__(self) -> str:
        return f"{self.patient} preprocessed ({self.input_hash[:12]})"


class PatientPrediction(models.Model):
    """A patient's PMPD result under one model version (unique: a re-run updates it)."""

    class Source(models.TextChoices):
        OUT_OF_FOLD = "out_of_fold", "Out-of-fold (cross-validation)"
        ENSEMBLE = "ensemble", "Five-fold ensemble"

    patient = models.ForeignKey(
        "cohorts.Patient", on_delete=models.CASCADE, related_name="predictions"
    )
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="predictions"
    )
    source = models.CharField(max_length=12, choices=Source.choices)
    fold = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Out-of-fold predictions: the fold (0-based) whose model held the patient out",
    )
    metastasis_risk_score = models.FloatField()
    mrs_std = models.FloatField(null=True, blank=True)
    mrs_min = models.FloatField(null=True, blank=True)
    mrs_max = models.FloatField(null=True, blank=True)
    mrs_per_fold = models.JSONField(default=list)
    positive_fraction = models.FloatField()
    predicted_metastasis = models.BooleanField()
    site_probabilities = models.JSONField(default=dict)
    slice_indices = models.JSONField(default=list)
    slice_probabilities = models.JSONField(default=list, help_text="[fold][slice]")
    n_slices = models.PositiveSmallIntegerField()
    fewer_than_4_tumour_slices = models.BooleanField(default=False)
    gradcam_files = models.JSONField(default=list, help_text="Storage names of overlay PNGs")
    input_hash = models.CharField(max_length=64)
    code_version = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["patient_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "model_version"], name="one_prediction_per_patient_and_model"
            )
        ]

    def __str__(self) -> str:
        return f"{self.patient} MRS {self.metastasis_risk_score:.3f} ({self.model_version})"


from .segmentation_models import SegmentationModelVersion  # noqa: E402, F401 - a model module
