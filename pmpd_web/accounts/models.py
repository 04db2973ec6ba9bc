"""Per-cohort memberships with roles, and the append-only audit trail."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import models


def acting_user(user: Any) -> Any:
    """The user to record as the one who did something: ``None`` for an anonymous request, a
    management command or the demo (no signed-in user)."""
    return user if getattr(user, "is_authenticated", False) else None


class Role(models.TextChoices):
    COORDINATOR = "coordinator", "Study coordinator"
    CLINICIAN = "clinician", "Clinician"
    STATISTICIAN = "statistician", "Statistician"
    READER = "reader", "Reader (radiologist: views and annotates images)"


class Membership(models.Model):
    """A user's role in one cohort: the only way to see a cohort's data."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    cohort = models.ForeignKey(
        "cohorts.Cohort", on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "cohort"], name="one_role_per_user_and_cohort")
        ]
        ordering = ["cohort_id", "user_id"]

    def __str__(self) -> str:
        return f"{self.user} as {self.get_role_display()} in {self.cohort}"


class AuditAction(models.TextChoices):
    VIEW_PATIENT = "view_patient", "Viewed patient"
    CHANGE_PATIENT = "change_patient", "Changed patient"
    VIEW_COHORT = "view_cohort", "Viewed cohort"
    CREATE_COHORT = "create_cohort", "Created cohort"
    CHANGE_COHORT = "change_cohort", "Changed cohort"
    IMPORT_PREVIEW = "import_preview", "Previewed table import"
    IMPORT_COMMIT = "import_commit", "Imported table"
    EXPORT_TABLE = "export_table", "Exported table"
    DOWNLOAD_TEMPLATE = "download_template", "Downloaded template"
    INGEST_IMAGES = "ingest_images", "Uploaded images"
    SELECT_SERIES = "select_series", "Changed the CT series pick"
    START_TRAINING = "start_training", "Started model training"
    START_SCORING = "start_scoring", "Started scoring"
    ACTIVATE_MODEL_VERSION = "activate_model_version", "Activated a model version"
    LOGIN = "login", "Logged in"
    LOGOUT = "logout", "Logged out"
    LOGIN_FAILED = "login_failed", "Failed login"
    LOGIN_LOCKED_OUT = "login_locked_out", "Locked out after failed logins"
    LOGIN_UNLOCKED = "login_unlocked", "Unlocked logins"
    PASSWORD_CHANGE = "password_change", "Changed password"
    CREATE_API_TOKEN = "create_api_token", "Created an API token"
    REVOKE_API_TOKEN = "revoke_api_token", "Revoked an API token"
    STORE_MASK_VERSION = "store_mask_version", "Stored a mask version"
    APPROVE_MASK_VERSION = "approve_mask_version", "Approved a mask version"
    REJECT_MASK_VERSION = "reject_mask_version", "Rejected a mask version"
    START_SEGMENTATION_TRAINING = "start_segmentation_training", "Started segmentation training"
    IMPORT_SEGMENTATION_MODEL = "import_segmentation_model", "Imported a segmentation model"
    START_SEGMENTATION = "start_segmentation", "Started automatic segmentation"
    SEGMENTATION_MODEL_READY = "segmentation_model_ready", "Segmentation model trained"


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):  # noqa: ARG002 - the audit trail is append-only
        raise PermissionDenied("The audit trail cannot be edited.")

    def delete(self):
        raise PermissionDenied("The audit trail cannot be edited.")


class AuditEvent(models.Model):
    """Who viewed or changed which patient, who imported or exported what, and when.

    Append-only: saving an existing row, updating or deleting raises. On PostgreSQL a trigger
    (migration 0002) refuses UPDATE and DELETE at the database too.
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    # No database constraints and no cascades: deleting a user, cohort or patient never
    # touches the trail, which keeps the ids they had.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    username = models.CharField(max_length=150, help_text="Kept when the user is deleted")
    action = models.CharField(max_length=32, choices=AuditAction.choices, db_index=True)
    cohort = models.ForeignKey(
        "cohorts.Cohort",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    patient = models.ForeignKey(
        "cohorts.Patient",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    object_label = models.CharField(max_length=200, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.username} {self.action} {self.object_label}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionDenied("The audit trail cannot be edited.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionDenied("The audit trail cannot be edited.")


class ApiToken(models.Model):
    """A user's key for the API and DICOMweb (``Authorization: Token <key>``).

    Only the key's SHA-256 digest is stored: the key itself is shown once, when it is made. A
    key is 256 random bits, so a fast digest suffices (nothing to guess from a dictionary).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=80, help_text="What the token is for, e.g. 'notebook'")
    key_digest = models.CharField(max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(
        max_length=12, editable=False, help_text="The key's first characters, to recognise it"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}...) of {self.user}"
