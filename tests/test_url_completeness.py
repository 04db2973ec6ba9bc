"""Every URL pattern of the project appears in a permission table, so a new route without a
permission test fails the suite (issue 9).

The tables are the module-level lists of the permission tests (tests/accounts/
test_permission_table.py, every tests/*/test_*permissions*.py and the app tests that keep their
own table beside their other tests): each entry holds a path
(a template such as ``/cohorts/{cohort}/...``). Each path is resolved, and the URL name it
reaches (or, for an unnamed route, its pattern) counts as covered. DRF's format-suffix variants
(``.json``) share their route's name and view, so they are covered with it. Only the Django
admin is left out, on purpose (``EXCLUDED``).
"""

from __future__ import annotations

import importlib.util
import string
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver, resolve

TESTS = Path(__file__).parent
TABLE_NAMES = ("ENDPOINTS", "SITE_ENDPOINTS", "ACCOUNT_PAGES", "ROUTES")
#: Every test module that holds a permission table (a module-level list named in TABLE_NAMES).
TABLE_FILES = sorted(
    path
    for path in TESTS.glob("*/test_*.py")
    if any(f"\n{name} = [" in path.read_text() for name in TABLE_NAMES)
)
#: Route prefixes no permission table covers, and why.
EXCLUDED = {
    "admin/": "the Django admin: staff only, by Django's own admin permissions",
}


class _AnyField(dict):
    """Fills every ``{field}`` of a path template with 1."""

    def __missing__(self, key: str) -> str:
        return "1"


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, str | None]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.name


def _key(route: str, name: str | None) -> str:
    return name or route.replace("^", "")


def project_routes(urlconf: Any = None) -> dict[str, str]:
    """{URL name (or pattern): pattern} of every route but the excluded ones."""
    return {
        _key(route, name): route
        for route, name in _walk(get_resolver(urlconf).url_patterns)
        if not route.startswith(tuple(EXCLUDED))
    }


def _table_module(path: Path) -> Any:
    """The table file as a module, executed once a session: a second execution would register
    its job tasks (``@job_task``) again under the same names."""
    name = f"_table_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def table_paths() -> dict[str, list[str]]:
    """{table file: the paths of its entries}; an entry without a path (the DICOMweb table
    names its routes) gives its URL name."""
    found = {}
    for path in TABLE_FILES:
        module = _table_module(path)
        entries = [entry for name in TABLE_NAMES for entry in getattr(module, name, [])]
        found[str(path.relative_to(TESTS))] = [
            next(
                (item for item in entry if isinstance(item, str) and item.startswith("/")),
                entry[0],
            )
            for entry in entries
        ]
    return found


def covered_routes() -> set[str]:
    covered = set()
    for paths in table_paths().values():
        for template in paths:
            if not template.startswith("/"):
                covered.add(template)  # a URL name
                continue
            url = string.Formatter().vformat(template, (), _AnyField()).split("?")[0]
            match = resolve(url)
            covered.add(_key(match.route, match.url_name))
    return covered


def test_the_tables_are_found():
    tables = table_paths()
    assert len(tables) >= 5, tables.keys()
    assert all(tables.values()), [name for name, paths in tables.items() if not paths]


def test_every_route_is_in_a_permission_table():
    missing = {key: route for key, route in project_routes().items() if key not in covered_routes()}
    assert not missing, (
        "These URL patterns are in no permission table; add an entry (path, method, roles "
        "allowed) to tests/accounts/test_permission_table.py or the app's "
        "tests/<app>/test_*permissions*.py:\n"
        + "\n".join(f"  {key}: {route}" for key, route in sorted(missing.items()))
    )


def test_a_new_route_without_a_table_entry_is_named():
    """The check fails, naming the pattern, for a route no table mentions."""
    from django.urls import include, path

    urlconf = types.ModuleType("urlconf_with_an_untested_route")
    urlconf.urlpatterns = [
        path("", include("pmpd_web.urls")),
        path("cohorts/<int:cohort_id>/untested/", lambda request: None, name="untested"),
    ]
    assert set(project_routes(urlconf)) - covered_routes() == {"untested"}
