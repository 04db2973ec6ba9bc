"""Segmentation model versions: nnU-Net v2 models trained on a cohort's approved masks or
imported from elsewhere, with their card; imported by ``inference.models``."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class SegmentationModelVersion(models.Model):
    """An nnU-Net v2 results folder (stored as a ZIP) and its card: labels, configuration,
    folds, Dice per label per fold from nnU-Net's validation, training cohort, versions."""

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    class Origin(models.TextChoices):
        TRAINED = "trained", "Trained on this platform"
        IMPORTED = "imported", "Imported (trained elsewhere)"

    cohort = models.ForeignKey(
        "cohorts.Cohort", on_delete=models.CASCADE, related_name="segmentation_models"
    )
    name = models.CharField(max_length=120)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.TRAINING)
    origin = models.CharField(max_length=12, choices=Origin.choices)
    is_active = models.BooleanField(
        default=False, help_text="The model the cohort's segmentation jobs predict with"
    )
    is_synthetic = models.BooleanField(default=False)
    results_zip = models.FileField(max_length=300, blank=True)
    configuration = models.CharField(max_length=32, default="2d")
    folds = models.JSONField(default=list)
    # No tumour key: a pancreas-only model (``segments_tumour``).
    label_of_class = models.JSONField(
        default=dict, help_text="The model's label value of pancreas and of tumour"
    )
    card = models.JSONField(default=dict, blank=True)
    job = models.OneToOneField(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["cohort", "name"], name="one_segmentation_name"),
            models.UniqueConstraint(
                fields=["cohort"],
                condition=models.Q(is_active=True),
                name="one_active_segmentation_model_per_cohort",
            ),
        ]

    def __str__(self) -> str:
        return f"nnU-Net model '{self.name}'"

    @property
    def segments_tumour(self) -> bool:
        """False for a pancreas-only model: its masks have no tumour; readers draw it."""
        return "tumour" in self.label_of_class

    @property
    def provenance_label(self) -> str:
        """What an automatic mask version says it came from."""
        return f"nnU-Net model '{self.name}' (#{self.pk})"
