"""Analytics pages: the chooser, the dashboard sections, downloads, the report, a patient's risk.

Every page takes the cohorts, the model version and the analysis parameters from the query
string (:mod:`analytics.parameters`) and checks ``VIEW_ANALYTICS`` in every cohort; the
patient risk page checks ``VIEW_RESULTS``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from analytics import exports, services
from analytics.analyses import VARIABLES
from analytics.catalogue import MODEL_SECTIONS, SECTIONS, Entry, entries
from analytics.parameters import AnalysisParameters, ParameterError
from inference.models import ModelVersion
from inference.registry import model_version_for
from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction
from pmpd_web.accounts.permissions import Action, require, visible_cohorts
from pmpd_web.cohorts.decorators import cohort_page
from pmpd_web.cohorts.models import Cohort, Patient

#: The parameters each section's form offers (the others travel as hidden fields).
SECTION_FIELDS: dict[str, tuple[str, ...]] = {
    "evaluation": ("retune", "decision_threshold", "confidence_level"),
    "survival": (
        "retune",
        "group",
        "cutpoint_variable",
        "mrs_cutpoint",
        "minprop",
        "ca19_9_threshold",
        "conf_type",
        "at_risk_times",
        "confidence_level",
    ),
    "cox": (
        "variables",
        "univariable",
        "adjust_for",
        "reference",
        "min_events",
        "mrs_cutpoint",
        "ca19_9_threshold",
    ),
    "development": ("development_months", "confidence_level"),
    "subgroups": ("subgroups", "age_cut", "size_edges", "confidence_level"),
}
FIELD_LABELS = {
    "decision_threshold": "Decision threshold (default: the locked operating point)",
    "confidence_level": "Confidence level",
    "mrs_cutpoint": "MRS cut-point (default: locked; maxstat without a locked point)",
    "minprop": "maxstat minimal proportion",
    "ca19_9_threshold": "CA19-9 cut (U/mL)",
    "at_risk_times": "Numbers-at-risk times (days)",
    "min_events": "Fewest deaths per Cox model",
    "development_months": "Development groups (months)",
    "age_cut": "Age cut (years)",
    "size_edges": "Tumour-size edges (mm)",
}


def _cohort_ids(request: HttpRequest) -> list[int]:
    return [
        int(item)
        for value in request.GET.getlist("cohort")
        for item in value.split(",")
        if item.strip().isdigit()
    ]


def _resolve(
    request: HttpRequest,
) -> tuple[services.Selection, AnalysisParameters] | HttpResponse:
    """The permission-checked selection and parameters, or a 400 page saying what is wrong
    (after the permission check of the cohorts named, so outsiders still get 404)."""
    try:
        params = services.parse_query(request.GET)
    except ParameterError as error:
        for cohort_id in _cohort_ids(request):
            require(request.user, cohort_id, Action.VIEW_ANALYTICS)
        return render(request, "analytics/error.html", {"errors": error.errors}, status=400)
    return services.resolve_selection(request.user, params, api=False), params


def _query(request: HttpRequest, *, drop: tuple[str, ...] = ()) -> str:
    query = request.GET.copy()
    for name in drop:
        query.pop(name, None)
    return query.urlencode()


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Choose cohorts and a model version; lists only the cohorts the user may analyse."""
    chosen = _cohort_ids(request)
    for cohort_id in chosen:
        require(request.user, cohort_id, Action.VIEW_ANALYTICS)
    cohorts = visible_cohorts(request.user, Cohort.objects.all(), Action.VIEW_ANALYTICS).order_by(
        "name"
    )
    scope = chosen or list(cohorts.values_list("pk", flat=True))
    versions = (
        ModelVersion.objects.filter(predictions__patient__cohort_id__in=scope)
        .annotate(n_predictions=Count("predictions"))
        .order_by("-created_at")
    )
    return render(
        request,
        "analytics/home.html",
        {"cohorts": cohorts, "chosen": chosen, "versions": versions, "sections": SECTIONS},
    )


def _form_context(request: HttpRequest, params: AnalysisParameters, section: str) -> dict:
    fields = SECTION_FIELDS[section]
    hidden = [
        (name, value)
        for name, values in request.GET.lists()
        if name not in fields
        for value in values
    ]
    return {
        "fields": fields,
        "labels": FIELD_LABELS,
        "hidden": hidden,
        "variables": [
            {
                "name": name,
                "label": variable.label,
                "disabled": variable.needs_model and not params.with_model,
                "groupable": variable.groupable,
                "in_variables": name in params.cox_variables,
                "in_univariable": name in params.univariable_variables,
                "in_adjust_for": name in params.adjust_for,
                "in_subgroups": name in params.subgroups,
            }
            for name, variable in {
                **VARIABLES,
                **services.study_variables_of(params.cohort_ids),
            }.items()
        ],
        "references": [f"{k}:{v}" for k, v in params.reference] + ["", ""],
        "get": request.GET,
    }


