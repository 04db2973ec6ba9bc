"""Reading tables by columns: every problem in one pass, study-defined columns, the XLSX
template's drop-downs (pure, no database)."""

from __future__ import annotations

import io

import numpy as np
import openpyxl
import pytest
from tablemaker import GOOD_ROW, NON_METASTATIC_ROW, to_csv

from pmpd_web.cohorts.parsing import read_table
from pmpd_web.cohorts.rules import check_patient
from pmpd_web.cohorts.table import COLUMN_NAMES, COLUMNS, study_column, write_csv, write_xlsx

LIMIT = 10**7
ECOG = study_column(
    name="ecog", label="ECOG performance status", kind="choice", choices=("0", "1", "2", "3", "4")
)
WEIGHT_LOSS = study_column(
    name="weight_loss_pct", label="Weight loss", kind="number", unit="%", minimum=0, maximum=60
)
SURGERY = study_column(name="surgery_date", label="Date of surgery", kind="date")
STUDY = (*COLUMNS, ECOG, WEIGHT_LOSS, SURGERY)


def test_all_problems_of_a_table_come_in_one_pass():
    """Issue 12 item 5: unknown columns, unreadable cells, ranges and contradictions together
    (before, an unknown column stopped the check, and a row with a bad cell skipped the rules)."""
    bad_cell_and_rule = {**NON_METASTATIC_ROW, "age_at_diagnosis_years": "sixty"}
    bad_cell_and_rule["days_to_metastasis"] = "1000"  # later than survival (900)
    out_of_range = {**GOOD_ROW, "study_id": "P-003", "tumour_size_mm": "999.0"}
    columns = [*COLUMN_NAMES, "ecog"]
    data = to_csv([bad_cell_and_rule, out_of_range], columns=columns)
    found = [str(p) for p in read_table(data, "t.csv", max_bytes=LIMIT).problems]
    assert found[0].startswith("row 1: unknown columns: 'ecog'; download the template")
    assert "define each as a study variable of the cohort" in found[0]
    assert found[1:] == [
        "row 2, column age_at_diagnosis_years: 'sixty' is not a whole number",
        "row 2, column days_to_metastasis: cannot be later than overall_survival_days",
        "row 3, column tumour_size_mm: must be between 1 and 300 mm",
    ]


def test_a_rule_reading_an_unreadable_cell_is_not_applied():
    row = {**NON_METASTATIC_ROW, "overall_survival_days": "soon"}
    found = [str(p) for p in read_table(to_csv([row]), "t.csv", max_bytes=LIMIT).problems]
    # not also "days_to_metastasis: cannot be later..." nor "overall_survival_days is required"
    assert found == ["row 2, column overall_survival_days: 'soon' is not a whole number"]


def test_study_columns_are_read_and_checked():
    rows = [
        {**GOOD_ROW, "ecog": "1", "weight_loss_pct": "12.5", "surgery_date": "2021-03-04"},
        {**NON_METASTATIC_ROW, "ecog": "", "weight_loss_pct": "", "surgery_date": ""},
    ]
    data = to_csv(rows, columns=[c.name for c in STUDY])
    parsed = read_table(data, "t.csv", max_bytes=LIMIT, columns=STUDY)
    assert parsed.ok, parsed.problems
    assert parsed.study_present == ("ecog", "weight_loss_pct", "surgery_date")
    first, second = parsed.records
    assert first["study_values"] == {
        "ecog": "1",
        "weight_loss_pct": 12.5,
        "surgery_date": "2021-03-04",
    }
    assert second["study_values"] == {"ecog": None, "weight_loss_pct": None, "surgery_date": None}

    bad = [{**GOOD_ROW, "ecog": "5", "weight_loss_pct": "75", "surgery_date": "04/03/2021"}]
    found = [
        str(p)
        for p in read_table(
            to_csv(bad, columns=[c.name for c in STUDY]), "t.csv", max_bytes=LIMIT, columns=STUDY
        ).problems
    ]
    assert found == [
        "row 2, column ecog: '5' is not one of: 0, 1, 2, 3, 4",
        "row 2, column weight_loss_pct: must be between 0 and 60 %",
        "row 2, column surgery_date: '04/03/2021' is not a date (YYYY-MM-DD)",
    ]


def test_an_optional_study_column_may_be_absent_a_required_one_not():
    data = to_csv([GOOD_ROW])
    assert read_table(data, "t.csv", max_bytes=LIMIT, columns=STUDY).ok
    required = study_column(name="karnofsky", label="Karnofsky", kind="int", required=True)
    found = [
        str(p)
        for p in read_table(data, "t.csv", max_bytes=LIMIT, columns=(*COLUMNS, required)).problems
    ]
    assert found == ["row 1: missing columns: karnofsky"]


def test_study_values_round_trip_through_the_export():
    record: dict = {
        **read_table(to_csv([GOOD_ROW]), "t.csv", max_bytes=LIMIT).records[0],
        "study_values": {"ecog": "2", "weight_loss_pct": 7.0, "surgery_date": "2020-01-31"},
    }
    for writer, name in ((write_csv, "x.csv"), (write_xlsx, "x.xlsx")):
        again = read_table(writer([record], columns=STUDY), name, max_bytes=LIMIT, columns=STUDY)
        assert again.ok, again.problems
        assert again.records[0] == record


