"""The OpenAPI schema (/api/schema/) fuzzed with schemathesis (issue 9): a logged-in coordinator
of a cohort with patients, an import, predictions and images calls every operation with
generated parameters and bodies. No answer may be a server error, break the schema of its
response, or carry a status code the schema does not document.

Path ids are pinned to the objects of the coordinator's cohort (so the calls reach the code
behind the permission check) or, one call in four, left to the generator (other ids: 404).
Small example budget: ``PMPD_SCHEMATHESIS_EXAMPLES`` per operation (default 4).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from engine_fixtures import make_prediction, make_ready_version
from factories import make_patient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from tablemaker import NON_METASTATIC_ROW, to_csv

from pmpd_web.cohorts.importer import upload_table
from pmpd_web.imaging.models import ImageSeries, ImagingStudy
from pmpd_web.imaging.uploads import DeclaredFile, create_upload, declare_files
from pmpd_web.jobs.models import Job
from pmpd_web.wsgi import application

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

EXAMPLES = int(os.environ.get("PMPD_SCHEMATHESIS_EXAMPLES", "4"))
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]


def api_schema():
    raw = SchemaGenerator().get_schema(request=None, public=True)
    schema = schemathesis.openapi.from_dict(raw)
    schema.app = application
    return raw, schema


@pytest.fixture
def world(cohort, members):
    coordinator = members["coordinator"]
    patient = make_patient(cohort, "P-00001", centre="Barcelona")
    version = make_ready_version(cohort, name="pmpd-schema", is_active=True)
    prediction = make_prediction(patient, version)
    table_import = upload_table(
        cohort=cohort, user=coordinator, data=to_csv([NON_METASTATIC_ROW]), filename="t.csv"
    )
    job = Job.objects.create(kind=Job.Kind.TABLE_IMPORT, cohort=cohort, created_by=coordinator)
    upload = create_upload(cohort=cohort, user=coordinator, patient=patient)
    upload_file = declare_files(upload, [DeclaredFile(name="P-00001/a.dcm", size=3)])[0]
    study = ImagingStudy.objects.create(patient=patient, study_instance_uid="2.25.7")
    series = ImageSeries.objects.create(
        study=study,
        series_instance_uid="2.25.8",
        modality="CT",
        geometry={"size": [8, 8, 8], "spacing": [1, 1, 1], "origin": [0, 0, 0]},
    )
    pinned = {
        "cohort_pk": cohort.pk,
        "study_id": patient.study_id,
        "prediction_id": prediction.pk,
        "index": 0,
        "upload_pk": upload.pk,
    }
    # "pk"/"id" of each collection: the object of that kind in the cohort.
    by_collection = {
        "cohorts": cohort.pk,
        "imports": table_import.pk,
        "jobs": job.pk,
        "model-versions": version.pk,
        "image-uploads": upload.pk,
        "files": upload_file.pk,
        "image-series": series.pk,
    }
    return coordinator, pinned, by_collection


@pytest.fixture
def keep_the_test_connection():
    """The WSGI handler closes the database connection after each request (and with it the
    test's transaction); Django's test client keeps it the same way."""
    signals = (request_started, request_finished)
    for signal in signals:
        signal.disconnect(close_old_connections)
    yield
    for signal in signals:
        signal.connect(close_old_connections)


def logged_in(user) -> dict[str, dict[str, str]]:
    """The session and CSRF cookies of a logged-in browser, and its CSRF header."""
    client = Client()
    client.force_login(user)
    csrf = "c" * 32
    return {
        "cookies": {"sessionid": client.cookies["sessionid"].value, "csrftoken": csrf},
        "headers": {"X-CSRFToken": csrf},
    }


def pin(case, pinned: dict, by_collection: dict) -> None:
    for name in list(case.path_parameters or {}):
        if name in pinned:
            case.path_parameters[name] = pinned[name]
        elif name in ("pk", "id"):
            parts = [part for part in case.path.split("/") if part and "{" not in part]
            collection = parts[-1] if parts[-1] in by_collection else parts[-2]
            case.path_parameters[name] = by_collection.get(collection, 1)


def test_the_schema_documents_every_api_route():
    raw, _schema = api_schema()
    assert len(raw["paths"]) > 30
    for path, operations in raw["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"401", "403", "404"} <= codes, (method, path, codes)


def fuzz(operation, *, browser: dict, pinned: dict, by_collection: dict) -> list[str]:
    """Call ``operation`` with ``EXAMPLES`` generated cases; one line per failure."""
    failures = []

    @given(case=operation.as_strategy(), keep_random=st.integers(0, 3))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case, keep_random):
        if keep_random:
            pin(case, pinned, by_collection)
        response = case.call(**browser)
        try:
            case.validate_response(response, checks=CHECKS, headers=browser["headers"])
        except FailureGroup as exc:  # every failing operation is reported, not only the first
            found = "; ".join(
                sorted({f"{failure.title}: {failure.message[:300]}" for failure in exc.exceptions})
            )
            failures.append(
                f"{operation.method.upper()} {operation.path} -> {response.status_code}: {found}"
            )

    run()
    return failures


def test_schemathesis_finds_no_server_error_nor_schema_violation(world, keep_the_test_connection):
    coordinator, pinned, by_collection = world
    browser = logged_in(coordinator)
    _raw, schema = api_schema()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    failures = [
        failure
        for operation in operations
        for failure in fuzz(operation, browser=browser, pinned=pinned, by_collection=by_collection)
    ]
    unique = sorted(set(failures))
    assert not unique, f"{len(unique)} failures:\n" + "\n".join(unique)
