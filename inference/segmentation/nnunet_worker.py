"""The child process of ``nnunet_core``: nnU-Net's planning and preprocessing, or training one
fold with the short-budget trainer and nnU-Net's own validation. nnU-Net's folders come from
the environment ``nnunet_core.environment`` sets; progress and the result are printed as
``PMPD-PROGRESS {json}`` lines.

Run as ``python -m inference.segmentation.nnunet_worker plan|train ...``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from inference.segmentation.nnunet_core import (
    PROGRESS_PREFIX,
    TRAINER_NAME,
    cpu_threads,
    validation_dice,
)


def say(**message) -> None:
    print(PROGRESS_PREFIX + json.dumps(message), flush=True)


def plan(dataset_id: int, budget: dict) -> None:
    # nnU-Net's own variable name; its planner needs at least one thread.
    threads = max(1, int(os.environ.get("nnUNet_n_proc_DA", "1")))  # noqa: SIM112
    os.environ["nnUNet_n_proc_DA"] = str(threads)  # noqa: SIM112
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        preprocess,
    )

    configuration = budget.get("configuration", "2d")
    say(kind="step", phrase="nnU-Net fingerprint of the dataset")
    # No integrity check: ``write_raw_dataset`` wrote each label map from its CT's grid and
    # refused values other than 0, 1, 2; nnU-Net's check reads every file again.
    extract_fingerprints([dataset_id], check_dataset_integrity=False, num_processes=1)
    say(kind="step", phrase="nnU-Net experiment planning")
    planner = coarser_planner()(
        dataset_id, in_plane_mm=budget.get("in_plane_mm"), suppress_transpose=True
    )
    planner.plan_experiment()
    say(kind="step", phrase=f"nnU-Net preprocessing ({configuration})")
    preprocess([dataset_id], configurations=(configuration,), num_processes=(1,))
    say(kind="result")


def coarser_planner():
    """nnU-Net's experiment planner, whose target spacing is at least ``in_plane_mm`` across
    the slice. Slices stay axial (no transpose): a 2d U-Net reads the slices a reader reads,
    whatever the slice thickness. Why coarser: a pancreas a few centimetres across keeps its
    shape at 3 mm (a round trip to 3 mm and back keeps 0.93-0.95 of its Dice on the phantoms), and a
    CPU trains and predicts on a quarter to a fifth of the pixels of a 1.4 mm plan."""
    import numpy as np
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )

    class PlatformPlanner(ExperimentPlanner):
        def __init__(self, dataset_id: int, *, in_plane_mm: float | None, **kwargs):
            super().__init__(dataset_id, **kwargs)
            self.in_plane_mm = in_plane_mm

        def determine_fullres_target_spacing(self) -> np.ndarray:
            spacing = np.array(super().determine_fullres_target_spacing(), dtype=float)
            if self.in_plane_mm:
                # Arrays are (z, y, x): the slice's axes are the last two.
                spacing[1:] = np.maximum(spacing[1:], float(self.in_plane_mm))
            return spacing

    return PlatformPlanner


def smaller_patch(patch: list[int], strides: list[list[int]], cap: int) -> list[int]:
    """Each side at most ``cap``, still a multiple of the network's total stride on it."""
    result = []
    for axis, side in enumerate(patch):
        step = 1
        for stride in strides:
            step *= int(stride[axis])
        result.append(max(step, (min(int(side), cap) // step) * step))
    return result


def short_budget_trainer():
    """nnU-Net's trainer with the platform's budget (epochs, iterations) and a progress line
    after each epoch. Its constructor keeps nnU-Net's signature: the base class records it."""
    import numpy as np
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import (
        nnUNetTrainerAdam,
    )

    class nnUNetTrainerShortBudget(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming
        budget: dict = {}

        def __init__(
            self,
            plans: dict,
            configuration: str,
            fold: int,
            dataset_json: dict,
            device: torch.device = torch.device("cpu"),  # noqa: B008 - nnU-Net's signature
        ):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = int(self.budget.get("epochs", 10))
            self.num_iterations_per_epoch = int(self.budget.get("iterations_per_epoch", 50))
            self.num_val_iterations_per_epoch = int(self.budget.get("validation_iterations", 5))
            self.save_every = max(self.num_epochs, 1)
            # nnU-Net centres a third of its patches on a foreground class; a short budget
            # centres more, so the small tumour is seen often enough to be learned.
            self.oversample_foreground_percent = float(
                self.budget.get("foreground_oversampling", self.oversample_foreground_percent)
            )

        def configure_optimizers(self):
            if self.budget.get("optimizer", "sgd") == "adamw":
                # nnU-Net's own AdamW variant (learning rate 0.01): from a random start it finds
                # the pancreas within a hundred iterations, where nnU-Net's SGD (momentum 0.99)
                # still predicts background everywhere after 250; a short budget has no more.
                return nnUNetTrainerAdam.configure_optimizers(self)
            return super().configure_optimizers()

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # noqa: N802
            rotation, dummy_2d, patch, mirror_axes = (
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            )
            if not self.budget.get("mirroring", True):
                # As nnU-Net's nnUNetTrainerNoMirroring: no mirrored training samples (the
                # pancreas' head lies on the patient's right; learning its mirror image too
                # costs iterations a short budget lacks), and, recorded in the checkpoint,
                # validation and later predictions skip mirroring.
                mirror_axes = None
                self.inference_allowed_mirroring_axes = None
            return rotation, dummy_2d, patch, mirror_axes

        def on_epoch_end(self):
            dice = self.logger.get_value("dice_per_class_or_region", step=-1)
            super().on_epoch_end()
            say(
                kind="epoch",
                fold=self.fold,
                epoch=self.current_epoch,
                epochs=self.num_epochs,
                pseudo_dice=[round(float(d), 4) for d in np.nan_to_num(dice)],
            )

    nnUNetTrainerShortBudget.__name__ = TRAINER_NAME
    return nnUNetTrainerShortBudget


def train(dataset_id: int, fold: int, budget: dict) -> None:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    torch.set_num_threads(cpu_threads())
    name = maybe_convert_to_dataset_name(dataset_id)
    folder = Path(nnUNet_preprocessed) / name
    plans = load_json(str(folder / "nnUNetPlans.json"))
    configuration = budget["configuration"]
    planned = plans["configurations"][configuration]
    if budget.get("batch_size"):
        planned["batch_size"] = int(budget["batch_size"])
    if budget.get("max_features"):
        # The results folder keeps these plans: prediction builds the same smaller network.
        arch = planned["architecture"]["arch_kwargs"]
        arch["features_per_stage"] = [
            min(int(f), int(budget["max_features"])) for f in arch["features_per_stage"]
        ]
    if budget.get("max_patch"):
        planned["patch_size"] = smaller_patch(
            planned["patch_size"],
            planned["architecture"]["arch_kwargs"]["strides"],
            int(budget["max_patch"]),
        )
    plans["continue_training"] = False
    trainer_class = short_budget_trainer()
    trainer_class.budget = budget
    trainer = trainer_class(
        plans,
        configuration,
        fold,
        load_json(str(folder / "dataset.json")),
        torch.device(budget.get("device", "cpu")),
    )
    say(kind="step", phrase=f"training fold {fold}", fold=fold)
    trainer.run_training()
    say(kind="step", phrase=f"nnU-Net validation of fold {fold}", fold=fold)
    trainer.perform_actual_validation(False)
    output = Path(trainer.output_folder)
    say(
        kind="result",
        folder=str(output.parent),
        dice=validation_dice(output / "validation" / "summary.json"),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["plan", "train"])
    parser.add_argument("--dataset", type=int, required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--budget", default="{}")
    args = parser.parse_args()
    if args.command == "plan":
        plan(args.dataset, json.loads(args.budget))
    else:
        train(args.dataset, args.fold, json.loads(args.budget))


if __name__ == "__main__":
    main()