@login_required
def section(request: HttpRequest, section: str) -> HttpResponse:
    """One dashboard section: its figures (PNG, SVG, data CSV) and tables (CSV, XLSX)."""
    if section not in SECTIONS:
        raise Http404("No such analytics section.")
    resolved = _resolve(request)
    if isinstance(resolved, HttpResponse):
        return resolved
    selection, params = resolved
    context: dict[str, Any] = {
        "section": section,
        "section_title": SECTIONS[section],
        "sections": SECTIONS,
        "selection": selection,
        "params": params,
        "query": _query(request),
        "form": _form_context(request, params, section),
        "needs_model": section in MODEL_SECTIONS and selection.model_version is None,
    }
    if context["needs_model"]:
        context["about"] = services.provenance(selection, params)
    else:
        job = services.background_job(
            request.user, selection, params, section, request.GET.urlencode()
        )
        if job is not None:
            context["job"] = job
        else:
            context.update(services.section_context(selection, params, section))
    context["cached"] = selection.all_cached
    response = render(request, "analytics/section.html", context)
    response["X-Analytics-Cache"] = "hit" if selection.all_cached else "miss"
    return response


def _entry(
    selection: services.Selection, params: AnalysisParameters, section: str, name: str, kind: str
) -> Entry:
    if section not in SECTIONS:
        raise Http404("No such analytics section.")
    results = services.results_for(selection, params, [section])
    for entry in entries(results, [section]):
        if entry.name == name and entry.kind == kind:
            return entry
    raise Http404(f"No {kind} called {name} in {section}.")


def _download(data: bytes, filename: str, fmt: str) -> HttpResponse:
    response = HttpResponse(data, content_type=exports.CONTENT_TYPES[fmt])
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
def figure_data(request: HttpRequest, section: str, name: str) -> HttpResponse:
    """The data a figure draws, as CSV."""
    resolved = _resolve(request)
    if isinstance(resolved, HttpResponse):
        return resolved
    selection, params = resolved
    entry = _entry(selection, params, section, name, "figure")
    data = exports.export_figure_data(entry, services.provenance(selection, params))
    exports.record_export(request.user, selection, item=f"figure {name}", fmt="csv")
    return _download(data, exports.export_filename(selection, f"{name}-data", "csv"), "csv")


@login_required
def table_download(request: HttpRequest, section: str, name: str, fmt: str) -> HttpResponse:
    """A table as CSV or XLSX."""
    if fmt not in ("csv", "xlsx"):
        raise Http404("Tables download as CSV or XLSX.")
    resolved = _resolve(request)
    if isinstance(resolved, HttpResponse):
        return resolved
    selection, params = resolved
    entry = _entry(selection, params, section, name, "table")
    data = exports.export_table(entry, fmt, services.provenance(selection, params))
    exports.record_export(request.user, selection, item=f"table {name}", fmt=fmt)
    return _download(data, exports.export_filename(selection, name, fmt), fmt)


@login_required
def provenance_download(request: HttpRequest, section: str, kind: str, name: str) -> HttpResponse:
    """The provenance of a table or figure-data download (the CSV holds the data alone)."""
    kinds = {"tables": "table", "figures": "figure"}
    if kind not in kinds:
        raise Http404("Provenance is of tables or figures.")
    resolved = _resolve(request)
    if isinstance(resolved, HttpResponse):
        return resolved
    selection, params = resolved
    entry = _entry(selection, params, section, name, kinds[kind])
    data = exports.export_provenance(entry, services.provenance(selection, params))
    return _download(data, exports.export_filename(selection, f"{name}-provenance", "txt"), "txt")


@login_required
def report(request: HttpRequest) -> HttpResponse:
    """The whole analysis as one self-contained HTML file."""
    resolved = _resolve(request)
    if isinstance(resolved, HttpResponse):
        return resolved
    selection, params = resolved
    html = exports.render_report(selection, params, request=request)
    exports.record_export(request.user, selection, item="report", fmt="html")
    return _download(
        html.encode("utf-8"), exports.export_filename(selection, "report", "html"), "html"
    )


@login_required
def tripod_report(request: HttpRequest) -> HttpResponse:
    """The TRIPOD+AI model report of a model version and its validation cohorts (``cohort``),
    at the version's locked operating point; ``?download=1`` gives the HTML file. Needs
    VIEW_ANALYTICS in every cohort named and in the version's development cohort."""
    resolved = _resolve(request)
    if isinstance(resolved, HttpResponse):
        return resolved
    selection, params = resolved
    version = selection.model_version
    if version is None:
        return render(
            request,
            "analytics/error.html",
            {"errors": {"model_version": "the TRIPOD report describes a model version"}},
            status=400,
        )
    if version.trained_on_id is not None:
        require(request.user, version.trained_on_id, Action.VIEW_ANALYTICS)
    html = exports.render_tripod(selection, dataclasses.replace(params, retune=False), request)
    if request.GET.get("download"):
        exports.record_export(request.user, selection, item="tripod", fmt="html")
        return _download(
            html.encode("utf-8"), exports.export_filename(selection, "tripod", "html"), "html"
        )
    return HttpResponse(html)


@cohort_page(Action.VIEW_RESULTS)
def patient_risk(request: HttpRequest, cohort: Cohort, study_id: str) -> HttpResponse:
    """The clinician's view of one patient (the include the patient page shows, on its own)."""
    patient = get_object_or_404(Patient, cohort=cohort, study_id=study_id)
    version_id = request.GET.get("model_version", "")
    version = model_version_for(request.user, version_id) if version_id else None
    audit(request.user, AuditAction.VIEW_PATIENT, patient=patient, view="risk")
    context = services.patient_risk_context(request.user, patient, version)
    context.update(
        {
            "cohort": cohort,
            "patient": patient,
            "patient_url": reverse("patient-detail", args=[cohort.pk, patient.study_id]),
        }
    )
    return render(request, "analytics/patient_risk.html", context)
