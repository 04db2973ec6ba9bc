"""Cohort pages: list, create, detail (patients table), patient, import, export, template."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.decorators import cohort_page
from pmpd_web.accounts.models import AuditAction, Membership, Role
from pmpd_web.accounts.permissions import ROLE_ACTIONS, Action, can, role_of, visible_cohorts
from pmpd_web.jobs.runner import UserFacingError

from . import results as cohort_results
from . import services
from . import vocabulary as v
from .forms import CohortForm, TableUploadForm
from .importer import start_commit, upload_table
from .models import Cohort, Patient, TableImport
from .results import CALLS, RISK_GROUPS
from .table import COLUMNS, FIELD_NAMES, describe_columns, write_csv, write_xlsx

PAGE_SIZE = 100


@login_required
def cohort_list(request):
    cohorts = visible_cohorts(request.user, Cohort.objects.all()).annotate(
        n_patients=Count("patients", distinct=True)
    )
    rows = [
        {
            "cohort": c,
            "role": "site admin"
            if request.user.is_superuser and role_of(request.user, c.pk) is None
            else role_of(request.user, c.pk),
        }
        for c in cohorts
    ]
    return render(
        request,
        "cohorts/cohort_list.html",
        {"rows": rows, "can_create": request.user.has_perm("cohorts.add_cohort")},
    )


@login_required
def cohort_create(request):
    if not request.user.has_perm("cohorts.add_cohort"):
        raise PermissionDenied("Only study coordinators allowed to create cohorts can do this.")
    form = CohortForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            cohort = form.save()
            Membership.objects.create(user=request.user, cohort=cohort, role=Role.COORDINATOR)
            audit(request.user, AuditAction.CREATE_COHORT, cohort=cohort)
        messages.success(request, f"Cohort {cohort} created; you are its coordinator.")
        return redirect("cohort-detail", cohort_id=cohort.pk)
    return render(request, "cohorts/cohort_form.html", {"form": form})


@cohort_page(Action.VIEW_PATIENTS)
def cohort_detail(request, cohort):
    perms = _perms(request.user, cohort)
    results = cohort_results.for_cohort(request.user, cohort) if perms["view_results"] else None
    patients = services.with_results(
        services.filter_patients(Patient.objects.filter(cohort=cohort), request.GET),
        results,
        request.GET,
    )
    page = Paginator(patients, PAGE_SIZE).get_page(request.GET.get("page"))
    total, completeness = services.completeness(Patient.objects.filter(cohort=cohort))
    query = request.GET.copy()
    query.pop("page", None)
    audit(request.user, AuditAction.VIEW_COHORT, cohort=cohort)
    return render(
        request,
        "cohorts/cohort_detail.html",
        {
            "cohort": cohort,
            "page": page,
            "total": total,
            "shown": page.paginator.count,
            "completeness": completeness,
            "metastasis_counts": services.counts_by(
                Patient.objects.filter(cohort=cohort), "metastasis_at_diagnosis"
            ),
            "filters": _filter_options(cohort, with_results=results is not None),
            "params": request.GET,
            "query": query.urlencode(),
            "sort": request.GET.get("sort", "study_id"),
            "sortable": services.SORTABLE,
            "result_sortable": services.RESULT_SORTABLE if results is not None else (),
            "results": results,
            "risk_groups": RISK_GROUPS,
            "perms": perms,
            "imports": cohort.imports.select_related("job", "uploaded_by")[:5],
        },
    )


def _filter_options(cohort, *, with_results: bool):
    centres = (
        Patient.objects.filter(cohort=cohort)
        .exclude(centre="")
        .order_by("centre")
        .values_list("centre", flat=True)
        .distinct()
    )
    return [
        ("sex", v.SEX),
        ("tumour_location", v.TUMOUR_LOCATION),
        ("nccn_resectability", v.NCCN_RESECTABILITY),
        ("metastasis_at_diagnosis", v.YES_NO_UNKNOWN),
        ("vital_status", v.VITAL_STATUS),
        ("centre", tuple(centres)),
        *([("call", CALLS), ("risk_group", RISK_GROUPS)] if with_results else []),
    ]


def _perms(user, cohort) -> dict[str, bool]:
    return {action.value: can(user, cohort, action) for action in Action}


@cohort_page(Action.VIEW_PATIENTS)
def patient_detail(request, cohort, study_id: str):
    patient = get_object_or_404(Patient, cohort=cohort, study_id=study_id)
    audit(request.user, AuditAction.VIEW_PATIENT, patient=patient)
    values = []
    for column in COLUMNS:
        if column.kind == "sites":
            value = ", ".join(v.label(s) for s in patient.metastasis_sites)
        else:
            raw = getattr(patient, column.name)
            value = v.label(raw) if column.kind == "choice" and raw else raw
        values.append({"column": column, "value": value})
    perms = _perms(request.user, cohort)
    return render(
        request,
        "cohorts/patient_detail.html",
        {
            "cohort": cohort,
            "patient": patient,
            "values": values,
            "perms": perms,
        },
    )


@cohort_page(Action.EDIT_DATA)
def import_page(request, cohort):
    form = TableUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["table"]
        try:
            table_import = upload_table(
                cohort=cohort, user=request.user, data=upload.read(), filename=upload.name
            )
        except UserFacingError as exc:
            form.add_error("table", str(exc))
        else:
            return redirect("table-import-detail", cohort_id=cohort.pk, import_id=table_import.pk)
    return render(
        request,
        "cohorts/import.html",
        {
            "cohort": cohort,
            "form": form,
            "columns": describe_columns(),
            "imports": cohort.imports.select_related("job", "uploaded_by")[:20],
        },
    )


@cohort_page(Action.EDIT_DATA)
def import_detail(request, cohort, import_id: int):
    table_import = get_object_or_404(TableImport, cohort=cohort, pk=import_id)
    return render(request, "cohorts/import_detail.html", {"cohort": cohort, "imp": table_import})


@require_POST
@cohort_page(Action.EDIT_DATA)
def import_commit(request, cohort, import_id: int):
    table_import = get_object_or_404(TableImport, cohort=cohort, pk=import_id)
    try:
        start_commit(table_import, request.user)
    except UserFacingError as exc:
        messages.error(request, str(exc))
    return redirect("table-import-detail", cohort_id=cohort.pk, import_id=table_import.pk)


@cohort_page(Action.EXPORT_TABLE)
def export_table(request, cohort, fmt: str):
    if fmt not in CONTENT_TYPES:
        raise Http404("Exports are CSV or XLSX.")
    records = Patient.objects.filter(cohort=cohort).order_by("study_id").values(*FIELD_NAMES)
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    audit(request.user, AuditAction.EXPORT_TABLE, cohort=cohort, format=fmt, patients=len(records))
    name = f"{_slug(cohort.name)}-clinical-{stamp}"
    if fmt == "xlsx":
        notes = ["Synthetic data" if cohort.is_synthetic else "", "Pseudonymised; research use"]
        return _download(write_xlsx(records, notes=[n for n in notes if n]), f"{name}.xlsx")
    return _download(write_csv(records), f"{name}.csv")


@login_required
def template_download(request, fmt: str):
    if fmt not in CONTENT_TYPES:
        raise Http404("The template is CSV or XLSX.")
    if fmt == "xlsx":
        return _download(write_xlsx([]), "pmpd-clinical-template.xlsx")
    return _download(write_csv([]), "pmpd-clinical-template.csv")


CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


def _download(data: bytes, filename: str) -> HttpResponse:
    response = HttpResponse(data, content_type=CONTENT_TYPES[filename.rsplit(".", 1)[1]])
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-") or "cohort"


ACTION_WORDS = {
    Action.VIEW_COHORT: "see the cohort",
    Action.VIEW_PATIENTS: "see its patients' clinical data",
    Action.VIEW_RESULTS: "see PMPD scores, calls and risk groups",
    Action.VIEW_IMAGES: "view CT images and segmentations",
    Action.VIEW_ANALYTICS: "use the analytics dashboards",
    Action.EDIT_DATA: "import tables, upload images",
    Action.EXPORT_TABLE: "export the clinical table",
    Action.RUN_JOBS: "train and score PMPD models",
    Action.VIEW_AUDIT: "see the cohort's audit trail",
}


@login_required
def roles_help(request):
    return render(
        request,
        "cohorts/roles.html",
        {
            "roles": [
                (Role(r).label, [ACTION_WORDS[a] for a in Action if a in acts])
                for r, acts in ROLE_ACTIONS.items()
            ]
        },
    )
