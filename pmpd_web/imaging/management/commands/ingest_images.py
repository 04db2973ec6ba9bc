"""Bulk-load images from the server's disk into a cohort, through the same ingest as an upload.

    python manage.py ingest_images --cohort "PanGenEU" /data/pangeneu-ct/
    python manage.py ingest_images --cohort 3 --patient P-0042 --label-tumour 3 scans.zip

A folder holds one sub-folder per study ID (or a manifest CSV with columns file, study_id); a
ZIP the same. With --patient every file goes to that patient.
"""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.imaging.uploads import finish_upload, run_now, upload_local_path
from pmpd_web.jobs.runner import UserFacingError


class Command(BaseCommand):
    help = "Ingest CT and masks from a folder or a ZIP on this server into a cohort."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="a folder or a ZIP archive")
        parser.add_argument("--cohort", required=True, help="the cohort's name or id")
        parser.add_argument("--patient", help="the study ID when every file is one patient's")
        parser.add_argument("--label-pancreas", type=int, default=1)
        parser.add_argument("--label-tumour", type=int, default=2)
        parser.add_argument("--user", help="the coordinator recorded as uploader")
        parser.add_argument(
            "--confirm-shared-source",
            action="store_true",
            help="accept a scan already stored for another patient of the cohort",
        )
        parser.add_argument(
            "--queue", action="store_true", help="queue the ingest for a worker instead of now"
        )

    def handle(self, *args, path: Path, cohort: str, patient: str | None, **options):
        # A number is an id first, then a name (a cohort may be named "2024").
        by_id = Cohort.objects.filter(pk=int(cohort)).first() if cohort.isdigit() else None
        target = by_id if by_id is not None else Cohort.objects.filter(name=cohort).first()
        if target is None:
            raise CommandError(f"No cohort named or numbered {cohort!r}.")
        user = None
        if options["user"]:
            user = User.objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user {options['user']!r}.")
        one_patient = None
        if patient:
            one_patient = Patient.objects.filter(cohort=target, study_id=patient).first()
            if one_patient is None:
                raise CommandError(f"{patient!r} is not a patient of {target}.")
        try:
            with tqdm(desc="Storing the files", unit="file") as bar:

                def on_file(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                upload = upload_local_path(
                    cohort=target,
                    user=user,
                    path=path,
                    patient=one_patient,
                    label_pancreas=options["label_pancreas"],
                    label_tumour=options["label_tumour"],
                    confirm_shared_source=options["confirm_shared_source"],
                    on_file=on_file,
                )
            if options["queue"]:
                job = finish_upload(upload, user)
                self.stdout.write(f"Upload #{upload.pk} queued as job #{job.pk}.")
                return
            with tqdm(total=100, desc="Ingesting", unit="%") as bar:

                def progress(percent: int, phrase: str) -> None:
                    bar.set_postfix_str(phrase[:50])
                    bar.update(max(0, percent - bar.n))

                job = run_now(upload, user, progress)
        except UserFacingError as exc:
            raise CommandError(str(exc)) from None
        upload.refresh_from_db()
        if job.status != "succeeded":
            raise CommandError(f"Upload #{upload.pk} failed: {job.error}")
        summary = upload.summary
        self.stdout.write(
            self.style.SUCCESS(
                f"Upload #{upload.pk}: {summary.get('patients', 0)} patients; CT series added "
                f"{summary.get('ct_added', 0)}, replaced {summary.get('ct_replaced', 0)}, "
                f"unchanged {summary.get('ct_unchanged', 0)}; masks added "
                f"{summary.get('mask_added', 0)}, unchanged {summary.get('mask_unchanged', 0)}."
            )
        )
