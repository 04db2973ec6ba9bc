"""nnU-Net v2 for the platform: dataset, training, prediction, uncertainty, model import.

Labels are the platform's canonical ones: 0 background, 1 pancreas, 2 tumour; one input
channel, the CT. Arrays are (z, y, x) as SimpleITK gives them; spacing, origin and direction
are SimpleITK's (x, y, z). Planning, preprocessing and training run in a child process
(``python -m inference.segmentation.nnunet_worker``) with nnU-Net's three folders set in its
environment; its progress lines (JSON) reach ``on_progress``. Prediction runs in this process
through ``nnUNetPredictor.manual_initialization`` (its automatic trainer lookup imports every
trainer module, one of which needs torchvision, absent with the CPU build of torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from inference.pmpd.volume import Volume

LABELS = {"background": 0, "pancreas": 1, "tumour": 2}
TRAINER_NAME = "nnUNetTrainerShortBudget"
PROGRESS_PREFIX = "PMPD-PROGRESS "
OPTIMIZERS = ("sgd", "adamw")


class NnUNetError(Exception):
    """A problem for the user: what is wrong, in words, naming the file or field."""


@dataclass(frozen=True)
class Case:
    """One CT (and, for training, its canonical mask on the CT's grid)."""

    case_id: str
    ct: Volume
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class TrainingBudget:
    """How long nnU-Net trains. nnU-Net's own default is 1000 epochs of 250 iterations;
    a CPU or a handful of cases needs far less (the short-budget trainer)."""

    configuration: str = "2d"
    folds: tuple[int, ...] = (0,)
    epochs: int = 10
    iterations_per_epoch: int = 50
    validation_iterations: int = 5
    batch_size: int | None = 4
    # Cap on the U-Net's feature maps per stage (nnU-Net plans up to 512): a CPU predicts a
    # 32-feature 2d U-Net over ten times faster; None keeps nnU-Net's plan.
    max_features: int | None = 32
    # Cap on the training patch's side (pixels); nnU-Net crops around foreground often enough
    # that a smaller patch still sees the pancreas. None keeps nnU-Net's plan.
    max_patch: int | None = None
    # Target pixel spacing across the slice, at least (mm): nnU-Net plans at the cohort's
    # median (0.6-0.9 mm in a 512 matrix); a coarser plan trains and predicts several times
    # faster on a CPU. None keeps nnU-Net's plan.
    in_plane_mm: float | None = None
    # Share of training patches centred on pancreas or tumour (nnU-Net's default: 0.33).
    foreground_oversampling: float = 0.33
    # "sgd": nnU-Net's default (SGD, momentum 0.99); "adamw": nnU-Net's nnUNetTrainerAdam,
    # far quicker to leave the all-background start (a budget of a few hundred iterations).
    optimizer: str = "sgd"
    # Test-time mirroring (nnU-Net's default) costs 4 predictions per tile in 2d, 8 in 3d; the
    # short CPU budgets leave it out of validation and of the model's later predictions.
    mirroring: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise NnUNetError(
                f"optimizer {self.optimizer!r}: the trainer knows {', '.join(OPTIMIZERS)}"
            )

    def as_dict(self) -> dict[str, Any]:
        return {
            "configuration": self.configuration,
            "folds": list(self.folds),
            "epochs": self.epochs,
            "iterations_per_epoch": self.iterations_per_epoch,
            "validation_iterations": self.validation_iterations,
            "batch_size": self.batch_size,
            "max_features": self.max_features,
            "max_patch": self.max_patch,
            "in_plane_mm": self.in_plane_mm,
            "foreground_oversampling": self.foreground_oversampling,
            "optimizer": self.optimizer,
            "mirroring": self.mirroring,
            "device": self.device,
        }


def default_budget(n_cases: int, *, device: str = "cpu") -> TrainingBudget:
    """Sensible defaults from the cohort's size: five folds from 25 cases on a GPU, else one."""
    if device == "cuda":
        folds = (0, 1, 2, 3, 4) if n_cases >= 25 else (0,)
        return TrainingBudget(
            folds=folds, epochs=100, iterations_per_epoch=250, batch_size=None, device=device
        )
    return TrainingBudget(epochs=max(4, min(20, 2 * n_cases)), iterations_per_epoch=40)


@dataclass
class TrainedModel:
    """A results folder nnU-Net can predict with, and what its card shows."""

    folder: Path
    configuration: str
    folds: tuple[int | str, ...]
    label_of_class: dict[str, int]
    dice_per_fold: dict[str, dict[str, float | None]] = field(default_factory=dict)
    trainer_name: str = TRAINER_NAME


# ------------------------------------------------------------------------------------------
# The raw dataset


def write_raw_dataset(cases: Sequence[Case], raw_root: Path, *, dataset_id: int, name: str) -> Path:
    """nnU-Net's raw dataset: ``imagesTr/<case>_0000.nii.gz`` (the CT), ``labelsTr/<case>``
    (0 background, 1 pancreas, 2 tumour) and ``dataset.json``. Returns the dataset folder."""
    import SimpleITK as sitk

    if len(cases) < 2:
        raise NnUNetError(f"nnU-Net needs at least 2 cases with approved masks; got {len(cases)}")
    folder = raw_root / dataset_folder_name(dataset_id, name)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in cases:
        if case.mask is None or case.mask.shape != case.ct.array.shape:
            raise NnUNetError(f"case {case.case_id}: the mask is missing or not on the CT's grid")
        if not np.isin(case.mask, (0, 1, 2)).all():
            raise NnUNetError(f"case {case.case_id}: the mask holds values other than 0, 1, 2")
        for array, target in (
            (case.ct.array.astype(np.int16), folder / "imagesTr" / f"{case.case_id}_0000.nii.gz"),
            (case.mask.astype(np.uint8), folder / "labelsTr" / f"{case.case_id}.nii.gz"),
        ):
            sitk.WriteImage(case.ct.grid.image(array), str(target), useCompression=True)
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": name,
        "description": "Pancreas and tumour masks approved on the PMPD platform",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


def dataset_folder_name(dataset_id: int, name: str) -> str:
    safe = "".join(c if c.isalnum() else "_" for c in name)[:40] or "PMPD"
    return f"Dataset{dataset_id:03d}_{safe}"


# ------------------------------------------------------------------------------------------
# Planning, preprocessing and training in a child process


def cpu_threads() -> int:
    """Torch threads for nnU-Net on the CPU: ``PMPD_TORCH_THREADS``, 1 by default. One thread
    avoids OpenMP oversubscription on cores other work shares: a training step of the demo's
    U-Net took 0.16 s of CPU with one thread and 2.2 s with two on the busy 2-core machine."""
    return max(1, int(os.environ.get("PMPD_TORCH_THREADS", "1")))


def environment(workdir: Path) -> dict[str, str]:
    """nnU-Net's folders under ``workdir`` and a child process that stays within its budget
    (data augmentation and export in the training process: the platform's workers are busy
    enough)."""
    env = dict(os.environ)
    for key, sub in (
        ("nnUNet_raw", "raw"),
        ("nnUNet_preprocessed", "preprocessed"),
        ("nnUNet_results", "results"),
    ):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(workdir / sub)
    # 0: data augmentation in the training process itself (nnU-Net's planner needs >= 1; the
    # worker raises it for planning).
    env.setdefault("nnUNet_n_proc_DA", "0")
    env.setdefault("nnUNet_def_n_proc", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_worker(
    args: list[str], workdir: Path, on_progress: Callable[[dict[str, Any]], None] | None
) -> dict[str, Any]:
    """Run the worker; pass its progress lines on; return its last result line."""
    command = [sys.executable, "-m", "inference.segmentation.nnunet_worker", *args]
    result: dict[str, Any] = {}
    tail: list[str] = []
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        command,
        cwd=root,
        env=environment(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        try:
            for line in process.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    message = json.loads(line[len(PROGRESS_PREFIX) :])
                    if message.get("kind") == "result":
                        result = message
                    elif on_progress is not None:
                        on_progress(message)
                else:
                    tail = [*tail[-40:], line.rstrip()]
        except BaseException:
            # A stopped job (or a failed progress report) stops nnU-Net too.
            process.kill()
            raise
        code = process.wait()
    if code != 0:
        reason = next((t for t in reversed(tail) if t.strip()), "no output")
        raise NnUNetError(f"nnU-Net stopped ({' '.join(args[:1])}): {reason[-500:]}")
    return result


def plan_and_preprocess(
    workdir: Path,
    *,
    dataset_id: int,
    budget: TrainingBudget | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """nnU-Net's fingerprint, experiment planning (at the budget's in-plane spacing) and
    preprocessing of the raw dataset for the budget's configuration."""
    budget = budget or TrainingBudget()
    _run_worker(
        ["plan", "--dataset", str(dataset_id), "--budget", json.dumps(budget.as_dict())],
        workdir,
        on_progress,
    )


def train(
    workdir: Path,
    *,
    dataset_id: int,
    budget: TrainingBudget,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainedModel:
    """Train each fold of ``budget`` with the short-budget trainer and run nnU-Net's own
    validation; progress messages say fold, epoch and pseudo-Dice."""
    dice: dict[str, dict[str, float | None]] = {}
    folder = None
    for fold in budget.folds:
        result = _run_worker(
            [
                "train",
                "--dataset",
                str(dataset_id),
                "--fold",
                str(fold),
                "--budget",
                json.dumps(budget.as_dict()),
            ],
            workdir,
            on_progress,
        )
        folder = Path(result["folder"])
        dice[str(fold)] = result["dice"]
    assert folder is not None
    return TrainedModel(
        folder=folder,
        configuration=budget.configuration,
        folds=tuple(budget.folds),
        label_of_class={"pancreas": 1, "tumour": 2},
        dice_per_fold=dice,
    )


def validation_dice(summary_file: Path) -> dict[str, float | None]:
    """Dice per label from nnU-Net's validation summary (``validation/summary.json``)."""
    summary = json.loads(summary_file.read_text())
    by_label = summary.get("mean", {})
    names = {str(v): k for k, v in LABELS.items()}
    result: dict[str, float | None] = {}
    for label, metrics in by_label.items():
        name = names.get(str(label).strip("()").split(",")[0].strip(), str(label))
        value = metrics.get("Dice")
        result[name] = None if value is None or np.isnan(value) else round(float(value), 4)
    return result


# ------------------------------------------------------------------------------------------
# Prediction


@dataclass
class Prediction:
    case_id: str
    mask: np.ndarray  # (z, y, x) uint8, the platform's labels
    tumour_uncertainty: float | None  # mean softmax entropy (nats) inside the predicted tumour
    tumour_voxels: int


def tumour_uncertainty(
    probabilities: np.ndarray, segmentation: np.ndarray, tumour: int
) -> float | None:
    """Mean softmax entropy (nats) over the voxels predicted as tumour; None without any.
    ``probabilities`` is (classes, z, y, x), summing to 1 over the classes."""
    inside = segmentation == tumour
    if not inside.any():
        return None
    p = np.clip(probabilities[:, inside].astype(np.float64), 1e-12, 1.0)
    return round(float((-(p * np.log(p)).sum(axis=0)).mean()), 5)


class Segmenter:
    """A trained nnU-Net (one or more folds) loaded for prediction on the CPU or a GPU."""

    def __init__(
        self,
        folder: Path,
        *,
        folds: Iterable[int | str],
        label_of_class: dict[str, int] | None = None,
        device: str = "cpu",
        checkpoint: str = "checkpoint_final.pth",
        use_mirroring: bool = True,
    ) -> None:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import (
            determine_num_input_channels,
        )
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        dataset_json = json.loads((folder / "dataset.json").read_text())
        plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
        weights, configuration, mirroring, trainer_name = [], None, None, TRAINER_NAME
        for fold in folds:
            saved = torch.load(
                folder / f"fold_{fold}" / checkpoint, map_location="cpu", weights_only=False
            )
            weights.append(saved["network_weights"])
            configuration = configuration or saved["init_args"]["configuration"]
            mirroring = saved.get("inference_allowed_mirroring_axes")
            trainer_name = saved.get("trainer_name", trainer_name)
        if not weights:
            raise NnUNetError("no fold to predict with")
        configuration_manager = plans_manager.get_configuration(configuration)
        network = nnUNetTrainer.build_network_architecture(
            plans_manager,
            configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
            enable_deep_supervision=False,
        )
        self.predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=use_mirroring,
            perform_everything_on_device=device != "cpu",
            device=torch.device(device),
            verbose=False,
            allow_tqdm=False,
        )
        self.predictor.manual_initialization(
            network,
            plans_manager,
            configuration_manager,
            weights,
            dataset_json,
            trainer_name,
            mirroring,
        )
        self.label_of_class = label_of_class or {"pancreas": 1, "tumour": 2}
        self.configuration = configuration
        self.device = device

    def predict(self, case: Case) -> Prediction:
        """The platform's mask (0/1/2) of ``case`` and the uncertainty inside its tumour."""
        from inference.pmpd.train import torch_threads

        image = case.ct.array.astype(np.float32)[None]
        spacing = [float(v) for v in case.ct.spacing[::-1]]
        with torch_threads(cpu_threads() if self.device == "cpu" else None):
            segmentation, probabilities = self.predictor.predict_single_npy_array(
                image, {"spacing": spacing}, None, None, True
            )
        mask = np.zeros(segmentation.shape, dtype=np.uint8)
        mask[segmentation == self.label_of_class["pancreas"]] = LABELS["pancreas"]
        # A pancreas-only model maps no tumour label: its masks have none (readers draw it).
        tumour = self.label_of_class.get("tumour")
        if tumour is not None:
            mask[segmentation == tumour] = LABELS["tumour"]
        return Prediction(
            case_id=case.case_id,
            mask=mask,
            tumour_uncertainty=None
            if tumour is None
            else tumour_uncertainty(probabilities, segmentation, tumour),
            tumour_voxels=int((mask == LABELS["tumour"]).sum()),
        )


# ------------------------------------------------------------------------------------------
# Importing a model trained elsewhere


@dataclass(frozen=True)
class ImportedModel:
    configuration: str
    folds: tuple[int | str, ...]
    labels: dict[str, int]
    label_of_class: dict[str, int]
    trainer_name: str


def read_results_labels(path: Path) -> dict[str, int]:
    """The labels (name -> value, background included) that a results ZIP's dataset.json
    names, before any mapping: what the import form offers. Raises ``NnUNetError`` for a file
    that is not a ZIP of one results folder, or whose dataset.json names no labels."""
    with _open_results_zip(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        dataset = _json_member(archive, _results_root(names, path.name) / "dataset.json", path.name)
    return {k: v for k, v in _labels(dataset, path.name).items() if isinstance(v, int)}


def inspect_results_zip(
    path: Path, *, pancreas_label: str | int, tumour_label: str | int | None
) -> ImportedModel:
    """Check that ``path`` is a ZIP of an nnU-Net v2 results folder (dataset.json, plans.json,
    fold_N/checkpoint_final.pth) for a single CT channel, and map its labels to pancreas and
    tumour (by name or by value). ``tumour_label`` None or empty: the model segments the
    pancreas only (``label_of_class`` has no tumour; readers draw it). Raises ``NnUNetError``
    naming what is wrong."""
    with _open_results_zip(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        root = _results_root(names, path.name)
        dataset = _json_member(archive, root / "dataset.json", path.name)
        plans = _json_member(archive, root / "plans.json", path.name)
        folds = tuple(
            sorted(
                {
                    _fold(PurePosixPath(n).parent.name)
                    for n in names
                    if PurePosixPath(n).name == "checkpoint_final.pth"
                    and PurePosixPath(n).parent.parent == root
                },
                key=str,
            )
        )
    if not folds:
        raise NnUNetError(
            f"{path.name}: no fold_N/checkpoint_final.pth beside dataset.json: not a trained "
            "nnU-Net v2 results folder"
        )
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if len(channels) != 1 or str(next(iter(channels.values()), "")).upper() != "CT":
        raise NnUNetError(
            f"{path.name}: dataset.json channel_names is {channels}; the platform predicts from "
            'a single CT channel ({"0": "CT"})'
        )
    values = _labels(dataset, path.name)
    if not str(pancreas_label).strip():
        raise NnUNetError(
            f"{path.name}: no label mapped to the pancreas; the platform needs the model's "
            "pancreas label (the tumour label may be none)"
        )
    label_of_class = {"pancreas": _map_label(values, pancreas_label, "pancreas", path.name)}
    if tumour_label is not None and str(tumour_label).strip():
        label_of_class["tumour"] = _map_label(values, tumour_label, "tumour", path.name)
    if label_of_class["pancreas"] == label_of_class.get("tumour"):
        raise NnUNetError(f"{path.name}: pancreas and tumour cannot be the same label")
    configurations = plans.get("configurations", {})
    configuration = _configuration(archive_names=names, root=root, plans=configurations)
    return ImportedModel(
        configuration=configuration,
        folds=folds,
        labels={k: int(v) for k, v in values.items() if isinstance(v, int)},
        label_of_class=label_of_class,
        trainer_name=root.name.split("__")[0] if "__" in root.name else "",
    )


def extract_results_zip(path: Path, target: Path) -> Path:
    """Unpack a checked results ZIP into ``target``; returns the results folder inside."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        root = _results_root(names, path.name)
        for name in names:
            relative = PurePosixPath(name)
            if ".." in relative.parts or relative.is_absolute():
                raise NnUNetError(f"{path.name}: unsafe path in the ZIP: {name}")
            if root != PurePosixPath(".") and root not in relative.parents:
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(name) as source:
                destination.write_bytes(source.read())
    return target / root


def _open_results_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise NnUNetError(f"{path.name}: not a ZIP file ({exc})") from None


def _results_root(names: list[str], label: str) -> PurePosixPath:
    present = set(names)
    roots = {
        PurePosixPath(n).parent
        for n in names
        if PurePosixPath(n).name == "dataset.json"
        and str(PurePosixPath(n).parent / "plans.json") in present
    }
    if not roots:
        raise NnUNetError(
            f"{label}: no folder with both dataset.json and plans.json: not an nnU-Net v2 "
            "results folder (ZIP the folder nnUNet_results/DatasetNNN_Name/Trainer__Plans__"
            "configuration)"
        )
    if len(roots) > 1:
        raise NnUNetError(
            f"{label}: several results folders ({sorted(map(str, roots))}); one please"
        )
    return roots.pop()


def _json_member(archive: zipfile.ZipFile, name: PurePosixPath, label: str) -> dict:
    member = str(name).removeprefix("./")
    try:
        data = json.loads(archive.read(member))
    except (KeyError, ValueError) as exc:
        raise NnUNetError(f"{label}: {member} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise NnUNetError(f"{label}: {member} is not a JSON object")
    return data


def _labels(dataset: dict, label: str) -> dict[str, Any]:
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise NnUNetError(f"{label}: dataset.json has no labels")
    return {str(k): v for k, v in labels.items()}


def _fold(name: str) -> int | str:
    suffix = name.removeprefix("fold_")
    if name == suffix:
        return name
    return "all" if suffix == "all" else int(suffix) if suffix.isdigit() else suffix


def _map_label(values: dict[str, Any], wanted: str | int, cls: str, label: str) -> int:
    text = str(wanted).strip()
    if text in values and isinstance(values[text], int):
        return int(values[text])
    if text.isdigit() and int(text) in [v for v in values.values() if isinstance(v, int)]:
        if int(text) == 0:
            raise NnUNetError(f"{label}: {cls} cannot be label 0 (background)")
        return int(text)
    raise NnUNetError(
        f"{label}: the model has no label {text!r} for {cls}; its labels are "
        + ", ".join(f"{k} = {v}" for k, v in values.items())
    )


def _configuration(*, archive_names: list[str], root: PurePosixPath, plans: dict) -> str:
    name = root.name.split("__")[-1] if "__" in root.name else ""
    if name and name in plans:
        return name
    if len(plans) == 1:
        return next(iter(plans))
    return name or "2d"
