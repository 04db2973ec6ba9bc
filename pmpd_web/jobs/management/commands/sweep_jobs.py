"""Publish jobs the queue never received or no worker picked up, and remove what dead or
finished attempts left. Every worker runs this at start and every PMPD_JOB_SWEEP_SECONDS
(``pmpd_web.jobs.sweeper``); a site without workers running can call it from cron."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from pmpd_web.jobs.dispatch import sweep


class Command(BaseCommand):
    help = "Publish stranded jobs again and remove files that dead attempts left."

    def handle(self, *args, **options):
        report = sweep()
        self.stdout.write(
            f"Published again: {len(report.republished)} job(s)"
            f"{' ' + str(report.republished) if report.republished else ''}. "
            f"Queue unreachable for: {len(report.unreachable)}. "
            f"Files removed: {report.files_removed}. "
            f"Scratch folders removed: {len(report.scratch_removed)}."
        )
