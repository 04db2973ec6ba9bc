"""The preview keeps what the commit writes (PostgreSQL): the COPY payload, the new and the
changed patients' rows as CSV text. The commit COPYs it as it is while the file and the cohort
are unchanged, and reads and checks the file again when the payload cannot be read, does not
agree with the preview, or the cohort changed."""

from __future__ import annotations

import json
import zlib

import pytest
from django.db import connection
from tablemaker import rows, to_csv

from pmpd_web.cohorts import importer
from pmpd_web.cohorts.importer import (
    PAYLOAD_MAGIC,
    CopyPayload,
    commit_import,
    plan_import,
    upload_table,
)
from pmpd_web.cohorts.models import Patient, StudyVariable, TableImport, table_columns
from pmpd_web.cohorts.parsing import read_table
from pmpd_web.cohorts.table import pack_checked
from pmpd_web.jobs.runner import UserFacingError

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the COPY payload's"),
]

VALUES = ("study_id", "centre", "age_at_diagnosis_years", "ca19_9_u_per_ml", "site_liver")


def commit_as_the_job_does(table_import: TableImport) -> tuple[dict, list[str]]:
    """The commit job's work (the import read again, its payload with it): the summary and
    the progress messages."""
    again = TableImport.objects.select_related("cohort", "uploaded_by").get(pk=table_import.pk)
    messages: list[str] = []
    summary = commit_import(again, lambda percent, message: messages.append(message))
    return summary, messages


def stored(cohort) -> list[tuple]:
    return list(Patient.objects.filter(cohort=cohort).order_by("study_id").values_list(*VALUES))


def imported_once(cohort, user, table: list[dict]) -> None:
    commit_as_the_job_does(upload_table(cohort=cohort, user=user, data=to_csv(table), filename="a"))


def test_the_commit_copies_the_kept_payload_without_reading_the_rows_again(
    cohort, members, monkeypatch
):
    """A re-import with new and changed patients (text with quotes and a comma): the preview
    keeps both COPY texts; the commit neither reads, compares nor formats the rows."""
    user = members["coordinator"]
    imported_once(cohort, user, rows(4))
    table = rows(5)
    table[1]["centre"] = 'Hôpital "Nord", Lyon'
    data = to_csv(table)
    preview = upload_table(cohort=cohort, user=user, data=data, filename="b.csv")

    kept = CopyPayload.unpack(bytes(preview.checked), cohort, preview.summary)
    parsed = read_table(data, "b.csv", max_bytes=10**6)
    expected = CopyPayload.of_plan(cohort, parsed, plan_import(cohort, parsed))
    assert kept == expected  # the round trip, and what the commit would format itself
    assert (kept.rows, kept.created, kept.updated, kept.study_values) == (5, 1, 1, False)
    assert '"Hôpital ""Nord"", Lyon"'.encode() in kept.changed_rows
    # The study ID unquoted (letters, digits, '.', '_', '-'), the cohort id last.
    assert kept.new_rows.startswith(b"P-00005,") and kept.new_rows.endswith(
        f",{cohort.pk}\n".encode()
    )

    for name in ("_read", "plan_import", "_copy_cells", "unpack_checked"):
        monkeypatch.setattr(importer, name, pytest.fail)
    summary, messages = commit_as_the_job_does(preview)
    assert summary == preview.summary | {"checked_at_preview": True}
    assert (summary["created"], summary["updated"], summary["unchanged"]) == (1, 1, 3)
    assert messages == [
        "Reading the table",
        "Comparing 5 rows with the cohort (checked at the preview)",
        "Writing 1 new and 1 changed patients in one transaction",
    ]
    assert Patient.objects.get(cohort=cohort, study_id="P-00002").centre == 'Hôpital "Nord", Lyon'
    assert Patient.objects.filter(cohort=cohort).count() == 5
    committed = TableImport.objects.get(pk=preview.pk)
    assert committed.status == "committed" and committed.checked is None


