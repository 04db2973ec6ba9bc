"""Score a cohort with a model version's five-fold ensemble here and now, through the same
code as the scoring task, with a progress bar."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from inference.console import progress_bar, report_scoring
from inference.jobs import create_scoring, execute_scoring
from inference.models import ModelVersion
from pmpd_web.jobs.runner import UserFacingError

from .train_pmpd import find_cohort


def find_version(value: str | None) -> ModelVersion:
    if value is None:
        version = ModelVersion.objects.filter(is_active=True).first()
        if version is None:
            raise CommandError("No model version is active: name one with --model-version.")
        return version
    version = (
        ModelVersion.objects.filter(pk=int(value)).first()
        if value.isdigit()
        else ModelVersion.objects.filter(name=value).first()
    )
    if version is None:
        raise CommandError(f"No model version with id or name {value!r}.")
    return version


class Command(BaseCommand):
    help = "Score every patient of a cohort that has images (synchronously)."

    def add_arguments(self, parser):
        parser.add_argument("--cohort", required=True, help="cohort id or name")
        parser.add_argument(
            "--model-version", default=None, help="version id or name (default: the active one)"
        )

    def handle(self, *args, **options):
        cohort = find_cohort(options["cohort"])
        version = find_version(options["model_version"])
        try:
            job = create_scoring(cohort, version, user=None)
        except UserFacingError as exc:
            raise CommandError(str(exc)) from None
        with progress_bar(f"Scoring {cohort.name}") as progress:
            execute_scoring(job.pk, on_progress=progress)
        job.refresh_from_db()
        if job.status != "succeeded":
            raise CommandError(f"Scoring failed: {job.error or job.phrase}")
        report_scoring(self.stdout, cohort.name, version, job.result)
