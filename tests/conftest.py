"""Fixtures shared by the Django tests: users for each role, a cohort, a logged-in client."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest
import template_db
from django.contrib.auth.models import User
from factories import make_cohort, make_user
from fast_sample import fast_sample

from pmpd_web.accounts.models import Membership, Role
from pmpd_web.cohorts.models import Cohort


def _flush_past_the_audit_guard() -> None:
    """Transactional tests end with Django's flush, a TRUNCATE of every table, which the audit
    trail's trigger refuses (as it should in a deployment): the flush's own transaction sets
    the session to replica mode, where ordinary triggers do not fire (superuser only)."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    sql_flush = DatabaseOperations.sql_flush

    def flush(self, style, tables, **kwargs):
        statements = sql_flush(self, style, tables, **kwargs)
        return ["SET LOCAL session_replication_role = replica", *statements] if statements else []

    DatabaseOperations.sql_flush = flush


_flush_past_the_audit_guard()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "sample(keep, every, cover): a table test; make test-fast runs a sample of its cases "
        "(tests/support/fast_sample.py)",
    )


def _module_markers(path: Path) -> set[str]:
    """The markers a test module puts on all its tests (``pytestmark = ...``), read from its
    source without importing it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            return {
                sub.attr
                for sub in ast.walk(node.value)
                if isinstance(sub, ast.Attribute) and ast.unparse(sub.value) == "pytest.mark"
            }
    return set()


def pytest_ignore_collect(collection_path: Path, config):
    """With ``-m "not e2e and not worker and not slow"`` (make test-fast), the modules whose
    every test carries a left-out marker (and tests/e2e) are not even imported: their imports
    (the browser driver, schemathesis and hypothesis, SeaweedFS's client) cost each process
    seconds. Other marker expressions collect everything."""
    expression = config.getoption("markexpr") or ""
    if not re.fullmatch(r"not \w+( and not \w+)*", expression.strip()):
        return None
    left_out = set(re.findall(r"not (\w+)", expression))
    if collection_path.is_dir():
        return True if collection_path.name in left_out else None
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return True if _module_markers(collection_path) & left_out else None
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Table tests (``@pytest.mark.sample``) run whole in ``make test``; the cases outside
    their sample are marked ``slow``, so that ``make test-fast`` runs the sample only."""
    tables = defaultdict(list)
    for item in items:
        if item.get_closest_marker("sample") is not None and hasattr(item, "callspec"):
            tables[(item.parent.nodeid, item.originalname)].append(item)
    for cases in tables.values():
        options = cases[0].get_closest_marker("sample").kwargs
        kept = fast_sample([case.callspec.params for case in cases], **options)
        for position, case in enumerate(cases):
            if position not in kept:
                case.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def django_db_setup(
    request, django_test_environment, django_db_blocker, django_db_modify_db_settings
):
    """The test database: on PostgreSQL a copy of a migrated template (``template_db``), else
    pytest-django's own (migrated) test database."""
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    if connection.vendor != "postgresql":
        with django_db_blocker.unblock():
            created = setup_databases(verbosity=0, interactive=False)
        yield
        with django_db_blocker.unblock():
            teardown_databases(created, verbosity=0)
        return
    worker = getattr(request.config, "workerinput", {}).get("workerid")
    test_name = connection.creation._get_test_db_name()
    with django_db_blocker.unblock():
        template_db.create_from_template(
            connection,
            test_name=test_name,
            template=template_db.template_name(test_name, worker=worker),
            rebuild=request.config.getoption("create_db"),
        )
    from django.conf import settings

    settings.DATABASES[connection.alias]["NAME"] = test_name
    yield
    with django_db_blocker.unblock():
        template_db.drop(connection, test_name)


@pytest.fixture(autouse=True)
def _media_and_eager(settings, tmp_path):
    # Work queued on commit (starting a job) runs in a test that starts it inside
    # ``django_capture_on_commit_callbacks(execute=True)``: the test's transaction never commits.
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PMPD_JOB_SCRATCH_DIR = tmp_path / "job-scratch"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    from django.core.cache import cache

    from pmpd_web.celery import app

    # The API's rate counters live in the cache: each test starts with none.
    cache.clear()
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def cohort(db) -> Cohort:
    return make_cohort()


@pytest.fixture
def other_cohort(db) -> Cohort:
    return make_cohort("Other cohort")


@pytest.fixture
def members(cohort, other_cohort) -> dict[str, User]:
    """One user per role in ``cohort``, an outsider (coordinator of another cohort), a site
    admin and a user with no membership at all."""
    users = {}
    for role in Role:
        user = make_user(role.value, can_create_cohorts=role == Role.COORDINATOR)
        Membership.objects.create(user=user, cohort=cohort, role=role)
        users[role.value] = user
    outsider = make_user("outsider", can_create_cohorts=True)
    Membership.objects.create(user=outsider, cohort=other_cohort, role=Role.COORDINATOR)
    users["outsider"] = outsider
    users["nobody"] = make_user("nobody")
    users["admin"] = User.objects.create_superuser("admin", password="pw-admin")
    return users


@pytest.fixture
def client_for(client):
    def login(user: User):
        client.force_login(user)
        return client

    return login
