"""List (and with --delete remove) files under MEDIA_ROOT that no database row references:
what a killed worker or an interrupted upload left behind."""

from __future__ import annotations

from datetime import timedelta

from django.core.files.storage import default_storage
from django.core.management.base import BaseCommand

from pmpd_web.jobs.files import unreferenced_files


class Command(BaseCommand):
    help = "List files under MEDIA_ROOT that no database row references (--delete removes them)."

    def add_arguments(self, parser):
        parser.add_argument("--delete", action="store_true", help="remove the files listed")
        parser.add_argument(
            "--older-than-minutes",
            type=int,
            default=60,
            help="skip files written more recently (an upload or a job may be writing them)",
        )

    def handle(self, *args, delete: bool, older_than_minutes: int, **options):
        orphans = unreferenced_files(older_than=timedelta(minutes=older_than_minutes))
        for name in orphans:
            self.stdout.write(name)
            if delete:
                default_storage.delete(name)
        verb = "Removed" if delete else "Found"
        self.stderr.write(f"{verb} {len(orphans)} file(s) that no row references.")
