"""The audit trail cannot be wiped with TRUNCATE on PostgreSQL (issue 9, item 10)."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from pmpd_web.accounts.audit import record
from pmpd_web.accounts.models import AuditEvent


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL trigger")
def test_truncate_of_the_audit_trail_is_refused(members):
    record(members["admin"], "login")
    with (
        pytest.raises(DatabaseError, match="audit trail cannot be edited"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("TRUNCATE accounts_auditevent")
    assert AuditEvent.objects.count() == 1
