from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import forms

from .models import ModelVersion
from .registry import DEPTHS, EARLY_STOPPING, TrainingChoices, scoring_choices


@dataclass(frozen=True)
class TrainingDefaults:
    """The form's starting values for a cohort of ``n_patients`` trainable patients, and why."""

    depth: int
    input_size: int
    max_epochs: int
    early_stopping: str
    reason: str


def training_defaults(n_patients: int) -> TrainingDefaults:
    """The paper's ResNet50 at 224 px with early stopping needs hundreds of patients; a
    smaller cohort gets a smaller network, smaller patches and every epoch trained."""
    if n_patients >= 200:
        return TrainingDefaults(
            50,
            224,
            30,
            "loss",
            f"{n_patients} patients with images and a label: the paper's settings (ResNet50 "
            "at 224 px, early stopping on the validation loss).",
        )
    if n_patients >= 50:
        return TrainingDefaults(
            18,
            128,
            30,
            "none",
            f"{n_patients} patients with images and a label, under ~200: ResNet18 at 128 px "
            "(ResNet50 would memorise them), every epoch trained (a fold's inner validation "
            "split is too small to stop on).",
        )
    return TrainingDefaults(
        10,
        64,
        20,
        "none",
        f"{n_patients} patients with images and a label, under 50: ResNet10 at 64 px and 20 "
        "epochs, every epoch trained; expect a wide uncertainty whatever the settings.",
    )


class TrainingForm(forms.Form):
    """Start a cross-validation on a cohort. The starting values follow the cohort's size
    (``training_defaults``): the paper's ResNet50 at 224 px only from ~200 patients."""

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

    def __init__(self, *args: Any, n_patients: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.defaults = None if n_patients is None else training_defaults(n_patients)
        if self.defaults is not None:
            for name in ("depth", "input_size", "max_epochs", "early_stopping"):
                self.fields[name].initial = getattr(self.defaults, name)

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
