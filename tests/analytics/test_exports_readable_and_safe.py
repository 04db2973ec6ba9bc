"""Every CSV and XLSX download of the cohort and analytics pages and API (issue 9 item 7; issue
11 item 9): a centre or CT manufacturer a spreadsheet would run as a formula comes out escaped
(one function, ``pmpd_web.spreadsheets.escape_formula``), numbers stay numbers, the CSV loads in
pandas as it is (no ``#`` provenance lines: the provenance is the text file beside it and the
XLSX's "Provenance" sheet), and column headers are words, not ``0.95LCL``.
"""

from __future__ import annotations

import csv
import io

import openpyxl
import pandas as pd
import pytest
from rest_framework.test import APIClient
from scored import make_model_version, make_scored_cohort

from analytics import services
from analytics.catalogue import SECTIONS, entries
from analytics.parameters import AnalysisParameters
from pmpd_web.cohorts.models import Patient
from pmpd_web.spreadsheets import FORMULA_PREFIXES, PLAIN_NUMBER

pytestmark = pytest.mark.django_db

HOSTILE = ['=HYPERLINK("x")', "+1+cmd", "-2-cmd", "@SUM(A1)", "\tTAB", "\rCR"]
MACHINE_HEADERS = {"0.95LCL", "0.95UCL", "lower .95", "upper .95", "n.risk", "std.err"}


def unsafe(value) -> bool:
    """A text cell a spreadsheet would run as a formula (plain numbers are values)."""
    return (
        isinstance(value, str)
        and value.startswith(FORMULA_PREFIXES)
        and not PLAIN_NUMBER.fullmatch(value)
    )