def test_study_values_go_with_the_new_rows(cohort, members):
    """Every kind of study variable, blanks as no value (null), each distinct value formatted
    once into the COPY's JSON."""
    StudyVariable.objects.create(
        cohort=cohort, name="ecog", label="ECOG", kind="choice", choices=["0", "1", "2"]
    )
    StudyVariable.objects.create(cohort=cohort, name="weight_loss", label="WL", kind="number")
    StudyVariable.objects.create(cohort=cohort, name="cycles", label="Cycles", kind="int")
    StudyVariable.objects.create(cohort=cohort, name="surgery", label="Surgery", kind="date")
    names = [c.name for c in table_columns(cohort)]
    values = [
        {"ecog": "0", "weight_loss": "12.5", "cycles": "3", "surgery": "2024-02-29"},
        {"ecog": "1", "weight_loss": "", "cycles": "", "surgery": ""},
        {"ecog": "", "weight_loss": "12.5", "cycles": "3", "surgery": "2024-02-29"},
        {"ecog": "2", "weight_loss": "7", "cycles": "0", "surgery": "2023-01-01"},
    ]
    table = [{**row, **extra} for row, extra in zip(rows(4), values, strict=True)]
    preview = upload_table(
        cohort=cohort, user=members["coordinator"], data=to_csv(table, columns=names), filename="s"
    )
    assert CopyPayload.unpack(bytes(preview.checked), cohort, preview.summary).study_values is True
    summary, _ = commit_as_the_job_does(preview)
    assert summary["checked_at_preview"] is True
    stored = [p.study_values for p in Patient.objects.filter(cohort=cohort)]
    assert stored == [
        {"ecog": "0", "weight_loss": 12.5, "cycles": 3, "surgery": "2024-02-29"},
        {"ecog": "1", "weight_loss": None, "cycles": None, "surgery": None},
        {"ecog": None, "weight_loss": 12.5, "cycles": 3, "surgery": "2024-02-29"},
        {"ecog": "2", "weight_loss": 7.0, "cycles": 0, "surgery": "2023-01-01"},
    ]


def test_the_kept_payload_writes_what_checking_the_file_again_writes(cohort, other_cohort, members):
    """The same file into two cohorts: one commit from the kept payload, one that checks the
    file again (nothing kept): the same patients and the same summary."""
    user = members["coordinator"]
    table = rows(6)
    table[2]["ca19_9_u_per_ml"] = ""
    table[3]["centre"] = "two\nlines"
    data = to_csv(table)
    kept = upload_table(cohort=cohort, user=user, data=data, filename="t.csv")
    again = upload_table(cohort=other_cohort, user=user, data=data, filename="t.csv")
    TableImport.objects.filter(pk=again.pk).update(checked=None)
    from_payload, _ = commit_as_the_job_does(kept)
    checked_again, _ = commit_as_the_job_does(again)
    assert from_payload["checked_at_preview"] and not checked_again["checked_at_preview"]
    assert from_payload | {"checked_at_preview": None} == checked_again | {
        "checked_at_preview": None
    }
    assert stored(cohort) == stored(other_cohort) and len(stored(cohort)) == 6


def _repacked(payload: bytes, **head_changes) -> bytes:
    line, _, body = payload[len(PAYLOAD_MAGIC) :].partition(b"\n")
    head = json.loads(line) | head_changes
    return PAYLOAD_MAGIC + json.dumps(head).encode() + b"\n" + body


def _older_form(cohort, data: bytes, payload: bytes) -> bytes:
    """The arrays the preview kept before the COPY payload (and still keeps elsewhere)."""
    parsed = read_table(data, "t.csv", max_bytes=10**6)
    return pack_checked(parsed, plan_import(cohort, parsed).arrays())


TAMPERED = {
    "the arrays of before": _older_form,
    "no payload prefix": lambda cohort, data, payload: payload[len(PAYLOAD_MAGIC) :],
    "another version": lambda c, d, payload: b"PMPD-COPY/2" + payload[len(b"PMPD-COPY/1") :],
    "cut short": lambda cohort, data, payload: payload[:-20],
    "a byte changed": lambda c, d, payload: (
        payload[:-30] + bytes([payload[-30] ^ 1]) + payload[-29:]
    ),
    "not JSON": lambda cohort, data, payload: PAYLOAD_MAGIC + b"{,\n" + payload,
    "another cohort's": lambda cohort, data, payload: _repacked(payload, cohort=cohort.pk + 1),
    "other counts than the preview's": lambda c, d, payload: _repacked(payload, created=4),
    "lengths that do not add up": lambda c, d, payload: _repacked(payload, new_bytes=1),
    "a count that is not a number": lambda c, d, payload: _repacked(payload, rows="3"),
}


