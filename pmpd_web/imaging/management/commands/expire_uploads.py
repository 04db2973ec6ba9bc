"""Delete the raw chunks of uploads abandoned before they were complete.

    python manage.py expire_uploads                # uploads idle for 48 hours
    python manage.py expire_uploads --hours 12 --dry-run

Run it daily (cron, or a systemd timer beside the compose stack): an upload the browser never
finished keeps its partial files, which may hold identifying data, until then. With an S3
media store it also aborts the multipart uploads begun that long ago that no receiving upload
writes to any more (their parts are otherwise kept, unseen, by the bucket).
"""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from pmpd_web.imaging.uploads import expire_stale_uploads


class Command(BaseCommand):
    help = "Expire uploads that received no file for --hours: delete their partial files."

    def add_arguments(self, parser):
        parser.add_argument("--hours", type=float, default=48.0)
        parser.add_argument(
            "--dry-run", action="store_true", help="list the uploads without changing them"
        )

    def handle(self, *args, hours: float, dry_run: bool, **options):
        if hours <= 0:
            raise CommandError("--hours must be positive.")
        stale = expire_stale_uploads(older_than=timedelta(hours=hours), dry_run=dry_run)
        verb = "would expire" if dry_run else "expired"
        for upload in stale:
            target = upload.patient.study_id if upload.patient else "bulk"
            self.stdout.write(
                f"{verb}: upload #{upload.pk} into {upload.cohort.name} ({target}), "
                f"idle since {upload.updated_at:%Y-%m-%d %H:%M} UTC"
            )
        self.stdout.write(f"{len(stale)} upload(s) {verb}.")
