"""Reading clinical tables: every bad input names its row and column (pure, no database)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from tablemaker import GOOD_ROW, NON_METASTATIC_ROW, rows, to_csv, to_xlsx

from pmpd_web.cohorts.parsing import read_table
from pmpd_web.cohorts.table import (
    COLUMN_NAMES,
    TableError,
    escape_formula,
    write_csv,
    write_xlsx,
)

LIMIT = 1_000_000


def problems_of(data: bytes, name: str = "table.csv") -> list[str]:
    return [str(p) for p in read_table(data, name, max_bytes=LIMIT).problems]


def test_good_csv_reads_typed_records():
    parsed = read_table(to_csv([GOOD_ROW, NON_METASTATIC_ROW]), "t.csv", max_bytes=LIMIT)
    assert parsed.ok, parsed.problems
    first, second = parsed.records
    assert first["tumour_size_mm"] == Decimal("32.5")
    assert first["ca19_9_u_per_ml"] == Decimal("812.25")
    assert first["site_liver"] and first["site_peritoneum"] and not first["site_lung"]
    assert second["ca19_9_u_per_ml"] is None
    assert second["days_to_metastasis"] == 120
    assert parsed.rows == [2, 3]


def test_labels_and_semicolon_delimiter_are_accepted():
    row = {
        **GOOD_ROW,
        "tumour_location": "Head",
        "sex": "Female",
        "metastasis_at_diagnosis": "YES",
        "nccn_resectability": "borderline-resectable",
    }
    parsed = read_table(to_csv([row], delimiter=";"), "t.csv", max_bytes=LIMIT)
    assert parsed.ok, parsed.problems
    assert parsed.records[0]["nccn_resectability"] == "borderline_resectable"


def test_missing_and_unknown_columns():
    columns = [c for c in COLUMN_NAMES if c != "sex"] + ["patient_name"]
    found = problems_of(to_csv([GOOD_ROW], columns=columns))
    assert found == [
        "row 1: missing columns: sex",
        "row 1: unknown columns: 'patient_name'; download the template for the allowed "
        "columns, or have a coordinator define each as a study variable of the cohort (Study "
        "variables page, or POST /api/cohorts/<id>/variables/) before importing",
    ]


def test_wrong_types_name_row_and_column():
    bad = {**GOOD_ROW, "age_at_diagnosis_years": "sixty", "tumour_size_mm": "3,2x"}
    found = problems_of(to_csv([NON_METASTATIC_ROW, bad]))
    assert "row 3, column age_at_diagnosis_years: 'sixty' is not a whole number" in found
    assert "row 3, column tumour_size_mm: '3,2x' is not a number" in found


def test_out_of_range_values():
    bad = {**NON_METASTATIC_ROW, "age_at_diagnosis_years": "7", "tumour_size_mm": "999.0"}
    found = problems_of(to_csv([bad]))
    assert "row 2, column age_at_diagnosis_years: must be between 18 and 110 years" in found
    assert "row 2, column tumour_size_mm: must be between 1 and 300 mm" in found


def test_unknown_resectability():
    found = problems_of(to_csv([{**GOOD_ROW, "nccn_resectability": "operable"}]))
    assert found == [
        "row 2, column nccn_resectability: 'operable' is not one of: resectable, "
        "borderline_resectable, locally_advanced, metastatic"
    ]


def test_duplicate_study_ids_in_one_file():
    found = problems_of(to_csv([GOOD_ROW, NON_METASTATIC_ROW, GOOD_ROW]))
    assert found == ["row 4, column study_id: 'P-001' already appears in row 2"]


def test_sites_without_metastasis():
    bad = {**NON_METASTATIC_ROW, "metastasis_sites": "liver"}
    found = problems_of(to_csv([bad]))
    assert found == [
        "row 2, column metastasis_sites: sites are allowed only when metastasis_at_diagnosis is yes"
    ]


def test_negative_days():
    bad = {**NON_METASTATIC_ROW, "overall_survival_days": "-3"}
    found = problems_of(to_csv([bad]))
    assert "row 2, column overall_survival_days: must be 0 or more days" in found


def test_days_to_metastasis_after_survival_is_refused():
    bad = {**NON_METASTATIC_ROW, "days_to_metastasis": "1000"}
    assert problems_of(to_csv([bad])) == [
        "row 2, column days_to_metastasis: cannot be later than overall_survival_days"
    ]


def test_non_utf8_file():
    data = to_csv([GOOD_ROW]).replace(b"Madrid", "Málaga".encode("latin-1"))
    with pytest.raises(TableError, match=r"t.csv: the file is not UTF-8 text \(byte 0xe1"):
        read_table(data, "t.csv", max_bytes=LIMIT)


def test_empty_file():
    with pytest.raises(TableError, match="t.csv: the file is empty"):
        read_table(b"  \n", "t.csv", max_bytes=LIMIT)


def test_header_only_has_no_patients():
    assert problems_of(to_csv([])) == ["table.csv: the table has no patients"]


def test_file_over_the_size_limit():
    with pytest.raises(TableError, match=r"big.csv: the file is 0.0 MB, over the limit of 0.0 MB"):
        read_table(to_csv(rows(10)), "big.csv", max_bytes=100)


def test_spreadsheet_with_formulas_names_each_cell():
    data = to_xlsx([GOOD_ROW, NON_METASTATIC_ROW], formulas={"B2": "=60+6", "H3": "=SUM(1,2)"})
    found = problems_of(data, "t.xlsx")
    assert found == [
        "row 2, column age_at_diagnosis_years: contains a formula (=60+6); paste values only",
        "row 3, column ca19_9_u_per_ml: contains a formula (=SUM(1,2)); paste values only",
    ]


def test_format_is_sniffed_not_taken_from_the_name():
    parsed = read_table(to_xlsx([GOOD_ROW]), "looks-like.csv", max_bytes=LIMIT)
    assert parsed.ok and parsed.records[0]["study_id"] == "P-001"


def test_too_many_decimals_refused_rather_than_rounded():
    found = problems_of(to_csv([{**GOOD_ROW, "tumour_size_mm": "32.55"}]))
    assert found == ["row 2, column tumour_size_mm: '32.55' has more than 1 decimal places"]


def test_names_are_refused_as_study_ids():
    found = problems_of(to_csv([{**GOOD_ROW, "study_id": "Maria Garcia"}]))
    assert found[0].startswith("row 2, column study_id: 'Maria Garcia' is not a valid study ID")


def test_formula_escaping_round_trips():
    assert escape_formula("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert escape_formula("SIEMENS") == "SIEMENS"
    record = read_table(to_csv([GOOD_ROW]), "t.csv", max_bytes=LIMIT).records[0]
    record["centre"] = "=cmd|' /C calc'!A0"
    for writer, name in ((write_csv, "x.csv"), (write_xlsx, "x.xlsx")):
        data = writer([record])
        if name.endswith(".csv"):
            assert b"'=cmd" in data
        again = read_table(data, name, max_bytes=LIMIT)
        assert again.ok, again.problems
        assert again.records[0] == record
