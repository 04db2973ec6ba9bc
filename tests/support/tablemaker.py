"""Builds clinical tables for tests, in the template's columns."""

from __future__ import annotations

import csv
import io

from pmpd_web.cohorts.table import COLUMN_NAMES

GOOD_ROW = {
    "study_id": "P-001",
    "age_at_diagnosis_years": "66",
    "sex": "female",
    "centre": "Madrid",
    "tumour_location": "head",
    "tumour_size_mm": "32.5",
    "ct_manufacturer": "SIEMENS",
    "ca19_9_u_per_ml": "812.25",
    "nccn_resectability": "metastatic",
    "metastasis_at_diagnosis": "yes",
    "metastasis_sites": "liver;peritoneum",
    "metastasis_detection": "imaging",
    "overall_survival_days": "210",
    "vital_status": "dead",
    "developed_metastasis": "",
    "days_to_metastasis": "",
}
NON_METASTATIC_ROW = {
    **GOOD_ROW,
    "study_id": "P-002",
    "sex": "male",
    "nccn_resectability": "resectable",
    "metastasis_at_diagnosis": "no",
    "metastasis_sites": "",
    "metastasis_detection": "",
    "ca19_9_u_per_ml": "",
    "overall_survival_days": "900",
    "vital_status": "alive",
    "developed_metastasis": "yes",
    "days_to_metastasis": "120",
}


def rows(count: int, start: int = 1) -> list[dict[str, str]]:
    out = []
    for i in range(start, start + count):
        base = GOOD_ROW if i % 3 == 0 else NON_METASTATIC_ROW
        out.append({**base, "study_id": f"P-{i:05d}", "age_at_diagnosis_years": str(40 + i % 50)})
    return out


def to_csv(records: list[dict[str, str]], columns=COLUMN_NAMES, delimiter: str = ",") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(columns)
    for record in records:
        writer.writerow([record.get(c, "") for c in columns])
    return out.getvalue().encode("utf-8")


def to_xlsx(records: list[dict[str, str]], columns=COLUMN_NAMES, formulas=None) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(list(columns))
    for record in records:
        sheet.append([record.get(c, "") for c in columns])
    for cell_ref, formula in (formulas or {}).items():
        sheet[cell_ref] = formula
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()
