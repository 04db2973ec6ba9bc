"""Downloads of the analytics: tables as CSV and XLSX, figure data as CSV, and the whole
analysis as one self-contained HTML report. Exports are audited (``EXPORT_TABLE``, once per
cohort).

A statistician loads them without editing: the CSV is the table alone (``pandas.read_csv``,
R's ``read.csv``), with human column headers ("95% CI lower", not ``0.95LCL``) and variables
by their labels ("MRS (per 0.1)", "Centre: Madrid", not ``mrs_per_0_1``); its
provenance (model version, operating point and parameters, cohorts, data hash, package
versions, "research use only", and for synthetic data a SYNTHETIC DATA line) is the text file
linked beside it, and the XLSX carries it in its own "Provenance" sheet. Numbers stay numbers;
text that a spreadsheet would run as a formula is escaped (:mod:`pmpd_web.spreadsheets`, the
one escaping of every table the platform writes). Synthetic data also say so in the file name.
"""

from __future__ import annotations

import io
import re
from functools import cache
from typing import Any

import pandas as pd
from django.contrib.staticfiles import finders
from django.template.loader import render_to_string

from analytics.analyses import VARIABLES
from analytics.catalogue import SECTIONS, Entry
from analytics.parameters import AnalysisParameters
from analytics.services import (
    Selection,
    canonical_json,
    export_stem,
    provenance,
    section_context,
)
from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction
from pmpd_web.spreadsheets import escape_frame

__all__ = [
    "CONTENT_TYPES",
    "export_figure_data",
    "export_filename",
    "export_provenance",
    "export_table",
    "human_header",
    "record_export",
    "render_report",
    "render_tripod",
]

CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "html": "text/html; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}

#: Column headers of the statistics (lifelines', R's) as a reader of the table says them.
HEADERS = {
    "n.risk": "number at risk",
    "n.event": "events",
    "n.censor": "censored",
    "std.err": "standard error",
    "lower": "CI lower",
    "upper": "CI upper",
    "time": "time (days)",
    "median": "median survival (days)",
    "coef": "log hazard ratio",
    "exp(coef)": "hazard ratio",
    "se(coef)": "standard error of log hazard ratio",
    "z": "z statistic",
    "p": "p-value",
    "p (Holm)": "p-value (Holm)",
    "df": "degrees of freedom",
    "fpr": "false positive rate (1 - specificity)",
    "tpr": "true positive rate (sensitivity)",
    "tpr lower": "sensitivity CI lower",
    "tpr upper": "sensitivity CI upper",
    "cut": "MRS cut-point",
    "metastasis_risk_score": "MRS (0-1)",
    "median MRS": "median MRS (0-1)",
}
_LEVEL_SUFFIX = re.compile(r"^(?P<level>0?\.\d+)(?P<side>LCL|UCL)$")
_LEVEL_PREFIX = re.compile(r"^(?P<side>lower|upper) (?P<level>0?\.\d+)$")


def _percent(level: str) -> str:
    return f"{float(level) * 100:g}%"


def human_header(name: str) -> str:
    """``0.95LCL`` -> "95% CI lower", ``lower .95`` -> "hazard ratio 95% CI lower",
    ``n.risk`` -> "number at risk"; other names unchanged."""
    if match := _LEVEL_SUFFIX.match(name):
        side = "lower" if match["side"] == "LCL" else "upper"
        return f"{_percent(match['level'])} CI {side}"
    if match := _LEVEL_PREFIX.match(name):
        return f"hazard ratio {_percent(match['level'])} CI {match['side']}"
    return HEADERS.get(name, name)


def _about_lines(title: str, about: dict[str, Any]) -> list[str]:
    version = about["model_version"]
    lines = [
        f"PMPD analytics: {title}",
        about["research_use_only"],
    ]
    if about["synthetic"]:
        lines.append("SYNTHETIC DATA: computed on synthetic data, not patient data.")
    lines += [
        "Model version: "
        + (f"{version['name']} (id {version['id']})" if version else "none (clinical data only)"),
        f"Operating point: {about.get('operating_point') or 'none (no model version)'}",
        "Cohorts: "
        + "; ".join(
            f"{c['name']} (id {c['id']}, data version {c['data_version']})"
            for c in about["cohorts"]
        ),
        f"Patients analysed: {about['n_patients']}",
        f"Data hash (SHA-256 of the patient-level frame): {about['data_hash']}",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in about["packages"].items()),
        f"Generated: {about['generated_at']}",
    ]
    if about.get("parameters"):
        lines.append("Parameters: " + canonical_json(about["parameters"]))
    return lines


def export_filename(selection: Selection, name: str, extension: str) -> str:
    return f"{export_stem(selection, name)}.{extension}"


#: Columns whose cells name variables (Cox models and terms, Kaplan-Meier groupings, notes).
VARIABLE_COLUMNS = ("model", "term", "grouping", "variable", "note")
# A variable name, whole, with its level in brackets when it is a Cox term: centre[Madrid].
_VARIABLE_NAME = re.compile(
    r"\b(?P<name>"
    + "|".join(sorted(map(re.escape, VARIABLES), key=len, reverse=True))
    + r")\b(?:\[(?P<level>[^\]]*)\])?"
)


