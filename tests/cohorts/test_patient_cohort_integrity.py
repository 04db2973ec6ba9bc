"""A patient's cohort is enforced by the database (PostgreSQL): statement-level triggers took
the place of the per-row foreign-key check (migration cohorts 0006), with the same guarantee.

The tests commit (transactional tests): a refusal is checked by the end of its transaction,
where the deferred foreign key refused too, and matched on the DETAIL line, which the
triggers word as PostgreSQL's foreign key does; the triggers refuse at the statement itself
and name the cohort in the message as well. The concurrency tests hold only for the triggers:
the deferred foreign key locked the cohort at the COMMIT, so a concurrent DELETE of it did not
wait.
"""

from __future__ import annotations

import contextlib

import pytest
from django.db import IntegrityError, OperationalError, connection, connections, transaction
from factories import make_cohort, make_patient
from tablemaker import rows, to_csv

from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.dbcopy import copy_csv

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the triggers are PostgreSQL's"),
]

PATIENT_COLUMNS = (
    "cohort_id, study_id, sex, centre, tumour_location, ct_manufacturer, nccn_resectability, "
    "metastasis_at_diagnosis, site_liver, site_lung, site_peritoneum, site_other, "
    "site_unknown, metastasis_detection, vital_status, developed_metastasis"
)
PATIENT_VALUES = "%s, %s, '', '', '', '', '', 'no', false, false, false, false, false, '', '', ''"


def insert_sql(cursor, cohort_id: int, study_id: str) -> None:
    cursor.execute(
        f"INSERT INTO cohorts_patient ({PATIENT_COLUMNS}) VALUES ({PATIENT_VALUES})",
        [cohort_id, study_id],
    )


