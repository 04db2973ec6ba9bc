"""Downloads of the analytics: tables as CSV and XLSX, figure data as CSV, and the whole
analysis as one self-contained HTML report. Every file carries its provenance (model version,
cohorts, data hash, package versions), says "research use only" and, for synthetic data, says
so in its content and its name. Exports are audited (``EXPORT_TABLE``, once per cohort).
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any

import pandas as pd
from django.contrib.staticfiles import finders
from django.template.loader import render_to_string

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

__all__ = [
    "CONTENT_TYPES",
    "export_figure_data",
    "export_filename",
    "export_table",
    "record_export",
    "render_report",
    "render_tripod",
]

CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "html": "text/html; charset=utf-8",
}


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


def _csv(frame: pd.DataFrame, lines: list[str]) -> bytes:
    header = "".join(f"# {line}\n" for line in lines)
    return (header + frame.to_csv(index=False, lineterminator="\n")).encode("utf-8")


def export_table(entry: Entry, fmt: str, about: dict[str, Any]) -> bytes:
    """A table as CSV (provenance in ``#`` comment lines) or XLSX (a provenance sheet)."""
    frame = entry.frame()
    lines = _about_lines(entry.title, about)
    if entry.not_computable is not None:
        lines.append(f"Not computable: {entry.not_computable.reason}")
    if fmt == "csv":
        return _csv(frame, lines)
    if fmt != "xlsx":
        raise ValueError(f"tables are exported as csv or xlsx, not {fmt}")
    output = io.BytesIO()
    with pd.ExcelWriter(output, engine="openpyxl") as writer:
        frame.to_excel(writer, sheet_name="table", index=False)
        pd.DataFrame({"about": lines}).to_excel(writer, sheet_name="about", index=False)
    return output.getvalue()


def export_figure_data(entry: Entry, about: dict[str, Any]) -> bytes:
    """The data a figure draws, as CSV with the provenance in ``#`` comment lines."""
    lines = _about_lines(f"{entry.title} (figure data)", about)
    if entry.not_computable is not None:
        lines.append(f"Not computable: {entry.not_computable.reason}")
    return _csv(entry.frame(), lines)


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
