"""The test database cloned from a migrated template instead of migrated in every session.

Running the migrations costs each test process seconds of CPU (31 migrations, the audit
trigger, content types and permissions); PostgreSQL copies a database from a template in a
fraction of that. The template's name carries a hash of every migration file, so a changed or
added migration makes a new template (and drops the old one): a session never runs on a
stale schema. ``pytest --create-db`` rebuilds the template too. Other databases than
PostgreSQL (the embedded SQLite) get Django's ordinary test database.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Any fixed number: the lock that lets one test process at a time build or copy the template.
ADVISORY_LOCK = 0x504D5044


def migrations_digest() -> str:
    """SHA-256 over the path and content of every migration file of the project."""
    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("**/migrations/*.py")):
        if ".venv" in path.parts or "node_modules" in path.parts:
            continue
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def template_name(test_name: str, *, worker: str | None) -> str:
    """``test_pmpd_tpl_<hash>``: one template per test database name (without the xdist
    worker's suffix) and migration state; PostgreSQL names hold 63 bytes."""
    base = test_name.removesuffix(f"_{worker}") if worker else test_name
    return f"{base[:40]}_tpl_{migrations_digest()[:12]}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_from_template(connection, *, test_name: str, template: str, rebuild: bool) -> None:
    """Create ``test_name`` as a copy of ``template``, building the template first when it
    is missing (or ``rebuild``). Leaves ``connection`` pointing at the new database."""
    from django.core.management import call_command

    prefix = template.rsplit("_", 1)[0] + "_"
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK])
        try:
            cursor.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"])
            existing = {row[0] for row in cursor.fetchall()}
            for stale in existing - ({template} if not rebuild else set()):
                cursor.execute(f"DROP DATABASE IF EXISTS {_quote(stale)}")
            if rebuild or template not in existing:
                cursor.execute(f"CREATE DATABASE {_quote(template)}")
                connection.close()
                connection.settings_dict["NAME"] = template
                try:
                    call_command("migrate", verbosity=0, interactive=False, run_syncdb=True)
                except BaseException:
                    connection.close()
                    with connection._nodb_cursor() as cleanup:
                        cleanup.execute(f"DROP DATABASE IF EXISTS {_quote(template)}")
                    raise
                finally:
                    connection.close()
            cursor.execute(f"DROP DATABASE IF EXISTS {_quote(test_name)} WITH (FORCE)")
            cursor.execute(f"CREATE DATABASE {_quote(test_name)} TEMPLATE {_quote(template)}")
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK])
    connection.settings_dict["NAME"] = test_name


def drop(connection, test_name: str) -> None:
    """Drop the session's test database, ending any session still connected to it (a thread
    of a test's server or job that kept its connection would otherwise fail the whole run at
    its very end)."""
    connection.close()
    with connection._nodb_cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {_quote(test_name)} WITH (FORCE)")
