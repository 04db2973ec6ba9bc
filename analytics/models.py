"""Computed analyses, kept so that a dashboard opens at once the second time."""

from __future__ import annotations

from django.db import models


class AnalysisCache(models.Model):
    """One computed piece of an analysis (a full analysis, a Cox model, a section's figures).

    ``scope`` identifies what was asked (the kind, the model version, the cohorts and the
    parameters); ``data_key`` the data it was computed from (see
    :func:`analytics.loaders.fingerprint`). A row is used only while its ``data_key`` matches
    the data as they are now; recomputing replaces it, so a scope holds one row, and the first
    computation after a data change deletes every row of the same ``selection`` (model version
    and cohorts) computed from the old data. The payload is a compressed pickle of result
    objects this platform computed itself.
    """

    scope = models.CharField(max_length=64, unique=True)
    selection = models.CharField(
        max_length=64, db_index=True, help_text="Hash of the model version and the cohorts"
    )
    kind = models.CharField(max_length=40)
    data_key = models.CharField(max_length=64)
    model_version = models.ForeignKey(
        "inference.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    cohort_ids = models.JSONField(default=list)
    payload = models.BinaryField()
    payload_bytes = models.PositiveIntegerField(default=0)
    compute_seconds = models.FloatField(default=0.0)
    hits = models.PositiveIntegerField(default=0)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-computed_at"]
        verbose_name_plural = "analysis cache entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.scope[:12]} ({self.payload_bytes} bytes)"
