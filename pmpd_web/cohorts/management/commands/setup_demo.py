"""Set up the demo: one user per role and a synthetic phantom cohort imported through the
same table import as a coordinator's upload. Safe to run again: it reuses what exists."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from tqdm import tqdm

from pmpd_web.accounts.models import Membership, Role
from pmpd_web.cohorts.importer import commit_import, upload_table
from pmpd_web.cohorts.models import Cohort

DEMO_COHORT = "Demo phantom cohort"
DEMO_USERS = {
    # username: (password, role in the demo cohort or None for the site admin)
    "admin": ("demo-admin-pmpd", None),
    "coordinator": ("demo-coordinator-pmpd", Role.COORDINATOR),
    "clinician": ("demo-clinician-pmpd", Role.CLINICIAN),
    "statistician": ("demo-statistician-pmpd", Role.STATISTICIAN),
}


class Command(BaseCommand):
    help = "Create the demo users and the synthetic demo cohort (local demo only)."

    def add_arguments(self, parser):
        parser.add_argument("--patients", type=int, default=120)
        parser.add_argument("--seed", type=int, default=2025)
        parser.add_argument(
            "--size", type=int, default=64, help="in-plane matrix of the phantom volumes"
        )

    def handle(self, *args, patients: int, seed: int, size: int, **options):
        if getattr(settings, "PRODUCTION", False):
            raise CommandError("The demo has fixed passwords: never run it in production.")
        users = self._users()
        cohort = self._cohort(users)
        if cohort.patients.exists():
            self.stdout.write(f"{cohort}: {cohort.patients.count()} patients already there.")
        else:
            self._import_table(
                cohort, users["coordinator"], patients=patients, seed=seed, size=size
            )
        self._print_accounts()

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

    def _print_accounts(self) -> None:
        self.stdout.write(self.style.SUCCESS("\nDemo accounts (local demo only):"))
        for username, (password, role) in DEMO_USERS.items():
            what = role.label if role else "Site administrator (Django admin)"
            self.stdout.write(f"  {username:<13} {password:<24} {what}")
