"""The model registry: creating model versions, reading their configuration and fold models,
who sees a version, who may activate it, and activation itself.

Who sees a model version (pages and API alike): site administrators see every version; other
users see the versions trained on, or that have scored, a cohort in which their role may view
results. Within a visible version, the study IDs of its training folds are shown only to users
who may view the patients of the training cohort, and the training cohort's name only to its
members.

Who may activate a version (make it the one whose scores clinicians see by default): site
administrators, and the coordinators of the cohort it was trained on: the people who can vouch
for the data it learned from. Only a ready version can be active, and one at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction, acting_user
from pmpd_web.accounts.permissions import Action, can, visible_cohorts
from pmpd_web.cohorts.models import Cohort
from pmpd_web.jobs.runner import UserFacingError

from .models import ModelVersion, PatientPrediction
from .storage import json_safe, local_path

if TYPE_CHECKING:  # the engine imports torch: web pages load this module without it
    from inference.pmpd.preprocess import PreprocessConfig
    from inference.pmpd.train import TrainConfig

User = AbstractBaseUser | AnonymousUser

DEPTHS = (10, 18, 34, 50)
EARLY_STOPPING = (
    ("loss", "Validation loss (the paper's scale: hundreds of patients)"),
    ("auroc", "Validation slice AUROC"),
    ("none", "None: every epoch, cosine schedule to the end (small cohorts)"),
)


@dataclasses.dataclass(frozen=True)
class TrainingChoices:
    """What a coordinator chooses when starting a training; the rest keeps the engine's
    defaults (PMPD_METHOD.md), recorded in the version's configuration."""

    depth: int = 50
    input_size: int = 224
    max_epochs: int = 30
    n_folds: int = 5
    seed: int = 0
    pretrained_weights: str | None = None
    early_stopping_patience: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    rotation_angles_deg: tuple[float, ...] | None = None
    num_threads: int | None = None
    early_stopping_metric: str | None = None

    def configs(self) -> tuple[TrainConfig, PreprocessConfig]:
        """The engine configurations; ``UserFacingError`` when a value is out of range."""
        if self.depth not in DEPTHS:
            raise UserFacingError(f"ResNet depth must be one of {', '.join(map(str, DEPTHS))}.")
        if self.max_epochs < 1:
            raise UserFacingError("Train for at least one epoch.")
        if self.pretrained_weights and not Path(self.pretrained_weights).is_file():
            raise UserFacingError(f"No weights file at {self.pretrained_weights}.")
        from inference.pmpd.model import ModelConfig
        from inference.pmpd.preprocess import PreprocessConfig
        from inference.pmpd.train import TrainConfig

        optional = {
            name: value
            for name, value in (
                ("early_stopping_patience", self.early_stopping_patience),
                ("batch_size", self.batch_size),
                ("learning_rate", self.learning_rate),
                ("num_threads", self.num_threads),
                ("early_stopping_metric", self.early_stopping_metric),
            )
            if value is not None
        }
        preprocess_values: dict[str, Any] = {"input_size": self.input_size}
        if self.rotation_angles_deg is not None:
            preprocess_values["rotation_angles_deg"] = tuple(self.rotation_angles_deg)
        try:
            train = TrainConfig(
                model=ModelConfig(depth=self.depth, input_size=self.input_size),
                n_folds=self.n_folds,
                seed=self.seed,
                max_epochs=self.max_epochs,
                pretrained_weights=self.pretrained_weights or None,
                **optional,
            )
            preprocess = PreprocessConfig(**preprocess_values)
        except ValueError as exc:
            raise UserFacingError(f"Invalid training settings: {exc}.") from None
        return train, preprocess


def default_name(cohort: Cohort) -> str:
    """A unique version name from the cohort and the time."""
    base = f"PMPD {cohort.name} {timezone.localtime():%Y-%m-%d %H:%M}"
    name, number = base, 1
    while ModelVersion.objects.filter(name=name).exists():
        number += 1
        name = f"{base} ({number})"
    return name[:120]


def new_model_version(
    cohort: Cohort,
    *,
    name: str,
    user: Any,
    train_config: TrainConfig,
    preprocess_config: PreprocessConfig,
    job: Any = None,
) -> ModelVersion:
    """A version in status "training" that records everything its training will use."""
    if train_config.model.input_size != preprocess_config.input_size:
        raise UserFacingError("The network input size and the patch size must be the same.")
    if ModelVersion.objects.filter(name=name).exists():
        raise UserFacingError(f"A model version named {name!r} exists; choose another name.")
    return ModelVersion.objects.create(
        name=name,
        trained_on=cohort,
        is_synthetic=cohort.is_synthetic,
        config=json_safe(
            {
                "train": train_config.to_dict(),
                "preprocess": preprocess_config.to_dict(),
                "predict": {"patient_call_rule": "fold_majority"},
            }
        ),
        created_by=acting_user(user),
        job=job,
    )


