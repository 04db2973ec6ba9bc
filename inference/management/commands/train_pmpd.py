"""Train a PMPD model version on a cohort here and now (5-fold cross-validation), through the
same code as the training task, with a progress bar; prints the out-of-fold AUROC.

With --shuffled-labels it runs the negative control instead: the same cross-validation on
randomly permuted labels, which stores nothing and should give an AUROC near 0.5."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from inference.console import progress_bar, report_training
from inference.jobs import create_training, execute_training
from inference.models import ModelVersion
from inference.registry import DEPTHS, EARLY_STOPPING, TrainingChoices, activate
from pmpd_web.cohorts.models import Cohort
from pmpd_web.jobs.runner import UserFacingError


def find_cohort(value: str) -> Cohort:
    cohort = (
        Cohort.objects.filter(pk=int(value)).first()
        if value.isdigit()
        else Cohort.objects.filter(name=value).first()
    )
    if cohort is None:
        raise CommandError(f"No cohort with id or name {value!r}.")
    return cohort


class Command(BaseCommand):
    help = "Cross-validate a new PMPD model version on a cohort (synchronously)."

    def add_arguments(self, parser):
        parser.add_argument("--cohort", required=True, help="cohort id or name")
        parser.add_argument("--name", default="", help="version name (default: cohort and time)")
        parser.add_argument("--depth", type=int, choices=DEPTHS, default=50)
        parser.add_argument("--input-size", type=int, default=224)
        parser.add_argument("--epochs", type=int, default=30, help="at most (early stopping)")
        parser.add_argument("--folds", type=int, default=5)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--learning-rate", type=float, default=None)
        parser.add_argument("--patience", type=int, default=None, help="early-stopping epochs")
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        parser.add_argument(
            "--early-stopping",
            choices=[value for value, _ in EARLY_STOPPING],
            default=None,
            help="what the inner validation split stops on (default: loss); none runs every "
            "epoch, better under ~200 patients",
        )
        parser.add_argument(
            "--pretrained",
            default=None,
            help="a local torchvision-style ResNet weights file (default: from scratch)",
        )
        parser.add_argument(
            "--activate", action="store_true", help="make the version the active one"
        )
        parser.add_argument(
            "--shuffled-labels",
            action="store_true",
            help="negative control: train on randomly permuted labels (seeded by --seed), "
            "print the out-of-fold AUROC (expected near 0.5) and store nothing",
        )

    def handle(self, *args, **options):
        cohort = find_cohort(options["cohort"])
        choices = TrainingChoices(
            depth=options["depth"],
            input_size=options["input_size"],
            max_epochs=options["epochs"],
            n_folds=options["folds"],
            seed=options["seed"],
            pretrained_weights=options["pretrained"],
            batch_size=options["batch_size"],
            learning_rate=options["learning_rate"],
            early_stopping_patience=options["patience"],
            num_threads=options["threads"],
            early_stopping_metric=options["early_stopping"],
        )
        if options["shuffled_labels"]:
            self._shuffled(cohort, choices, seed=options["seed"])
            return
        try:
            version = create_training(cohort, user=None, choices=choices, name=options["name"])
        except UserFacingError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Training {version.name} on {cohort.name} (job {version.job_id}).")
        with progress_bar(f"Training {version.name}") as progress:
            execute_training(version.job_id, on_progress=progress)
        version.refresh_from_db()
        job = version.job
        if job.status != "succeeded" or version.status != ModelVersion.Status.READY:
            raise CommandError(f"Training failed: {job.error or job.phrase}")
        report_training(self.stdout, version, job.result)
        if options["activate"]:
            activate(version, None)
            self.stdout.write(f"{version.name} is now the active model version.")

    def _shuffled(self, cohort: Cohort, choices: TrainingChoices, *, seed: int) -> None:
        from inference.training import shuffled_labels_check

        self.stdout.write(
            f"Negative control on {cohort.name}: ResNet{choices.depth} at {choices.input_size} "
            f"px, labels permuted with seed {seed}; nothing is stored."
        )
        try:
            with progress_bar("Training on shuffled labels") as progress:
                result = shuffled_labels_check(cohort, choices, seed=seed, progress=progress)
        except UserFacingError as exc:
            raise CommandError(str(exc)) from None
        metrics = result["metrics"]
        self.stdout.write(
            f"Shuffled labels, {result['patients']} patients, {result['seconds'] / 60:.1f} min: "
            f"out-of-fold patient AUROC (MRS) {metrics['patient_auroc_mrs']:.3f} "
            "(a sound pipeline stays near 0.5, e.g. 0.35-0.65)."
        )
