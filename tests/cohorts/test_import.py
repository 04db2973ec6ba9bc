"""Importing and exporting clinical tables through the pages and the API, against the database."""

from __future__ import annotations

import html

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient
from tablemaker import GOOD_ROW, NON_METASTATIC_ROW, rows, to_csv, to_xlsx

from pmpd_web.accounts.models import AuditEvent
from pmpd_web.cohorts.models import Patient, TableImport
from pmpd_web.cohorts.parsing import read_table
from pmpd_web.jobs.models import Job

pytestmark = pytest.mark.django_db


def snapshot(cohort):
    return sorted(
        Patient.objects.filter(cohort=cohort).values_list(
            "study_id",
            "age_at_diagnosis_years",
            "ca19_9_u_per_ml",
            "metastasis_at_diagnosis",
            "site_liver",
            "overall_survival_days",
            "updated_at",
        )
    )


def upload(client, cohort, data: bytes, name: str = "table.csv"):
    return client.post(
        reverse("table-import", args=[cohort.pk]),
        {"table": SimpleUploadedFile(name, data)},
    )


def commit(client, cohort, import_id: int, capture):
    """Commit through the page; the job is published when the (test's) transaction commits."""
    with capture(execute=True):
        return client.post(reverse("table-import-commit", args=[cohort.pk, import_id]))


def test_preview_then_commit_through_the_pages(
    client_for, cohort, members, django_capture_on_commit_callbacks
):
    client = client_for(members["coordinator"])
    response = upload(client, cohort, to_csv([GOOD_ROW, NON_METASTATIC_ROW]))
    table_import = TableImport.objects.get()
    assert response.status_code == 302
    assert table_import.status == "previewed"
    assert table_import.summary["created"] == 2
    assert Patient.objects.count() == 0  # a preview changes nothing
    page = client.get(reverse("table-import-detail", args=[cohort.pk, table_import.pk]))
    assert b"2</span> new patients" in page.content

    commit(client, cohort, table_import.pk, django_capture_on_commit_callbacks)
    table_import.refresh_from_db()
    assert table_import.status == "committed"
    assert table_import.job.status == "succeeded" and table_import.job.progress == 100
    assert Patient.objects.filter(cohort=cohort).count() == 2
    cohort.refresh_from_db()
    assert cohort.data_version == 1
    assert AuditEvent.objects.filter(action="import_commit", cohort=cohort).count() == 1
    progress = client.get(reverse("job-progress", args=[table_import.job.pk]))
    assert b"Succeeded" in progress.content and b"hx-get" not in progress.content