def label_variables(text: str) -> str:
    """``mrs_per_0_1`` -> "MRS (per 0.1)", ``centre[Madrid]`` -> "Centre: Madrid", in text."""

    def label(match: re.Match) -> str:
        name = VARIABLES[match["name"]].label
        return f"{name}: {match['level']}" if match["level"] is not None else name

    return _VARIABLE_NAME.sub(label, text)


def _readable(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as a reader sees it: word headers, variable labels, formulas escaped."""
    frame = frame.copy()
    for column in VARIABLE_COLUMNS:
        if column in frame.columns and frame[column].dtype == object:
            frame[column] = frame[column].map(
                lambda v: label_variables(v) if isinstance(v, str) else v
            )
    return escape_frame(frame.rename(columns=lambda name: human_header(str(name))))


def _csv(frame: pd.DataFrame) -> bytes:
    # "\r\n" (RFC 4180): a carriage return inside a value is then quoted.
    return _readable(frame).to_csv(index=False, lineterminator="\r\n").encode("utf-8")


def _entry_lines(entry: Entry, about: dict[str, Any]) -> list[str]:
    title = entry.title if entry.kind == "table" else f"{entry.title} (figure data)"
    lines = _about_lines(title, about)
    if entry.not_computable is not None:
        lines.append(f"Not computable: {entry.not_computable.reason}")
    return lines


def export_table(entry: Entry, fmt: str, about: dict[str, Any]) -> bytes:
    """A table as CSV (the table alone) or XLSX (sheets "table" and "Provenance")."""
    frame = entry.frame()
    if fmt == "csv":
        return _csv(frame)
    if fmt != "xlsx":
        raise ValueError(f"tables are exported as csv or xlsx, not {fmt}")
    output = io.BytesIO()
    with pd.ExcelWriter(output, engine="openpyxl") as writer:
        _readable(frame).to_excel(writer, sheet_name="table", index=False)
        provenance = pd.DataFrame({"Provenance": _entry_lines(entry, about)})
        escape_frame(provenance).to_excel(writer, sheet_name="Provenance", index=False)
    return output.getvalue()


def export_figure_data(entry: Entry, about: dict[str, Any]) -> bytes:
    """The data a figure draws, as CSV (its provenance: :func:`export_provenance`)."""
    return _csv(entry.frame())


def export_provenance(entry: Entry, about: dict[str, Any]) -> bytes:
    """The provenance of a table or figure-data download, as the text file beside it."""
    return "".join(f"{line}\n" for line in _entry_lines(entry, about)).encode("utf-8")


def record_export(user: Any, selection: Selection, *, item: str, fmt: str) -> None:
    """Audit an analytics export once per cohort it draws on."""
    for cohort in selection.cohorts:
        audit(
            user,
            AuditAction.EXPORT_TABLE,
            cohort=cohort,
            label=f"analytics {item}",
            kind="analytics",
            item=item,
            format=fmt,
            model_version=selection.model_version.pk if selection.model_version else None,
            cohorts=selection.cohort_ids,
        )


@cache
def _static_text(path: str) -> str:
    found = finders.find(path)
    if not found:
        raise FileNotFoundError(f"static file {path} not found (run the frontend build)")
    with open(found, encoding="utf-8") as handle:
        return handle.read()


def _inline_script(text: str) -> str:
    # A literal "</script" would end the inline element early.
    return text.replace("</script", "<\\/script")


def render_report(selection: Selection, params: AnalysisParameters, *, request: Any = None) -> str:
    """The whole analysis as one HTML file: plotly.js, styles, figures, tables, provenance."""
    sections = []
    notes: list[str] = []
    for section, title in SECTIONS.items():
        shown = section_context(selection, params, section)
        notes.extend(note for note in shown["notes"] if note not in notes)
        sections.append({"name": section, "title": title, **shown})
    return render_to_string(
        "analytics/report.html",
        {
            "selection": selection,
            "sections": sections,
            "about": provenance(selection, params),
            "parameters_json": canonical_json(params.to_dict()),
            "notes": notes,
            "plotly_js": _inline_script(_static_text("vendor/plotly.min.js")),
            "figures_js": _inline_script(_static_text("analytics/figures.js")),
            "styles": _static_text("pmpd/app.css") + _static_text("analytics/analytics.css"),
        },
        request=request,
    )


def render_tripod(selection: Selection, params: AnalysisParameters, request: Any = None) -> str:
    """The TRIPOD+AI model report (:mod:`analytics.tripod`) as one self-contained HTML file."""
    from analytics.tripod import tripod_context

    return render_to_string(
        "analytics/tripod.html",
        {
            **tripod_context(selection, params),
            "plotly_js": _inline_script(_static_text("vendor/plotly.min.js")),
            "figures_js": _inline_script(_static_text("analytics/figures.js")),
            "styles": _static_text("pmpd/app.css") + _static_text("analytics/analytics.css"),
        },
        request=request,
    )
