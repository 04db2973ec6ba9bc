"""Set up the demo: one user per role and a synthetic phantom cohort imported through the
same table import as a coordinator's upload, and the phantom patients' images (CT as a DICOM
series, or as NIfTI for every fourth patient, and the mask as NIfTI, under
var/demo/images/<study_id>/) ingested through the same ingest as an image upload, except the
masks of a few patients, which a small nnU-Net trained on the others predicts for review. Safe
to run again: it reuses what exists."""

from __future__ import annotations

import contextlib
import time

from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from tqdm import tqdm

from pmpd_web.accounts.models import Membership, Role
from pmpd_web.cohorts.importer import commit_import, upload_table
from pmpd_web.cohorts.models import Cohort

DEMO_COHORT = "Demo phantom cohort"
DEMO_IMAGE_EXTENT_MM = 120.0
DEMO_USERS = {
    # username: (password, role in the demo cohort or None for the site admin)
    "admin": ("demo-admin-pmpd", None),
    "coordinator": ("demo-coordinator-pmpd", Role.COORDINATOR),
    "clinician": ("demo-clinician-pmpd", Role.CLINICIAN),
    "statistician": ("demo-statistician-pmpd", Role.STATISTICIAN),
    "reader": ("demo-reader-pmpd", Role.READER),
}