def train_config_of(version: ModelVersion) -> TrainConfig:
    from inference.pmpd.model import ModelConfig
    from inference.pmpd.train import TrainConfig

    values = dict(version.config["train"])
    values["model"] = ModelConfig.from_dict(values["model"])
    return TrainConfig(**values)


def preprocess_config_of(version: ModelVersion) -> PreprocessConfig:
    from inference.pmpd.preprocess import PreprocessConfig

    return PreprocessConfig.from_dict(version.config["preprocess"])


def patient_call_rule_of(version: ModelVersion) -> str:
    return version.config.get("predict", {}).get("patient_call_rule", "fold_majority")


# Fold models stay loaded in the worker between tasks of the same version (five ResNet50 are
# about 0.5 GB): only the last version used is kept.
_loaded: dict[tuple[Any, ...], list[Any]] = {}


def fold_models_of(version: ModelVersion) -> list[Any]:
    """The version's fold models (``inference.pmpd.FoldModel``), loaded from storage once per
    worker process."""
    from inference.pmpd.predict import load_fold_models

    if not version.files:
        raise UserFacingError(f"{version.name} has no fold checkpoints to score with.")
    key = (version.pk, tuple(version.files))
    if key not in _loaded:
        _loaded.clear()
        try:
            with contextlib.ExitStack() as stack:
                paths = [stack.enter_context(local_path(name)) for name in version.files]
                _loaded[key] = load_fold_models(paths)
        except FileNotFoundError:
            raise UserFacingError(
                f"The fold checkpoints of {version.name} are missing from storage; train the "
                "version again."
            ) from None
    return _loaded[key]


# ----------------------------------------------------------------------------------------------
# Permissions


def visible_model_versions(
    user: User, queryset: QuerySet[ModelVersion] | None = None
) -> QuerySet[ModelVersion]:
    """The versions ``user`` may see (see the module's docstring)."""
    queryset = ModelVersion.objects.all() if queryset is None else queryset
    if not user.is_authenticated or not user.is_active:
        return queryset.none()
    if user.is_superuser:
        return queryset
    cohorts = visible_cohorts(user, Cohort.objects.all(), Action.VIEW_RESULTS).values("pk")
    scored_there = PatientPrediction.objects.filter(
        model_version=OuterRef("pk"), patient__cohort__in=cohorts
    )
    return queryset.filter(Q(trained_on__in=cohorts) | Q(Exists(scored_there)))


def can_view_version(user: User, version: ModelVersion) -> bool:
    return visible_model_versions(user, ModelVersion.objects.filter(pk=version.pk)).exists()


def model_version_for(user: User, version_id: Any, *, api: bool = False) -> ModelVersion:
    """The model version ``version_id`` (a number or its text) if ``user`` may see it, by the
    rule of /api/model-versions/<id>/; else 404 (DRF's ``NotFound`` for the API), whether the
    version does not exist or belongs to cohorts the user cannot see: every page and endpoint
    that takes a model version id from a user resolves it here."""
    text = str(version_id).strip()
    version = (
        visible_model_versions(user, ModelVersion.objects.filter(pk=int(text)))
        .select_related("trained_on", "job")
        .first()
        if text.isdigit()
        else None
    )
    if version is None:
        if api:
            from rest_framework.exceptions import NotFound

            raise NotFound("No such model version.")
        raise Http404("No such model version.")
    return version


def can_view_training_patients(user: User, version: ModelVersion) -> bool:
    return version.trained_on_id is not None and can(
        user, version.trained_on_id, Action.VIEW_PATIENTS
    )


def can_activate(user: User, version: ModelVersion) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return version.trained_on_id is not None and can(user, version.trained_on_id, Action.RUN_JOBS)


def scoring_choices(user: User) -> QuerySet[ModelVersion]:
    """Ready versions a coordinator may score with: those visible to them, and the active one."""
    ready = ModelVersion.objects.filter(status=ModelVersion.Status.READY)
    visible = visible_model_versions(user, ready).values("pk")
    return ready.filter(Q(pk__in=visible) | Q(is_active=True))


def activate(version: ModelVersion, user: Any) -> ModelVersion:
    """Make ``version`` the active one (the previous active version is deactivated)."""
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status != ModelVersion.Status.READY:
            raise UserFacingError(
                f"Only a ready model version can be activated; {locked.name} is "
                f"{locked.get_status_display().lower()}."
            )
        previous = list(
            ModelVersion.objects.select_for_update().filter(is_active=True).exclude(pk=locked.pk)
        )
        for other in previous:
            other.is_active = False
            other.save(update_fields=["is_active"])
        locked.is_active = True
        locked.save(update_fields=["is_active"])
    audit(
        user,
        AuditAction.ACTIVATE_MODEL_VERSION,
        cohort=locked.trained_on,
        label=locked.name,
        model_version=locked.pk,
        previous=[other.pk for other in previous],
    )
    return locked
