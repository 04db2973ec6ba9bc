"""The permission table of the job pages and actions: every member of the job's cohort sees a
job; only the person who started it (here the coordinator) or a site admin retries or cancels
it; others of the cohort get 403, everyone else 404."""

from __future__ import annotations

import pytest
from permission_table import EVERY_ROLE, USERS, C, assert_answer_for
from rest_framework.test import APIClient

from pmpd_web.jobs.models import Job
from pmpd_web.jobs.tasks import job_task

pytestmark = pytest.mark.django_db


@job_task
def permission_table_work(job, progress):
    return {"ran": True}


# (name, method, path template, roles allowed)
ENDPOINTS = [
    ("job page", "get", "/jobs/{job}/", EVERY_ROLE),
    ("job progress", "get", "/jobs/{job}/progress/", EVERY_ROLE),
    ("job retry", "post", "/jobs/{job}/retry/", {C}),
    ("job cancel", "post", "/jobs/{job}/cancel/", {C}),
    ("api job", "get", "/api/jobs/{job}/", EVERY_ROLE),
    ("api job retry", "post", "/api/jobs/{job}/retry/", {C}),
    ("api job cancel", "post", "/api/jobs/{job}/cancel/", {C}),
]


@pytest.fixture
def world(cohort, members):
    job = Job.objects.create(
        kind=Job.Kind.ANALYSIS,
        cohort=cohort,
        created_by=members[C],
        task=permission_table_work.name,
        phrase="Waiting for the job queue, which was unreachable",
    )
    return {"job": job.pk}


@pytest.mark.sample(keep={"username": ["outsider"]})
@pytest.mark.parametrize("username", USERS)
@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_permission_table(world, members, username, name, method, path, allowed):
    client = APIClient()
    client.force_login(members[username])
    response = getattr(client, method)(path.format(**world))
    may = assert_answer_for(username, allowed, response, path)
    job = Job.objects.get(pk=world["job"])
    if method == "post":
        expected = ("cancelled" if "cancel" in name else "succeeded") if may else "queued"
        assert job.status == expected, (username, name)
    if may and name == "job page":
        assert (b">Retry<" in response.content) == (username in (C, "admin"))


@pytest.mark.parametrize(
    ("name", "method", "path", "allowed"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_anonymous_is_sent_to_login_or_refused(world, name, method, path, allowed):
    response = getattr(APIClient(), method)(path.format(**world))
    if path.startswith("/api/"):
        assert response.status_code == 401
    else:
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert Job.objects.get(pk=world["job"]).status == "queued"
