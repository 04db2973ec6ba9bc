"""The coordinator's segmentation forms: train an nnU-Net on the approved masks, import a
results ZIP trained elsewhere (upload, then map its labels), predict masks.

The rules stay where the API finds them: the budget's defaults are
``nnunet_core.default_budget``, the minimum cohort is checked by
``segmentation_jobs.start_segmentation_training``, a results ZIP and its label mapping
(pancreas required, tumour optional for a pancreas-only model, never the same label) by
``nnunet_core.inspect_results_zip``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from django import forms

from pmpd_web.cohorts.models import Cohort

from .segmentation import nnunet_core as nc
from .segmentation_jobs import CONFIGURATIONS, MIN_TRAINING_PATIENTS, patients_to_segment

FOLDS = (0, 1, 2, 3, 4)


def training_reason(n_patients: int, budget: nc.TrainingBudget) -> str:
    """What the form will use for a cohort of ``n_patients`` patients with approved masks."""
    if n_patients < MIN_TRAINING_PATIENTS:
        return (
            f"{n_patients} patient{'s' if n_patients != 1 else ''} with an approved mask: "
            f"nnU-Net's five-fold split needs at least {MIN_TRAINING_PATIENTS}. Approve more "
            "masks (upload them or correct automatic ones) first."
        )
    folds = ", ".join(str(f) for f in budget.folds)
    return (
        f"{n_patients} patients with an approved mask will be used (nnU-Net splits them into "
        f"five folds). Starting values: {budget.configuration}, fold {folds}, "
        f"{budget.epochs} epochs of {budget.iterations_per_epoch} iterations, the short budget "
        "a CPU worker finishes in minutes. On a GPU worker raise epochs, iterations and folds "
        "toward nnU-Net's own 1000 epochs of 250 iterations on all five folds."
    )


class TrainSegmentationForm(forms.Form):
    name = forms.CharField(max_length=120, help_text="Unique within the cohort")
    configuration = forms.ChoiceField(
        choices=[(c, c) for c in CONFIGURATIONS],
        help_text="2d trains fastest; nnU-Net plans 3d_lowres only for large images",
    )
    folds = forms.TypedMultipleChoiceField(
        choices=[(f, f"fold {f}") for f in FOLDS],
        coerce=int,
        widget=forms.CheckboxSelectMultiple,
        help_text="Each fold trains one network on four fifths of the patients",
    )
    epochs = forms.IntegerField(min_value=1, max_value=1000)
    iterations_per_epoch = forms.IntegerField(min_value=1, max_value=250)

    def __init__(self, *args: Any, n_patients: int, default_name: str = "", **kwargs: Any):
        super().__init__(*args, **kwargs)
        budget = nc.default_budget(n_patients)
        self.n_patients = n_patients
        self.reason = training_reason(n_patients, budget)
        self.enough_patients = n_patients >= MIN_TRAINING_PATIENTS
        self.fields["name"].initial = default_name
        self.fields["configuration"].initial = budget.configuration
        self.fields["folds"].initial = list(budget.folds)
        self.fields["epochs"].initial = budget.epochs
        self.fields["iterations_per_epoch"].initial = budget.iterations_per_epoch

    def budget(self) -> nc.TrainingBudget:
        data = self.cleaned_data
        return nc.TrainingBudget(
            configuration=data["configuration"],
            folds=tuple(sorted(set(data["folds"]))),
            epochs=data["epochs"],
            iterations_per_epoch=data["iterations_per_epoch"],
        )


class ImportUploadForm(forms.Form):
    file = forms.FileField(
        label="Results ZIP",
        help_text="ZIP of nnUNet_results/DatasetNNN_Name/Trainer__Plans__configuration with "
        "dataset.json, plans.json and fold_N/checkpoint_final.pth",
    )


def _readable_name(name: str) -> str:
    """The upload's own file name, safe as a local file name (messages name it)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(name or "model.zip").name) or "model.zip"


