"""A cohort's audit trail for its coordinators (issue 12 item 10): the cohort's events only,
filtered by user, action and date, exported as CSV; other roles are refused (see also the
permission table)."""

from __future__ import annotations

import csv
import io

import pytest
from factories import make_patient

from pmpd_web.accounts.audit import record
from pmpd_web.accounts.models import AuditAction

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail(cohort, other_cohort, members):
    patient = make_patient(cohort, "AUD-1")
    record(members["clinician"], AuditAction.VIEW_PATIENT, patient=patient)
    record(members["coordinator"], AuditAction.IMPORT_COMMIT, cohort=cohort, rows=12)
    record(members["statistician"], AuditAction.EXPORT_TABLE, cohort=cohort, format="csv")
    record(members["outsider"], AuditAction.EXPORT_TABLE, cohort=other_cohort, format="xlsx")
    return patient


def test_coordinators_see_their_cohorts_trail_and_filter_it(cohort, members, client_for, trail):
    client = client_for(members["coordinator"])
    html = client.get(f"/cohorts/{cohort.pk}/audit/").content.decode()
    assert "3 events." in html and "Viewed patient" in html and "AUD-1" in html
    assert "outsider" not in html.split("<tbody>")[1]
    only_exports = client.get(f"/cohorts/{cohort.pk}/audit/?action=export_table").content
    assert b"1 event." in only_exports and b"statistician" in only_exports
    by_user = client.get(f"/cohorts/{cohort.pk}/audit/?user=clinician").content
    assert b"1 event." in by_user
    future = client.get(f"/cohorts/{cohort.pk}/audit/?from=2999-01-01").content
    assert b"0 events." in future
    bad = client.get(f"/cohorts/{cohort.pk}/audit/?to=yesterday").content.decode()
    assert "To date \u201cyesterday\u201d is not a date (YYYY-MM-DD)." in bad and "3 events." in bad
    assert (
        f'href="/cohorts/{cohort.pk}/audit/"'
        in client.get(f"/cohorts/{cohort.pk}/").content.decode()
    )


def test_the_trail_exports_as_csv_with_the_same_filters(cohort, members, client_for, trail):
    response = client_for(members["coordinator"]).get(
        f"/cohorts/{cohort.pk}/audit.csv?action=import_commit"
    )
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["time_utc", "user", "action", "object", "detail"]
    assert [(r[1], r[2], r[4]) for r in rows[1:]] == [("coordinator", "Imported table", "rows=12")]


def test_other_roles_are_refused(cohort, members, client_for, trail):
    for role in ("clinician", "statistician"):
        assert client_for(members[role]).get(f"/cohorts/{cohort.pk}/audit/").status_code == 403
    assert client_for(members["outsider"]).get(f"/cohorts/{cohort.pk}/audit/").status_code == 404
