"""Lock the operating point of model versions trained before it was recorded at training:
per-fold thresholds and rule from the version, the MRS cut-point by maxstat on its stored
out-of-fold predictions (issue 11). New versions are locked by the training itself."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from inference.models import ModelVersion
from inference.operating_point import lock_operating_point


class Command(BaseCommand):
    help = "Lock the operating point of ready model versions that have none (or all: --force)."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="re-lock versions that have one")

    def handle(self, *args, force: bool = False, **options):
        versions = ModelVersion.objects.filter(status=ModelVersion.Status.READY).order_by("pk")
        if not force:
            versions = versions.filter(operating_point={})
        total = versions.count()
        for done, version in enumerate(versions, start=1):
            point = lock_operating_point(version)
            self.stdout.write(f"[{done}/{total}] {version.name}: {point.label}")
        if not total:
            self.stdout.write("Every ready model version already has a locked operating point.")