class Command(BaseCommand):
    help = "Create the demo users and the synthetic demo cohort (local demo only)."

    def add_arguments(self, parser):
        parser.add_argument("--patients", type=int, default=120)
        parser.add_argument("--seed", type=int, default=2025)
        parser.add_argument(
            "--size",
            type=int,
            default=256,
            help="in-plane matrix of the phantom volumes (below ~192 the demo model cannot "
            "see the tumour signal)",
        )
        parser.add_argument(
            "--withheld-masks",
            type=int,
            default=3,
            help="how many imaged patients come without a mask, for the demo nnU-Net to "
            "predict (0 leaves the annotation step out; it takes about 3 minutes on two "
            "CPU cores)",
        )
        parser.add_argument(
            "--image-patients",
            type=int,
            default=None,
            help="how many patients get images (default: all)",
        )

    def handle(
        self,
        *args,
        patients: int,
        seed: int,
        size: int,
        image_patients: int | None,
        withheld_masks: int,
        **options,
    ):
        if getattr(settings, "PRODUCTION", False):
            raise CommandError("The demo has fixed passwords: never run it in production.")
        started = time.monotonic()
        with self._stage("Users and cohort"):
            users = self._users()
            cohort = self._cohort(users)
        if cohort.patients.exists():
            self.stdout.write(f"{cohort}: {cohort.patients.count()} patients already there.")
        else:
            with self._stage("Clinical table import"):
                self._import_table(
                    cohort, users["coordinator"], patients=patients, seed=seed, size=size
                )
        with self._stage("Phantom images and their ingest"):
            self._images(
                cohort,
                users["coordinator"],
                patients=min(patients, image_patients if image_patients is not None else patients),
                seed=seed,
                size=size,
                withheld_masks=withheld_masks,
            )
        from inference.demo import run_demo_engine
        from inference.segmentation_demo import run_demo_segmentation

        with self._stage("PMPD training and scoring"):
            run_demo_engine(cohort, stdout=self.stdout)
        if withheld_masks:
            with self._stage("nnU-Net annotation step"):
                run_demo_segmentation(cohort, stdout=self.stdout)
        self.stdout.write(f"Demo set up in {time.monotonic() - started:.0f} s.")
        self._print_accounts()

    @contextlib.contextmanager
    def _stage(self, name: str):
        """Say how long each stage took (a second run, which reuses what exists, takes seconds)."""
        started = time.monotonic()
        yield
        self.stdout.write(f"{name}: {time.monotonic() - started:.1f} s")

    def _users(self) -> dict[str, User]:
        users = {}
        for username, (password, role) in DEMO_USERS.items():
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.is_staff = user.is_superuser = role is None
                user.save()
            if role == Role.COORDINATOR:
                user.user_permissions.add(Permission.objects.get(codename="add_cohort"))
            users[username] = user
        return users

    def _cohort(self, users: dict[str, User]) -> Cohort:
        with transaction.atomic():
            cohort, _ = Cohort.objects.get_or_create(
                name=DEMO_COHORT,
                defaults={
                    "description": "Synthetic patients from the PMPD phantom generator. "
                    "Nothing here describes real patients.",
                    "role": Cohort.Role.DEVELOPMENT,
                    "centres": "ES-Madrid, ES-Barcelona, CN-Zhengzhou, NL-Nijmegen, NL-Amsterdam",
                    "is_synthetic": True,
                },
            )
            for username, (_, role) in DEMO_USERS.items():
                if role is not None:
                    Membership.objects.get_or_create(
                        user=users[username], cohort=cohort, defaults={"role": role}
                    )
        return cohort

    def _import_table(self, cohort, coordinator, *, patients: int, seed: int, size: int):
        from inference.pmpd.phantom import iter_cohort, write_clinical_table

        rows = []
        for patient in tqdm(
            iter_cohort(patients, seed=seed, size=size),
            total=patients,
            desc="Generating phantom patients",
            unit="patient",
        ):
            rows.append(patient.clinical)
        path = settings.DATA_DIR / "demo" / "clinical.csv"
        write_clinical_table(rows, path)
        data = path.read_bytes()
        table_import = upload_table(
            cohort=cohort, user=coordinator, data=data, filename="phantom-clinical.csv"
        )
        if table_import.problems:
            raise CommandError(f"The phantom table has problems: {table_import.problems[:3]}")
        with tqdm(total=100, desc="Importing the clinical table", unit="%") as bar:

            def progress(percent: int, phrase: str) -> None:
                bar.set_postfix_str(phrase[:40])
                bar.update(percent - bar.n)

            summary = commit_import(table_import, progress)
            bar.update(100 - bar.n)
        self.stdout.write(f"{cohort}: imported {summary['created']} patients.")

    def _images(
        self, cohort, coordinator, *, patients: int, seed: int, size: int, withheld_masks: int
    ) -> None:
        """Write the phantom images once, then ingest those of patients without a CT yet; the
        last ``withheld_masks`` patients' masks are left out (the demo nnU-Net predicts them)."""
        from inference.pmpd.phantom import (
            PhantomConfig,
            iter_cohort,
            write_dicom_series,
            write_nifti,
        )
        from pmpd_web.imaging.models import ImageSeries
        from pmpd_web.imaging.uploads import run_now, upload_local_path

        if patients <= 0:
            return
        folder = settings.DATA_DIR / "demo" / "images"
        # The table's patients, imaged over 120 mm around the pancreas (the phantom's default
        # 200 mm gives up to 320 thin slices a patient: slow to write and ingest for a demo).
        config = PhantomConfig(size=size, z_extent_mm=DEMO_IMAGE_EXTENT_MM)
        for patient in tqdm(
            iter_cohort(patients, seed=seed, config=config),
            total=patients,
            desc="Writing phantom images",
            unit="patient",
        ):
            target = folder / patient.study_id
            done = target / ".written"
            if done.exists():
                continue
            ct_path, mask_path = write_nifti(patient, target)
            if patient.index % 4 != 3:  # most CTs as DICOM series, every fourth as NIfTI
                write_dicom_series(patient, target / "ct")
                ct_path.unlink()
            done.touch()
        with_ct = set(
            ImageSeries.objects.filter(
                study__patient__cohort=cohort, modality="CT", is_selected=True
            ).values_list("study__patient__study_id", flat=True)
        )
        missing = {
            p.name
            for p in folder.iterdir()
            if p.is_dir() and (p / ".written").exists() and p.name not in with_ct
        }
        missing &= set(cohort.patients.values_list("study_id", flat=True))
        if not missing:
            self.stdout.write(f"{cohort}: images already ingested ({len(with_ct)} patients).")
            return
        imaged = sorted(p.name for p in folder.iterdir() if (p / ".written").exists())
        withheld = set(imaged[-withheld_masks:]) if withheld_masks else set()
        with tqdm(total=len(missing), desc="Storing the image files", unit="file") as bar:

            def on_file(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            upload = upload_local_path(
                cohort=cohort,
                user=coordinator,
                path=folder,
                include=lambda relative: (
                    relative.parts[0] in missing
                    and relative.name != ".written"
                    and not (relative.parts[0] in withheld and relative.name == "mask.nii.gz")
                ),
                on_file=on_file,
            )
        with tqdm(total=100, desc="Ingesting the images", unit="%") as bar:

            def progress(percent: int, phrase: str) -> None:
                bar.set_postfix_str(phrase[:40])
                bar.update(max(0, percent - bar.n))

            job = run_now(upload, coordinator, progress)
            bar.update(100 - bar.n)
        if job.status != "succeeded":
            raise CommandError(f"The demo images failed to ingest: {job.error}")
        self.stdout.write(f"{cohort}: ingested images of {len(missing)} patients.")

    def _print_accounts(self) -> None:
        self.stdout.write(self.style.SUCCESS("\nDemo accounts (local demo only):"))
        for username, (password, role) in DEMO_USERS.items():
            what = role.label if role else "Site administrator (Django admin)"
            self.stdout.write(f"  {username:<13} {password:<24} {what}")
