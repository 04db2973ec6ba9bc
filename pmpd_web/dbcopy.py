"""PostgreSQL's COPY for writing many rows at once: rows as CSV text, one statement.

Used where an INSERT of thousands of rows spent its time building and sending parameters:
the clinical table's patients (``cohorts.importer``) and a CT series' instances
(``imaging.ingest.commit``).
"""

from __future__ import annotations

from typing import Any


def copy_csv(cursor: Any, table: str, columns: list[str], data: str | bytes) -> int:
    """One COPY of CSV ``data`` (UTF-8) into ``table``'s ``columns`` (quoted names) through
    Django's ``cursor``; returns how many rows it wrote. Its errors are Django's, as those of
    any other statement: a refused row raises ``IntegrityError``."""
    with (
        cursor.db.wrap_database_errors,
        cursor.cursor.copy(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)"
        ) as copy,
    ):
        copy.write(data)
    return cursor.cursor.rowcount


def csv_field(text: str) -> str:
    """``text`` as a quoted CSV field (its double quotes doubled): never NULL, whatever it
    holds."""
    return '"' + text.replace('"', '""') + '"'
