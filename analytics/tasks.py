"""Celery task of the analytics: compute a selection's dashboards on the cpu queue.

Large selections (see :func:`analytics.services.inline_max_patients`) are analysed here rather
than within the page request; the page polls the job's progress and reloads when the results
are stored. The task takes the job's primary key (the selection is ``Job.parameters``);
computing again what is stored is a no-op.
"""

from __future__ import annotations

from django.http import QueryDict

from analytics import services
from analytics.catalogue import SECTIONS
from pmpd_web.jobs.tasks import job_task

# The services start this task by a lazy import (they are imported by pages that never run
# it): the one lazy side of the pair.


@job_task
def compute_dashboards(job, progress):
    params = services.parse_query(QueryDict(job.parameters["query"]))
    selection = services.selection_for(params)
    sections = services.sections_for(selection, first=job.parameters.get("section"))
    for index, section in enumerate(sections):
        progress(5 + 90 * index // len(sections), f"Computing {SECTIONS[section].lower()}")
        services.section_context(selection, params, section)
    return {"sections": sections}
