"""Celery task of the analytics: compute a selection's dashboards on the cpu queue.

Large selections (see :func:`analytics.services.inline_max_patients`) are analysed here rather
than within the page request; the page polls the job's progress and reloads when the results
are stored. The task takes the job's primary key; computing again what is stored is a no-op.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.http import QueryDict

from pmpd_web.jobs.runner import TRANSIENT_ERRORS, run_job


@shared_task(
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=settings.CELERY_TASK_MAX_RETRIES,
    retry_backoff=True,
)
def compute_dashboards(self, job_id: int) -> None:
    from analytics import services
    from analytics.catalogue import SECTIONS

    def work(job, progress):
        params = services.parse_query(QueryDict(job.result["query"]))
        selection = services.selection_for(params)
        sections = services.sections_for(selection, first=job.result.get("section"))
        for index, section in enumerate(sections):
            progress(5 + 90 * index // len(sections), f"Computing {SECTIONS[section].lower()}")
            services.section_context(selection, params, section)
        return {**job.result, "sections": sections}

    run_job(job_id, work)