def test_reimport_updates_by_study_id_and_counts(
    client_for, cohort, members, django_capture_on_commit_callbacks
):
    client = client_for(members["coordinator"])
    upload(client, cohort, to_csv(rows(5)))
    commit(client, cohort, TableImport.objects.get().pk, django_capture_on_commit_callbacks)
    changed = rows(6)
    changed[0]["age_at_diagnosis_years"] = "77"
    upload(client, cohort, to_csv(changed))
    second = TableImport.objects.order_by("-pk").first()
    assert (second.summary["created"], second.summary["updated"], second.summary["unchanged"]) == (
        1,
        1,
        4,
    )
    assert second.summary["changed_fields"] == {"age_at_diagnosis_years": 1}
    commit(client, cohort, second.pk, django_capture_on_commit_callbacks)
    second.refresh_from_db()
    assert second.job.result["updated"] == 1
    assert Patient.objects.get(cohort=cohort, study_id="P-00001").age_at_diagnosis_years == 77


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "name", "expected"),
    [
        (
            to_csv([{**GOOD_ROW, "nccn_resectability": "operable"}]),
            "t.csv",
            "'operable' is not one of",
        ),
        (to_csv([GOOD_ROW, GOOD_ROW]), "t.csv", "already appears in row 2"),
        (
            to_csv([{**NON_METASTATIC_ROW, "metastasis_sites": "lung"}]),
            "t.csv",
            "sites are allowed only when",
        ),
        (
            to_csv([{**NON_METASTATIC_ROW, "overall_survival_days": "-1"}]),
            "t.csv",
            "must be 0 or more days",
        ),
        (to_xlsx([GOOD_ROW], formulas={"C2": "=A1"}), "t.xlsx", "contains a formula"),
    ],
)
def test_bad_tables_change_nothing(
    client_for, cohort, members, data, name, expected, django_capture_on_commit_callbacks
):
    client = client_for(members["coordinator"])
    upload(client, cohort, to_csv([NON_METASTATIC_ROW]))
    commit(client, cohort, TableImport.objects.get().pk, django_capture_on_commit_callbacks)
    before = snapshot(cohort)
    response = upload(client, cohort, data, name)
    bad = TableImport.objects.order_by("-pk").first()
    assert bad.status == "invalid"
    page = client.get(response["Location"])
    assert html.escape(expected).encode() in page.content
    assert b"nothing was imported" in page.content
    refused = client.post(reverse("table-import-commit", args=[cohort.pk, bad.pk]), follow=True)
    assert b"only a previewed table" in refused.content
    assert snapshot(cohort) == before


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", "the file is empty"), ("Málaga".encode("latin-1"), "not UTF-8")],
)
def test_unreadable_files_are_refused_on_the_page(client_for, cohort, members, data, expected):
    client = client_for(members["coordinator"])
    response = upload(client, cohort, data)
    assert response.status_code == 200
    assert expected.encode() in response.content
    assert not TableImport.objects.exists()


def test_file_over_the_limit(client_for, cohort, members, settings):
    settings.PMPD_TABLE_MAX_BYTES = 500
    response = upload(client_for(members["coordinator"]), cohort, to_csv(rows(20)))
    assert b"over the limit of 0.0 MB" in response.content
    assert not Patient.objects.exists()


def test_commit_is_all_or_nothing_when_the_database_refuses(
    client_for, cohort, members, monkeypatch, django_capture_on_commit_callbacks
):
    client = client_for(members["coordinator"])
    upload(client, cohort, to_csv(rows(30)))
    table_import = TableImport.objects.get()
    from pmpd_web.cohorts import importer

    original = importer.copy_csv
    written = []

    def explode(cursor, table, columns, data):
        # A third written when it fails. (This stand-in replaced insert_patients, with a
        # signature it no longer had: it failed before writing anything.)
        written.append(original(cursor, table, columns, b"".join(data.splitlines(True)[:10])))
        raise RuntimeError("disk full")

    monkeypatch.setattr(importer, "copy_csv", explode)
    commit(client, cohort, table_import.pk, django_capture_on_commit_callbacks)
    job = Job.objects.get()
    assert written == [10]
    assert job.status == "failed" and "Internal error" in job.error
    assert Patient.objects.count() == 0
    table_import.refresh_from_db()
    assert table_import.status == "failed"


@pytest.mark.slow
def test_stale_preview_is_rechecked_on_commit(
    client_for, cohort, members, django_capture_on_commit_callbacks
):
    client = client_for(members["coordinator"])
    upload(client, cohort, to_csv(rows(3)))
    first = TableImport.objects.get()
    upload(client, cohort, to_csv(rows(3)))
    second = TableImport.objects.order_by("-pk").first()
    commit(client, cohort, first.pk, django_capture_on_commit_callbacks)
    commit(client, cohort, second.pk, django_capture_on_commit_callbacks)
    second.refresh_from_db()
    assert second.job.result["created"] == 0 and second.job.result["unchanged"] == 3