@pytest.fixture
def hostile(cohort, members):
    version = make_model_version("pmpd-export-safety")
    patients = make_scored_cohort(cohort, version, 90)
    for index, patient in enumerate(patients):
        Patient.objects.filter(pk=patient.pk).update(
            centre=HOSTILE[index % len(HOSTILE)],
            ct_manufacturer=HOSTILE[(index // 15) % len(HOSTILE)],
        )
    client = APIClient()
    client.force_login(members["statistician"])
    return client, {"cohort": cohort.pk, "model_version": version.pk}, version


def every_download(cohort, version) -> list[tuple[str, str]]:
    """(url, format) of every table and figure-data download of the analytics, and the cohort's
    clinical exports (page and API)."""
    params = AnalysisParameters(cohort_ids=(cohort.pk,), model_version_id=version.pk)
    selection = services.Selection([cohort], version)
    results = services.results_for(selection, params, list(SECTIONS))
    urls = []
    for entry in entries(results):
        if entry.kind == "table":
            for fmt in ("csv", "xlsx"):
                urls.append((f"/analytics/{entry.section}/tables/{entry.name}.{fmt}", fmt))
        else:
            urls.append((f"/analytics/{entry.section}/figures/{entry.name}.csv", "csv"))
    urls += [
        (f"/cohorts/{cohort.pk}/export.csv", "csv"),
        (f"/cohorts/{cohort.pk}/export.xlsx", "xlsx"),
        (f"/api/cohorts/{cohort.pk}/export/?file_format=csv", "csv"),
        (f"/api/cohorts/{cohort.pk}/export/?file_format=xlsx", "xlsx"),
    ]
    return urls


@pytest.mark.slow
def test_every_export_escapes_formulas_and_loads_as_it_is(hostile, cohort, members):
    client, query, version = hostile
    coordinator = APIClient()
    coordinator.force_login(members["coordinator"])
    urls = every_download(cohort, version)
    assert len(urls) > 40
    problems, escaped_seen = [], set()
    for url, fmt in urls:
        who = coordinator if "export" in url else client
        response = who.get(url, query if url.startswith("/analytics/") else None)
        assert response.status_code == 200, url
        content = b"".join(response.streaming_content) if response.streaming else response.content
        if fmt == "csv":
            assert not content.startswith(b"#"), url
            cells = [
                cell
                for row in csv.reader(io.StringIO(content.decode(), newline=""))
                for cell in row
            ]
            frame = pd.read_csv(io.BytesIO(content))
            header = list(frame.columns)
            data_cells = cells
        else:
            book = openpyxl.load_workbook(io.BytesIO(content))
            cells = []
            for sheet in book.worksheets:
                for row in sheet.iter_rows():
                    for cell in row:
                        if cell.data_type == "f":
                            problems.append((url, sheet.title, cell.coordinate, "formula"))
                        cells.append(cell.value)
            header = [cell.value for cell in book.worksheets[0][1]]
            # The data sheet; the Provenance sheet keeps the parameters as they were given.
            data_cells = [cell.value for row in book.worksheets[0].iter_rows() for cell in row]
            if url.startswith("/analytics/"):
                assert "Provenance" in book.sheetnames, url
        problems += [(url, repr(value)) for value in cells if unsafe(value)]
        escaped_seen |= {v[1:] for v in cells if isinstance(v, str) and v[1:] in HOSTILE}
        problems += [(url, "header", name) for name in header if name in MACHINE_HEADERS]
        if url.startswith("/analytics/"):
            problems += [
                (url, "variable name", value)
                for value in data_cells
                if isinstance(value, str) and ("mrs_per_0_1" in value or "_group[" in value)
            ]
    assert not problems, problems[:20]
    # The hostile values did reach the exports (escaped): the check above was not vacuous.
    assert {'=HYPERLINK("x")', "@SUM(A1)", "+1+cmd", "-2-cmd"} <= escaped_seen


@pytest.mark.slow
def test_numbers_are_numbers_and_provenance_is_beside(hostile, cohort, members):
    client, query, version = hostile
    cox = pd.read_csv(
        io.BytesIO(client.get("/analytics/cox/tables/cox-univariable.csv", query).content)
    )
    assert "MRS (per 0.1)" in set(cox["model"]) and "MRS group (maxstat cut): high" in set(
        cox["term"]
    )
    assert pd.api.types.is_numeric_dtype(cox["hazard ratio"])
    book = openpyxl.load_workbook(
        io.BytesIO(
            client.get("/analytics/survival/tables/kaplan-meier-medians.xlsx", query).content
        )
    )
    table = pd.read_excel(
        io.BytesIO(
            client.get("/analytics/survival/tables/kaplan-meier-medians.xlsx", query).content
        )
    )
    assert {"95% CI lower", "95% CI upper", "median survival (days)"} <= set(table.columns)
    assert pd.api.types.is_numeric_dtype(table["median survival (days)"])
    provenance = " ".join(str(cell.value) for cell in book["Provenance"]["A"])
    assert "pmpd-export-safety" in provenance and "Research use only" in provenance

    csv_data = client.get("/analytics/survival/figures/km-risk-group.csv", query).content
    curves = pd.read_csv(io.BytesIO(csv_data))
    assert {"time (days)", "number at risk", "CI lower", "CI upper"} <= set(curves.columns)
    assert pd.api.types.is_numeric_dtype(curves["survival"])
    beside = client.get("/analytics/survival/figures/km-risk-group/provenance.txt", query)
    assert beside.status_code == 200 and beside["Content-Type"].startswith("text/plain")
    text = beside.content.decode()
    assert text.startswith("PMPD analytics: Overall survival by risk group")
    assert "(figure data)" in text.splitlines()[0]
    assert "Model version: pmpd-export-safety" in text and "Data hash" in text
    page = client.get("/analytics/survival/", query).content.decode()
    assert "/analytics/survival/figures/km-risk-group/provenance.txt?" in page
    assert client.get("/analytics/survival/nope/logrank/provenance.txt", query).status_code == 404

    coordinator = APIClient()
    coordinator.force_login(members["coordinator"])
    clinical = openpyxl.load_workbook(
        io.BytesIO(coordinator.get(f"/cohorts/{cohort.pk}/export.xlsx").content)
    )["patients"]
    header = [cell.value for cell in clinical[1]]
    first = {name: cell.value for name, cell in zip(header, clinical[2], strict=True)}
    assert isinstance(first["age_at_diagnosis_years"], int)
    assert isinstance(first["overall_survival_days"], int)
    assert isinstance(first["tumour_size_mm"], int | float)
