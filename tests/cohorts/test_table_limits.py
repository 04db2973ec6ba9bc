"""Issue 9 item 16: a clinical table has a row limit (PMPD_TABLE_MAX_ROWS), refused with a clear
message before it is all read, and a large table (over PMPD_TABLE_PREVIEW_JOB_BYTES) is
previewed by a job whose progress the import page shows, for CSV and XLSX alike."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient
from tablemaker import rows, to_csv, to_xlsx

from pmpd_web.cohorts import tasks
from pmpd_web.cohorts.importer import start_commit
from pmpd_web.cohorts.models import Patient, TableImport
from pmpd_web.cohorts.parsing import read_table
from pmpd_web.cohorts.table import TableError
from pmpd_web.jobs.models import Job
from pmpd_web.jobs.runner import UserFacingError

FORMATS = {"csv": to_csv, "xlsx": to_xlsx}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_table_over_the_row_limit_is_refused_naming_the_limit(fmt):
    data = FORMATS[fmt](rows(6))
    assert len(read_table(data, f"t.{fmt}", max_bytes=10**7, max_rows=6).records) == 6
    with pytest.raises(TableError) as refused:
        read_table(data, f"big.{fmt}", max_bytes=10**7, max_rows=5)
    message = str(refused.value)
    assert message.startswith(f"big.{fmt}: 6 rows below the header")
    assert "over the limit of 5 (PMPD_TABLE_MAX_ROWS)" in message


def test_an_xlsx_of_empty_formatted_rows_is_refused_from_its_dimension():
    import io

    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(to_xlsx(rows(2))))
    book.active.cell(row=500_000, column=1).number_format = "0.00"  # a formatted, empty row
    book.active.cell(row=500_000, column=1).value = ""
    out = io.BytesIO()
    book.save(out)
    with pytest.raises(TableError, match="499,999 rows below the header"):
        read_table(out.getvalue(), "empty.xlsx", max_bytes=10**7, max_rows=1000)


@pytest.mark.django_db
def test_pages_and_api_refuse_past_the_row_limit_and_change_nothing(
    settings, client_for, cohort, members
):
    settings.PMPD_TABLE_MAX_ROWS = 5
    client = client_for(members["coordinator"])
    page = client.post(
        reverse("table-import", args=[cohort.pk]),
        {"table": SimpleUploadedFile("big.csv", to_csv(rows(6)))},
    )
    assert page.status_code == 200 and b"over the limit of 5 (PMPD_TABLE_MAX_ROWS)" in page.content
    api = APIClient()
    api.force_login(members["coordinator"])
    answer = api.post(
        f"/api/cohorts/{cohort.pk}/imports/",
        {"file": SimpleUploadedFile("big.xlsx", to_xlsx(rows(6)))},
    )
    assert answer.status_code == 400
    assert "over the limit of 5 (PMPD_TABLE_MAX_ROWS)" in str(answer.json()["file"])
    assert TableImport.objects.count() == 0 and Patient.objects.count() == 0


def queued() -> list[int]:
    """Preview jobs waiting for a worker: the test's transaction never commits, so the outbox
    publishes nothing and the test runs the task itself, as a worker would."""
    return list(
        Job.objects.filter(kind=Job.Kind.TABLE_IMPORT, status="queued").values_list("pk", flat=True)
    )


@pytest.mark.slow
@pytest.mark.django_db
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_large_table_is_previewed_by_a_job_with_progress(
    settings, client_for, cohort, members, fmt
):
    data = FORMATS[fmt](rows(1500))
    settings.PMPD_TABLE_PREVIEW_JOB_BYTES = len(data) - 1
    client = client_for(members["coordinator"])
    response = client.post(
        reverse("table-import", args=[cohort.pk]), {"table": SimpleUploadedFile(f"t.{fmt}", data)}
    )
    table_import = TableImport.objects.get()
    assert response.status_code == 302 and table_import.status == "previewing"
    job = table_import.job
    assert queued() == [job.pk] and job.kind == Job.Kind.TABLE_IMPORT
    assert job.parameters["table_import"] == table_import.pk
    page = client.get(response["Location"])
    assert b"Checking the table" in page.content and b'role="progressbar"' in page.content
    assert reverse("job-progress", args=[job.pk]).encode() in page.content
    with pytest.raises(UserFacingError, match="only a previewed table"):
        start_commit(table_import, members["coordinator"])

    tasks.preview_table_import(job.pk)  # what the worker runs
    table_import.refresh_from_db()
    job.refresh_from_db()
    assert table_import.status == "previewed" and table_import.summary["created"] == 1500
    assert job.status == "succeeded" and job.result["rows"] == 1500
    progress = client.get(reverse("job-progress", args=[job.pk]))
    assert b"Show the result of the check" in progress.content
    assert b"1500</span> new patients" in client.get(response["Location"]).content
    assert Patient.objects.count() == 0  # a preview changes nothing


@pytest.mark.django_db
def test_a_large_table_over_the_row_limit_fails_its_preview_with_the_reason(
    settings, cohort, members
):
    settings.PMPD_TABLE_PREVIEW_JOB_BYTES = 10
    settings.PMPD_TABLE_MAX_ROWS = 3
    api = APIClient()
    api.force_login(members["coordinator"])
    created = api.post(
        f"/api/cohorts/{cohort.pk}/imports/",
        {"file": SimpleUploadedFile("big.csv", to_csv(rows(4)))},
    )
    assert created.status_code == 201 and created.json()["status"] == "previewing"
    tasks.preview_table_import(queued()[0])
    checked = api.get(f"/api/cohorts/{cohort.pk}/imports/{created.json()['id']}/").json()
    assert checked["status"] == "invalid"
    assert "over the limit of 3 (PMPD_TABLE_MAX_ROWS)" in checked["problems"][0]["message"]