@pytest.mark.slow
def test_export_then_import_gives_back_the_same_data(
    client_for, cohort, members, django_capture_on_commit_callbacks
):
    client = client_for(members["coordinator"])
    source = rows(12)
    source[1]["centre"] = '=HYPERLINK("x")'
    source[2]["ct_manufacturer"] = "@Philips"
    upload(client, cohort, to_csv(source))
    commit(client, cohort, TableImport.objects.get().pk, django_capture_on_commit_callbacks)
    original = read_table(to_csv(source), "s.csv", max_bytes=10**7).records
    for fmt in ("csv", "xlsx"):
        response = client.get(reverse("export", args=[cohort.pk, fmt]))
        assert response.status_code == 200
        data = b"".join(response.streaming_content) if response.streaming else response.content
        if fmt == "csv":
            assert b"'=HYPERLINK" in data and b"'@Philips" in data
        exported = read_table(data, f"export.{fmt}", max_bytes=10**7)
        assert exported.ok, exported.problems
        assert sorted(exported.records, key=lambda r: r["study_id"]) == sorted(
            original, key=lambda r: r["study_id"]
        )
        # and importing the export back changes nothing
        upload(client, cohort, data, f"export.{fmt}")
        assert TableImport.objects.order_by("-pk").first().summary["unchanged"] == 12
    assert AuditEvent.objects.filter(action="export_table").count() == 2


def test_template_downloads(client_for, members):
    client = client_for(members["coordinator"])
    csv_template = client.get(reverse("template", args=["csv"]))
    assert csv_template.content.decode().startswith("study_id,age_at_diagnosis_years,sex,")
    xlsx = client.get(reverse("template", args=["xlsx"]))
    import io

    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(xlsx.content))
    assert book.sheetnames == ["patients", "columns"]
    documented = [row[0].value for row in book["columns"].iter_rows(min_row=2)]
    assert "nccn_resectability" in documented


def test_import_through_the_api(cohort, members, django_capture_on_commit_callbacks):
    from factories import make_token_key

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {make_token_key(members['coordinator'])}")
    url = f"/api/cohorts/{cohort.pk}/imports/"
    bad = api.post(url, {"file": SimpleUploadedFile("t.csv", to_csv([GOOD_ROW, GOOD_ROW]))})
    assert bad.status_code == 201 and bad.json()["status"] == "invalid"
    assert bad.json()["problems"] == [
        {"row": 3, "column": "study_id", "message": "'P-001' already appears in row 2"}
    ]
    empty = api.post(url, {"file": SimpleUploadedFile("t.csv", b"")})
    assert empty.status_code == 400 and "the file is empty" in empty.json()["file"]
    good = api.post(url, {"file": SimpleUploadedFile("t.xlsx", to_xlsx(rows(4)))})
    assert good.json()["summary"]["created"] == 4
    with django_capture_on_commit_callbacks(execute=True):
        job = api.post(f"{url}{good.json()['id']}/commit/").json()
    assert api.get(f"/api/jobs/{job['id']}/").json()["status"] == "succeeded"
    patients = api.get(f"/api/cohorts/{cohort.pk}/patients/?sex=male&ordering=-study_id").json()
    assert [p["study_id"] for p in patients["results"]] == ["P-00004", "P-00002", "P-00001"]
    export = api.get(f"/api/cohorts/{cohort.pk}/export/?file_format=csv")
    assert export.content.count(b"\r\n") == 5