def test_xlsx_template_has_drop_downs_and_documents_ranges():
    book = openpyxl.load_workbook(io.BytesIO(write_xlsx([], columns=STUDY)))
    sheet = book["patients"]
    header = [cell.value for cell in sheet[1]]
    validations = {
        header[openpyxl.utils.column_index_from_string(str(v.sqref).split(":")[0][:-1]) - 1]: v
        for v in sheet.data_validations.dataValidation
    }
    assert validations["sex"].type == "list" and validations["sex"].formula1 == '"female,male"'
    assert validations["ecog"].formula1 == '"0,1,2,3,4"'
    assert validations["age_at_diagnosis_years"].type == "whole"
    assert (
        validations["age_at_diagnosis_years"].formula1,
        validations["age_at_diagnosis_years"].formula2,
    ) == ("18", "110")
    assert validations["weight_loss_pct"].type == "decimal"
    assert "study_id" not in validations and "centre" not in validations
    documented = {row[0].value: row[4].value for row in book["columns"].iter_rows(min_row=2)}
    assert documented["age_at_diagnosis_years"] == "18 to 110 years"
    assert documented["weight_loss_pct"] == "0 to 60 %"
    assert documented["ecog"] == "0, 1, 2, 3, 4"


def test_check_patient_is_the_same_rules_on_one_row():
    assert [
        p.field for p in check_patient({"metastasis_at_diagnosis": "no", "site_liver": True})
    ] == ["metastasis_sites"]
    assert check_patient({"metastasis_at_diagnosis": "yes", "age_at_diagnosis_years": 70}) == []


@pytest.mark.slow
def test_ten_thousand_rows_are_checked_by_columns():
    """The reader converts each distinct value once: 10,000 rows of repeated codes."""
    from tablemaker import rows

    parsed = read_table(to_csv(rows(10_000)), "t.csv", max_bytes=LIMIT)
    assert parsed.ok and len(parsed.frame) == 10_000
    assert parsed.frame["age_at_diagnosis_years"].dtype == np.float64
    assert parsed.rows[-1] == 10_001


def _csv_lines(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def test_the_column_reader_keeps_the_row_reader_s_rows_and_messages():
    """Issue 14 item 4: a CSV is read by pandas' C parser into columns, and by the csv module
    only when a row is longer than the header line. Both give the same rows and messages: blank
    and whitespace-only rows skipped (their row numbers kept), short rows padded, quoted commas,
    quotes and line breaks kept, a trailing empty header cell ignored, extra cells refused."""
    header = ",".join(COLUMN_NAMES)
    good = to_csv([GOOD_ROW]).decode().splitlines()[1]
    other = to_csv([{**NON_METASTATIC_ROW, "centre": 'Centre "Est", two\nlines'}])
    other_line = other.decode().split("\r\n", 1)[1].rstrip("\r\n")
    short = ",".join(
        to_csv([{**GOOD_ROW, "study_id": "P-003"}]).decode().splitlines()[1].split(",")[:-1]
    )
    table = _csv_lines(header + ",", good, "", "  ,  ", other_line, short)
    parsed = read_table(table, "t.csv", max_bytes=LIMIT)
    assert parsed.ok, parsed.problems
    assert parsed.rows == [2, 5, 6]  # rows 3 and 4 blank; a row is a record, not a line
    assert [r["study_id"] for r in parsed.records] == ["P-001", "P-002", "P-003"]
    assert parsed.records[1]["centre"] == 'Centre "Est", two\nlines'
    assert parsed.records[2]["days_to_metastasis"] is None  # the padded last cell

    longer = _csv_lines(header, good, good.replace("P-001", "P-004") + ",extra", short + ",,")
    refused = read_table(longer, "t.csv", max_bytes=LIMIT)
    assert [str(p) for p in refused.problems] == [
        "row 3: has more cells than the header has columns"
    ]
    assert refused.rows == [2, 4]


def test_the_checked_table_is_kept_as_arrays_and_read_back_the_same():
    """Issue 14 item 4: the preview's checked table was kept as a pickle in the database
    (unpickling runs code); it is now NumPy arrays read with ``allow_pickle=False``."""
    from pmpd_web.cohorts.table import pack_checked, unpack_checked

    source = [
        {**GOOD_ROW, "ecog": "1", "weight_loss_pct": "12.5", "surgery_date": "2024-02-29"},
        {**NON_METASTATIC_ROW, "ecog": "", "weight_loss_pct": "", "surgery_date": ""},
    ]
    parsed = read_table(
        to_csv(source, columns=[c.name for c in STUDY]), "t.csv", max_bytes=LIMIT, columns=STUDY
    )
    assert parsed.ok, parsed.problems
    extra = {"positions": np.array([1, 0])}
    again, kept = unpack_checked(pack_checked(parsed, extra), STUDY)
    assert again.records == parsed.records and again.rows == parsed.rows
    assert again.study_present == parsed.study_present and again.filename == "t.csv"
    assert list(again.frame.columns) == list(parsed.frame.columns)
    assert kept["positions"].tolist() == [1, 0]
    for not_a_table in (b"", b"garbage", __import__("zlib").compress(b"PK\x03\x04 no zip")):
        with pytest.raises(ValueError):
            unpack_checked(not_a_table, STUDY)
