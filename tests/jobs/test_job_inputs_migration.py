"""Job inputs live in ``Job.parameters`` (issue 15, item 3): the migration moves the inputs of
existing jobs there from their result (or from the row pointing at the job), and names their
task, so that ``manage.py sweep_jobs`` can publish those still queued."""

from __future__ import annotations

import importlib
import io

import pytest
from django.apps import apps
from django.core.management import call_command
from tablemaker import rows, to_csv

from pmpd_web.cohorts.importer import upload_table
from pmpd_web.cohorts.models import TableImport
from pmpd_web.jobs.models import Job, JobStatus

pytestmark = pytest.mark.django_db

migration = importlib.import_module("pmpd_web.jobs.migrations.0003_job_outbox_heartbeat_parameters")


def test_existing_jobs_get_their_parameters_and_task(cohort, members, monkeypatch):
    scoring = Job.objects.create(
        kind=Job.Kind.SCORING, cohort=cohort, result={"model_version": 7, "scored": 3}
    )
    scoring.update_status(JobStatus.RUNNING)
    scoring.update_status(JobStatus.SUCCEEDED, result={"model_version": 7, "scored": 3})
    analysis = Job.objects.create(
        kind=Job.Kind.ANALYSIS,
        cohort=cohort,
        result={"scope": "s", "query": "cohort=1", "section": "survival"},
    )
    table_import = upload_table(
        cohort=cohort, user=members["coordinator"], data=to_csv(rows(2)), filename="t.csv"
    )
    importing = Job.objects.create(kind=Job.Kind.TABLE_IMPORT, cohort=cohort)
    TableImport.objects.filter(pk=table_import.pk).update(job=importing, status="committing")

    migration.move_inputs(apps, None)

    scoring, analysis, importing = (
        Job.objects.get(pk=j.pk) for j in (scoring, analysis, importing)
    )
    assert scoring.parameters == {"model_version": 7}
    assert scoring.task == "inference.tasks.gpu_score_cohort" and scoring.published_at
    assert analysis.parameters == {"scope": "s", "query": "cohort=1", "section": "survival"}
    assert importing.parameters == {"table_import": table_import.pk}
    assert importing.task == "pmpd_web.cohorts.tasks.commit_table_import"
    # Still queued and never published by the new code: the sweeper publishes them.
    assert analysis.waiting_for_queue and importing.waiting_for_queue

    sent = []
    from pmpd_web.cohorts import tasks as cohort_tasks

    monkeypatch.setattr(
        cohort_tasks.commit_table_import, "apply_async", lambda args, **kw: sent.append(args)
    )
    from analytics import tasks as analytics_tasks

    monkeypatch.setattr(
        analytics_tasks.compute_dashboards, "apply_async", lambda args, **kw: sent.append(args)
    )
    Job.objects.filter(pk__in=[analysis.pk, importing.pk]).update(
        created_at=importing.created_at.replace(year=2020)
    )
    out = io.StringIO()
    call_command("sweep_jobs", stdout=out)
    assert sorted(sent) == sorted([[analysis.pk], [importing.pk]])
    assert "Published again: 2 job(s)" in out.getvalue()