def test_the_copy_writes_exactly_the_checked_values(cohort, members):
    """Issue 14 item 4 (import speed): the COPY's CSV is now built by columns, not by a data
    frame and ``to_csv``. What it writes must equal the checked model values (``records``,
    what the ORM path writes): quotes, commas, line breaks and accents in text, empty text kept
    as empty text, blank numbers as NULL, decimals at their places, the sites as booleans."""
    from pmpd_web.cohorts.importer import commit_import, upload_table

    table = rows(6)
    table[0]["centre"] = 'Hôpital "Nord", Lyon'
    table[1]["centre"] = "two\nlines"
    table[2]["centre"] = ""
    table[3]["ca19_9_u_per_ml"] = ""
    table[4]["ca19_9_u_per_ml"] = "37.5"
    table[5]["tumour_size_mm"] = "31.2"
    data = to_csv(table)
    parsed = read_table(data, "t.csv", max_bytes=10**6)
    assert parsed.ok, parsed.problems
    preview = upload_table(cohort=cohort, user=members["coordinator"], data=data, filename="t.csv")
    commit_import(preview, lambda p, s: None)
    fields = [name for name in parsed.records[0] if name != "study_values"]
    stored = {
        row["study_id"]: row
        for row in Patient.objects.filter(cohort=cohort).values(*fields, "study_values")
    }
    for record in parsed.records:
        row = stored[record["study_id"]]
        for name, value in record.items():
            assert row[name] == value, (record["study_id"], name, row[name], value)
    assert stored["P-00001"]["centre"] == 'Hôpital "Nord", Lyon'
    assert stored["P-00002"]["centre"] == "two\nlines"
    assert stored["P-00003"]["centre"] == "" and stored["P-00004"]["ca19_9_u_per_ml"] is None


def test_a_commit_of_an_unchanged_cohort_does_not_read_its_patients_again(cohort, members):
    """Issue 14 item 4 (import speed): the commit compared the rows with the cohort's patients
    again although the preview had, against the same cohort state; the preview's plan is now
    kept with its checked rows, and the commit writes it without reading the patients."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from pmpd_web.cohorts.importer import commit_import, upload_table

    user = members["coordinator"]
    first = upload_table(cohort=cohort, user=user, data=to_csv(rows(4)), filename="t.csv")
    commit_import(first, lambda p, s: None)
    changed = rows(5)
    changed[0]["centre"] = "Lyon"
    again = upload_table(cohort=cohort, user=user, data=to_csv(changed), filename="t.csv")
    with CaptureQueriesContext(connection) as queries:
        summary = commit_import(again, lambda p, s: None)
    assert summary["checked_at_preview"]
    assert (summary["created"], summary["updated"], summary["unchanged"]) == (1, 1, 3)
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('SELECT "id", ')]
    assert reads == [], reads
    assert Patient.objects.get(cohort=cohort, study_id="P-00001").centre == "Lyon"
    assert Patient.objects.filter(cohort=cohort).count() == 5


def test_changed_patients_are_written_by_one_update_from_a_copy(cohort, members):
    """Issue 14 item 4 (import speed): the changed patients of a re-import were written with
    bulk_update (a CASE per row and field: 5.5 s for 10,000 changed patients); now one COPY
    into a temporary table and one UPDATE from it. The values are the plan's: changed text
    with quotes, a number blanked to NULL, a study variable changed while another one the file
    has no column for is kept."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from pmpd_web.cohorts.importer import commit_import, upload_table
    from pmpd_web.cohorts.models import StudyVariable, table_columns

    StudyVariable.objects.create(
        cohort=cohort, name="ecog", label="ECOG", kind="choice", choices=["0", "1", "2"]
    )
    StudyVariable.objects.create(cohort=cohort, name="weight_loss_pct", label="W", kind="number")
    user = members["coordinator"]
    names = [c.name for c in table_columns(cohort)]
    first = [{**row, "ecog": "0", "weight_loss_pct": "2.5"} for row in rows(4)]
    commit_import(
        upload_table(cohort=cohort, user=user, data=to_csv(first, columns=names), filename="a"),
        lambda p, s: None,
    )
    changed = [{**row, "ecog": "0"} for row in rows(4)]
    changed[0]["centre"] = 'Centre "Est", Nancy'
    changed[1]["ecog"] = "2"
    changed[2]["ca19_9_u_per_ml"] = ""  # P-00003 has a value
    without_weight = [n for n in names if n != "weight_loss_pct"]
    again = upload_table(
        cohort=cohort, user=user, data=to_csv(changed, columns=without_weight), filename="b"
    )
    assert again.summary["updated"] == 3, again.summary
    with CaptureQueriesContext(connection) as queries:
        commit_import(again, lambda p, s: None)
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    patient_updates = [sql for sql in updates if '"cohorts_patient"' in sql.split(" SET ")[0]]
    assert len(patient_updates) == 1 and "CASE" not in patient_updates[0], patient_updates
    stored = {p.study_id: p for p in Patient.objects.filter(cohort=cohort)}
    assert stored["P-00001"].centre == 'Centre "Est", Nancy'
    assert stored["P-00003"].ca19_9_u_per_ml is None
    assert stored["P-00002"].study_values == {"ecog": "2", "weight_loss_pct": 2.5}
    assert stored["P-00004"].study_values == {"ecog": "0", "weight_loss_pct": 2.5}
    assert stored["P-00004"].updated_at < stored["P-00001"].updated_at
    original = {r["study_id"]: r for r in rows(4)}
    for study_id, patient in stored.items():
        assert patient.age_at_diagnosis_years == int(original[study_id]["age_at_diagnosis_years"])
        assert patient.metastasis_at_diagnosis == original[study_id]["metastasis_at_diagnosis"]