def results_zip_labels(path: Path) -> dict[str, int]:
    """The model's labels (name -> value) from the results ZIP's dataset.json, after the checks
    an import makes (a ZIP, one results folder, fold checkpoints, a single CT channel).
    Raises ``NnUNetError`` naming the file and what is wrong."""
    labels = nc.read_results_labels(path)
    found = sorted(v for v in labels.values() if v != 0)
    if not found:
        raise nc.NnUNetError(
            f"{path.name}: dataset.json labels are {labels}; the platform needs a label for "
            "the pancreas (and one for the tumour if the model segments it)"
        )
    # Any label as the pancreas: what is checked here is everything but the coordinator's
    # mapping, which the import checks with the same function.
    nc.inspect_results_zip(path, pancreas_label=str(found[0]), tumour_label=None)
    return labels


def checked_upload(upload, folder: Path) -> tuple[Path, dict[str, int]]:
    """Write the upload into ``folder`` under its own name and read its labels (raises
    ``NnUNetError`` for a ZIP the import would refuse)."""
    path = folder / _readable_name(upload.name)
    with path.open("wb") as sink:
        for chunk in upload.chunks():
            sink.write(chunk)
    try:
        return path, results_zip_labels(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise nc.NnUNetError(f"{path.name}: not a ZIP file ({exc})") from None


def _guess(labels: dict[str, int], words: tuple[str, ...]) -> str | None:
    for name in labels:
        if any(word in name.lower() for word in words):
            return name
    return None


NO_TUMOUR_CHOICE = ("", "none — this model does not segment the tumour")


class LabelMappingForm(forms.Form):
    """Which of the model's labels is the pancreas and which the tumour (or none: a
    pancreas-only model). The mapping's rules are ``nnunet_core.inspect_results_zip``'s, which
    the import applies."""

    name = forms.CharField(max_length=120, help_text="Unique within the cohort")
    pancreas_label = forms.ChoiceField(label="Pancreas is the model's label")
    tumour_label = forms.ChoiceField(
        label="Tumour is the model's label",
        required=False,
        help_text="None for a pancreas-only model: its masks have no tumour, readers draw it "
        "before approval",
    )

    def __init__(self, *args: Any, labels: dict[str, int], default_name: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        choices = [(name, f"{name} ({value})") for name, value in labels.items() if value != 0]
        self.fields["pancreas_label"].choices = choices
        self.fields["tumour_label"].choices = [NO_TUMOUR_CHOICE, *choices]
        self.fields["name"].initial = default_name
        self.fields["pancreas_label"].initial = _guess(labels, ("pancrea",))
        self.fields["tumour_label"].initial = (
            _guess(labels, ("tumour", "tumor", "lesion", "cancer", "neoplasm", "pdac"))
            or NO_TUMOUR_CHOICE[0]
        )


class PredictForm(forms.Form):
    study_ids = forms.CharField(
        required=False,
        label="Study IDs",
        max_length=4000,
        help_text="Leave empty for every patient with a CT and no approved mask or mask waiting "
        "for review; name patients (separated by spaces or commas) to predict theirs again",
    )

    def __init__(self, *args: Any, cohort: Cohort, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cohort = cohort

    def clean_study_ids(self) -> list[str]:
        study_ids = list(dict.fromkeys(re.split(r"[\s,;]+", self.cleaned_data["study_ids"])))
        study_ids = [s for s in study_ids if s]
        if not study_ids:
            return []
        known = set(
            self.cohort.patients.filter(study_id__in=study_ids).values_list("study_id", flat=True)
        )
        unknown = [s for s in study_ids if s not in known]
        if unknown:
            raise forms.ValidationError(f"No patient {', '.join(unknown)} in {self.cohort.name}.")
        with_ct = set(
            patients_to_segment(self.cohort, study_ids).values_list("study_id", flat=True)
        )
        without_ct = [s for s in study_ids if s not in with_ct]
        if without_ct:
            raise forms.ValidationError(
                f"{', '.join(without_ct)}: no CT selected for PMPD, nothing to segment."
            )
        return study_ids