@pytest.mark.parametrize("change", TAMPERED, ids=list(TAMPERED))
def test_a_payload_that_cannot_be_used_is_checked_again(cohort, members, change):
    data = to_csv(rows(3))
    preview = upload_table(cohort=cohort, user=members["coordinator"], data=data, filename="t")
    changed = TAMPERED[change](cohort, data, bytes(preview.checked))
    TableImport.objects.filter(pk=preview.pk).update(checked=changed)
    with pytest.raises(ValueError):
        CopyPayload.unpack(changed, cohort, preview.summary)
    summary, messages = commit_as_the_job_does(preview)
    assert summary["checked_at_preview"] is False and summary["created"] == 3
    assert "Comparing 3 rows with the cohort (checked again: the cohort changed)" in messages
    assert [row[0] for row in stored(cohort)] == ["P-00001", "P-00002", "P-00003"]


def test_a_payload_whose_rows_are_not_its_counts_is_refused_whole(cohort, other_cohort, members):
    """A payload that reads well but whose rows differ from its counts (one new row left out;
    a changed row naming another cohort's patient, which is never written) writes nothing."""
    user = members["coordinator"]
    imported_once(cohort, user, rows(2))
    imported_once(other_cohort, user, rows(2))
    outsider = Patient.objects.get(cohort=other_cohort, study_id="P-00001")
    table = rows(4)
    table[0]["centre"] = "Lyon"
    preview = upload_table(cohort=cohort, user=user, data=to_csv(table), filename="t")
    kept = CopyPayload.unpack(bytes(preview.checked), cohort, preview.summary)
    assert (kept.created, kept.updated) == (2, 1)
    first_new_row = kept.new_rows.split(b"\n", 1)[1]
    elsewhere = kept.changed_rows.replace(
        kept.changed_rows.split(b",", 1)[0], str(outsider.pk).encode(), 1
    )
    before = (stored(cohort), stored(other_cohort))
    for new_rows, changed_rows, wrote in (
        (first_new_row, kept.changed_rows, "1 new and 1 changed"),
        (kept.new_rows, elsewhere, "2 new and 0 changed"),
    ):
        tampered = CopyPayload(4, 2, 1, False, new_rows, changed_rows).pack(cohort)
        TableImport.objects.filter(pk=preview.pk).update(checked=tampered)
        with pytest.raises(UserFacingError, match=f"wrote {wrote} patients where its preview"):
            commit_as_the_job_does(preview)
        assert (stored(cohort), stored(other_cohort)) == before


def test_a_cohort_changed_since_the_preview_is_checked_again(cohort, members):
    """Two previews of overlapping files; once the first is committed the second's payload (4
    new patients) is stale: its commit checks the file again and creates only the one new."""
    user = members["coordinator"]
    first = upload_table(cohort=cohort, user=user, data=to_csv(rows(3)), filename="a")
    second = upload_table(cohort=cohort, user=user, data=to_csv(rows(4)), filename="b")
    assert CopyPayload.unpack(bytes(second.checked), cohort, second.summary).created == 4
    commit_as_the_job_does(first)
    summary, messages = commit_as_the_job_does(second)
    assert summary["checked_at_preview"] is False
    assert (summary["created"], summary["updated"], summary["unchanged"]) == (1, 0, 3)
    assert messages[1] == "Comparing 4 rows with the cohort (checked again: the cohort changed)"
    assert Patient.objects.filter(cohort=cohort).count() == 4


class _OtherDatabase:
    """The importer's database connection, seen as another vendor than PostgreSQL."""

    vendor = "other"

    def __getattr__(self, name):
        return getattr(connection, name)


def test_other_databases_keep_the_checked_arrays(cohort, members, monkeypatch):
    """SQLite (the embedded default) keeps the checked rows and the plan as arrays, written
    through the ORM."""
    monkeypatch.setattr(importer, "connection", _OtherDatabase())
    user = members["coordinator"]
    imported_once(cohort, user, rows(2))
    table = rows(3)
    table[0]["centre"] = "Lyon"
    preview = upload_table(cohort=cohort, user=user, data=to_csv(table), filename="t")
    assert not bytes(preview.checked).startswith(PAYLOAD_MAGIC)
    with pytest.raises(ValueError):
        CopyPayload.unpack(bytes(preview.checked), cohort, preview.summary)
    zlib.decompress(bytes(preview.checked))  # pack_checked's form
    summary, _ = commit_as_the_job_does(preview)
    assert summary["checked_at_preview"] is True
    assert (summary["created"], summary["updated"]) == (1, 1)
    assert Patient.objects.get(cohort=cohort, study_id="P-00001").centre == "Lyon"