class _RunsWhenUnpickled:
    """Unpickling this creates ``path``: a stand-in for code a tampered pickle would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_preview_kept_as_a_pickle_is_checked_again_never_unpickled(cohort, members, tmp_path):
    """Issue 14 item 4: the preview's checked rows were a pickle in the database, unpickled by
    the commit (a row changed in the database would run code in the worker). They are arrays
    now; a preview kept in the old form is read and checked again from its file."""
    import pickle
    import zlib

    from pmpd_web.cohorts.importer import commit_import, upload_table

    preview = upload_table(
        cohort=cohort, user=members["coordinator"], data=to_csv(rows(3)), filename="t.csv"
    )
    marker = tmp_path / "unpickled"
    TableImport.objects.filter(pk=preview.pk).update(
        checked=zlib.compress(pickle.dumps(_RunsWhenUnpickled(marker)), 1)
    )
    preview.refresh_from_db()
    summary = commit_import(preview, lambda p, s: None)
    assert not marker.exists()
    assert summary["checked_at_preview"] is False and summary["created"] == 3
    imported = Patient.objects.filter(cohort=cohort)
    assert imported.count() == 3
    # The COPY leaves both times to the database's clock: one time for the whole import.
    times = set(imported.values_list("created_at", "updated_at"))
    assert len(times) == 1 and len(set(next(iter(times)))) == 1


def test_the_cohort_state_is_two_queries_and_sees_every_change(cohort, other_cohort):
    """What a preview is checked against: one query for the data version and the patients (one
    pass over them), one for the study variables. Any change of the cohort's patients, version
    or variables changes it; another cohort's changes do not."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from factories import make_patient

    from pmpd_web.cohorts.importer import cohort_state
    from pmpd_web.cohorts.models import StudyVariable

    with CaptureQueriesContext(connection) as queries:
        state, columns = cohort_state(cohort)
    assert len(queries.captured_queries) == 2
    assert [c.name for c in columns][:1] == ["study_id"]
    seen = {state}

    def changed() -> None:
        now, _ = cohort_state(cohort)
        assert now not in seen
        seen.add(now)

    make_patient(other_cohort, "P-1")
    assert cohort_state(cohort)[0] == state
    patient = make_patient(cohort, "P-1")
    changed()
    patient.centre = "Lyon"
    patient.save()  # the same count, a later change
    changed()
    cohort.bump_data_version()
    changed()
    variable = StudyVariable.objects.create(cohort=cohort, name="ecog", label="E", kind="int")
    changed()
    variable.maximum = 4
    variable.save()
    changed()
    assert cohort_state(cohort)[0] in seen  # nothing changed since