def missing_cohort_id() -> int:
    return (Cohort.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000


def not_present(cohort_id: int) -> str:
    return rf"Key \(cohort_id\)=\({cohort_id}\) is not present in table \"cohorts_cohort\""


def still_referenced(cohort_id: int) -> str:
    return rf"Key \(id\)=\({cohort_id}\) is still referenced from table \"cohorts_patient\""


@contextlib.contextmanager
def refused(match: str):
    """The block, one transaction, is refused with an IntegrityError matching ``match`` by
    its COMMIT at the latest."""
    with pytest.raises(IntegrityError, match=match), transaction.atomic():
        yield


def test_a_patient_of_a_missing_cohort_is_refused_naming_it():
    missing = missing_cohort_id()
    with refused(not_present(missing)), connection.cursor() as cursor:
        insert_sql(cursor, missing, "P-1")
    assert not Patient.objects.exists()


def test_a_patient_moved_to_a_missing_cohort_is_refused():
    cohort = make_cohort()
    patient = make_patient(cohort, "P-1")
    missing = missing_cohort_id()
    with refused(not_present(missing)):
        Patient.objects.filter(pk=patient.pk).update(cohort_id=missing)
    patient.refresh_from_db()
    assert patient.cohort_id == cohort.pk
    # Moving it to a cohort that exists is an ordinary update.
    other = make_cohort("Other")
    Patient.objects.filter(pk=patient.pk).update(cohort_id=other.pk)
    patient.refresh_from_db()
    assert patient.cohort_id == other.pk


def test_a_cohort_with_patients_cannot_be_deleted_nor_renumbered_by_sql():
    cohort = make_cohort()
    make_patient(cohort, "P-1")
    empty = make_cohort("Empty")
    with refused(still_referenced(cohort.pk)), connection.cursor() as cursor:
        cursor.execute("DELETE FROM cohorts_cohort WHERE id IN (%s, %s)", [cohort.pk, empty.pk])
    with refused(still_referenced(cohort.pk)), connection.cursor() as cursor:
        cursor.execute("UPDATE cohorts_cohort SET id = id + 1000 WHERE id = %s", [cohort.pk])
    assert Cohort.objects.filter(pk=cohort.pk).exists()
    # An update that keeps the id (the import bumps the data version) is not a change of key.
    cohort.bump_data_version()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM cohorts_cohort WHERE id = %s", [empty.pk])
    assert not Cohort.objects.filter(pk=empty.pk).exists()


def test_a_truncate_of_the_cohorts_alone_is_refused():
    """Refused, not cascaded: with the foreign key a ``TRUNCATE cohorts_cohort CASCADE``
    emptied the patients too (no trigger can cascade a TRUNCATE); a TRUNCATE naming both
    tables, as Django's flush does, still empties both."""
    cohort = make_cohort()
    make_patient(cohort, "P-1")
    with refused(still_referenced(cohort.pk)), connection.cursor() as cursor:
        cursor.execute("TRUNCATE cohorts_cohort CASCADE")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE cohorts_cohort, cohorts_patient CASCADE")
    assert not Patient.objects.exists() and not Cohort.objects.exists()


def test_deleting_a_cohort_through_django_deletes_its_patients():
    cohort = make_cohort()
    kept = make_cohort("Kept")
    for study_id in ("P-1", "P-2"):
        make_patient(cohort, study_id)
    make_patient(kept, "P-1")
    cohort.delete()
    assert list(Patient.objects.values_list("cohort_id", flat=True)) == [kept.pk]


def test_the_import_copy_is_checked_too(cohort, members):
    """The importer's COPY (new patients) goes through the statement trigger: a file imported
    as usual, and a COPY naming a missing cohort refused with Django's IntegrityError (the
    COPY's errors are Django's, as those of any other statement)."""
    from pmpd_web.cohorts import importer

    preview = importer.upload_table(
        cohort=cohort, user=members["coordinator"], data=to_csv(rows(5)), filename="t.csv"
    )
    summary = importer.commit_import(preview, lambda p, s: None)
    assert summary["created"] == 5 and Patient.objects.filter(cohort=cohort).count() == 5
    missing = missing_cohort_id()
    columns = PATIENT_COLUMNS.split(", ")
    tail = ',"","","","","","no",f,f,f,f,f,"","",""\n'
    data = f'{cohort.pk},"X-1"{tail}{missing},"X-2"{tail}'
    with refused(not_present(missing)), connection.cursor() as cursor:
        copy_csv(cursor, "cohorts_patient", columns, data)
    with refused("study_id_unique_in_cohort"), connection.cursor() as cursor:
        copy_csv(cursor, "cohorts_patient", columns, f'{cohort.pk},"P-00001"{tail}')
    assert Patient.objects.filter(cohort=cohort).count() == 5


@contextlib.contextmanager
def second_connection():
    """Another session to the test database, in autocommit, that gives up a lock wait after
    200 ms."""
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        yield other
    finally:
        other.close()


def lock_wait(error: OperationalError) -> bool:
    from psycopg import errors

    return isinstance(error.__cause__, errors.LockNotAvailable)


@pytest.mark.django_db(transaction=True)
def test_a_cohort_delete_waits_for_a_transaction_that_inserted_its_patients():
    """As with a foreign key: the inserting transaction locks the cohort (FOR KEY SHARE), a
    concurrent DELETE of it waits, and after the insert commits the DELETE finds the patients
    and is refused. With the deferred foreign key the lock came only at the COMMIT: the DELETE
    did not wait."""
    cohort = make_cohort()
    with second_connection() as other:
        with transaction.atomic():
            make_patient(cohort, "P-1")
            with pytest.raises(OperationalError) as waited, other.cursor() as cursor:
                cursor.execute("DELETE FROM cohorts_cohort WHERE id = %s", [cohort.pk])
            assert lock_wait(waited.value), waited.value
        with (
            pytest.raises(IntegrityError, match=still_referenced(cohort.pk)),
            other.cursor() as cursor,
        ):
            cursor.execute("DELETE FROM cohorts_cohort WHERE id = %s", [cohort.pk])
    assert Patient.objects.filter(cohort=cohort).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_patient_insert_waits_for_a_transaction_that_deleted_its_cohort():
    """The other order: a cohort deleted by a transaction not yet committed makes an insert of
    its patient wait, and refused once the delete commits."""
    cohort = make_cohort()
    with second_connection() as other:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute("DELETE FROM cohorts_cohort WHERE id = %s", [cohort.pk])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
            try:
                with pytest.raises(OperationalError) as waited:
                    insert_sql(cursor, cohort.pk, "P-1")
                assert lock_wait(waited.value), waited.value
                other.commit()
                with pytest.raises(IntegrityError, match=not_present(cohort.pk)):
                    insert_sql(cursor, cohort.pk, "P-1")
            finally:
                cursor.execute("RESET lock_timeout")
    assert not Patient.objects.exists()
