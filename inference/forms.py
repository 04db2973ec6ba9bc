from __future__ import annotations

from typing import Any

from django import forms

from .models import ModelVersion
from .registry import DEPTHS, EARLY_STOPPING, TrainingChoices, scoring_choices


class TrainingForm(forms.Form):
    """Start a cross-validation on a cohort. The defaults are the paper's (ResNet50 at 224,
    5 folds); on a machine without a GPU choose ResNet10 at 64 pixels and a few epochs."""

    name = forms.CharField(
        max_length=120, required=False, help_text="Leave empty for the cohort's name and the time"
    )
    depth = forms.TypedChoiceField(
        label="ResNet depth",
        choices=[(d, f"ResNet{d}") for d in DEPTHS],
        coerce=int,
        initial=50,
    )
    input_size = forms.IntegerField(
        label="Input size (pixels)", min_value=32, max_value=512, initial=224
    )
    max_epochs = forms.IntegerField(
        label="Epochs (at most; early stopping may end sooner)",
        min_value=1,
        max_value=500,
        initial=30,
    )
    early_stopping = forms.ChoiceField(
        label="Early stopping on",
        choices=EARLY_STOPPING,
        initial="loss",
        required=False,
        help_text="The inner validation split of a fold has a fifth of its training patients: "
        "under ~200 patients its loss is too noisy to stop on, so train every epoch",
    )
    n_folds = forms.IntegerField(label="Folds", min_value=2, max_value=10, initial=5)
    seed = forms.IntegerField(min_value=0, initial=0, help_text="Seeds the folds and the weights")

    def choices(self) -> TrainingChoices:
        data: dict[str, Any] = self.cleaned_data
        return TrainingChoices(
            depth=data["depth"],
            input_size=data["input_size"],
            max_epochs=data["max_epochs"],
            n_folds=data["n_folds"],
            seed=data["seed"],
            early_stopping_metric=data.get("early_stopping") or "loss",
        )


class ScoringForm(forms.Form):
    model_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.none(),
        empty_label=None,
        help_text="Ready versions you can see, and the active one",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = scoring_choices(user).order_by("-is_active", "-created_at")
        field = self.fields["model_version"]
        field.queryset = choices
        field.label_from_instance = lambda version: (
            f"{version.name}{' (active)' if version.is_active else ''}"
            f"{' — synthetic data' if version.is_synthetic else ''}"
        )
        active = choices.filter(is_active=True).first()
        if active is not None:
            field.initial = active.pk
