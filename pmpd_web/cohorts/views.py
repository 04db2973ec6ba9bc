"""Cohort pages: list, create, detail (patients table), patient, import, export, template."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction, Membership, Role
from pmpd_web.accounts.permissions import (
    ROLE_ACTIONS,
    Action,
    can,
    require,
    role_of,
    visible_cohorts,
)
from pmpd_web.cohorts.decorators import cohort_page
from pmpd_web.jobs.runner import UserFacingError

from . import results as cohort_results
from . import services
from . import vocabulary as v
from .forms import CohortForm, StudyVariableForm, TableUploadForm
from .importer import start_commit, upload_table
from .models import Cohort, Patient, StudyVariable, TableImport, table_columns
from .results import CALLS, RISK_GROUPS
from .table import COLUMNS, FIELD_NAMES, describe_columns, write_csv, write_xlsx
from .variables import define_variable, errors_of, parse_choices, remove_variable

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
            "columns": describe_columns(table_columns(cohort)),
            "imports": cohort.imports.select_related("job", "uploaded_by")[:20],
        },
    )


@cohort_page(Action.VIEW_PATIENTS)
def study_variables(request, cohort):
    """The cohort's study-defined variables; coordinators define new ones here."""
    may_edit = can(request.user, cohort, Action.EDIT_DATA)
    form = StudyVariableForm(request.POST or None)
    if request.method == "POST":
        if not may_edit:
            raise PermissionDenied("Only the cohort's coordinators define study variables.")
        if form.is_valid():
            values = dict(form.cleaned_data)
            values["choices"] = parse_choices(values.pop("choices_text") or "")
            try:
                variable = define_variable(cohort=cohort, user=request.user, values=values)
            except ValidationError as error:
                for name, problems in errors_of(error).items():
                    target = "choices_text" if name == "choices" else name
                    for problem in problems:
                        form.add_error(target if target in form.fields else None, problem)
            else:
                messages.success(
                    request,
                    f"Study variable {variable.name} defined: the template and the import now "
                    "take its column.",
                )
                return redirect("study-variables", cohort_id=cohort.pk)
    return render(
        request,
        "cohorts/variables.html",
        {
            "cohort": cohort,
            "variables": cohort.study_variables.all(),
            "form": form,
            "may_edit": may_edit,
        },
    )


@require_POST
@cohort_page(Action.EDIT_DATA)
def study_variable_delete(request, cohort, name: str):
    variable = get_object_or_404(StudyVariable, cohort=cohort, name=name)
    removed = remove_variable(variable=variable, user=request.user)
    messages.success(request, f"Study variable {name} removed ({removed} patients had a value).")
    return redirect("study-variables", cohort_id=cohort.pk)


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
    records = (
        Patient.objects.filter(cohort=cohort)
        .order_by("study_id")
        .values(*FIELD_NAMES, "study_values")
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    audit(request.user, AuditAction.EXPORT_TABLE, cohort=cohort, format=fmt, patients=len(records))
    name = f"{_slug(cohort.name)}-clinical-{stamp}"
    columns = table_columns(cohort)
    if fmt == "xlsx":
        notes = ["Synthetic data" if cohort.is_synthetic else "", "Pseudonymised; research use"]
        return _download(
            write_xlsx(records, notes=[n for n in notes if n], columns=columns), f"{name}.xlsx"
        )
    return _download(write_csv(records, columns=columns), f"{name}.csv")


@login_required
def template_download(request, fmt: str):
    """The empty template; with ``?cohort=<id>`` (a member's cohort) its study variables too."""
    if fmt not in CONTENT_TYPES:
        raise Http404("The template is CSV or XLSX.")
    columns, name = COLUMNS, "pmpd-clinical-template"
    cohort_id = request.GET.get("cohort", "")
    if cohort_id:
        if not cohort_id.isdigit():
            raise Http404("No such cohort.")
        require(request.user, int(cohort_id), Action.VIEW_PATIENTS)
        cohort = get_object_or_404(Cohort, pk=int(cohort_id))
        columns, name = table_columns(cohort), f"{_slug(cohort.name)}-clinical-template"
    if fmt == "xlsx":
        return _download(write_xlsx([], columns=columns), f"{name}.xlsx")
    return _download(write_csv([], columns=columns), f"{name}.csv")


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
    Action.ANNOTATE: "correct, approve and reject pancreas and tumour masks",
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
