"""Image pages: the cohort's Images page (uploads and each patient's CT and mask), an upload's
status, and a patient's images with the pick."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, Sum
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction
from pmpd_web.accounts.permissions import Action, can
from pmpd_web.cohorts.decorators import cohort_page
from pmpd_web.cohorts.models import Patient
from pmpd_web.jobs.runner import UserFacingError

from .models import CanonicalVolume, ImageSeries, ImageUpload
from .series_pick import select_series

PAGE_SIZE = 100


BROWSER_CHUNK_BYTES = 8 * 1024 * 1024


def upload_chunk_bytes() -> int:
    """The chunk size the page's uploader sends: 8 MiB, or the server's limit when smaller."""
    return min(BROWSER_CHUNK_BYTES, settings.PMPD_UPLOAD_CHUNK_MAX_BYTES)


def _uploads(cohort):
    return (
        ImageUpload.objects.filter(cohort=cohort)
        .select_related("job", "patient", "uploaded_by")
        .annotate(
            n_files=Count("files"),
            size_bytes=Sum("files__size_bytes", default=0),
            received_bytes=Sum("files__received_bytes", default=0),
        )
        .order_by("-created_at", "-id")
    )


def imaging_counts(cohort) -> dict[str, int]:
    """Patients, patients with a CT, and with a mask on their selected CT."""
    patients = Patient.objects.filter(cohort=cohort)
    selected = ImageSeries.objects.filter(
        study__patient=OuterRef("pk"), modality="CT", is_selected=True
    )
    masked = CanonicalVolume.objects.filter(
        patient=OuterRef("pk"), kind=CanonicalVolume.Kind.MASK, series__is_selected=True
    )
    return patients.aggregate(
        patients=Count("pk"),
        with_ct=Count("pk", filter=Q(Exists(selected))),
        with_mask=Count("pk", filter=Q(Exists(masked))),
    )


def _ct_series(queryset=None):
    """The CT series of ``queryset`` (default: every series), each marked with ``has_mask``.

    ``is None``, never ``or``: an empty queryset is falsy, and the Images page of a patient
    without a CT once listed every CT series of every cohort."""
    series = ImageSeries.objects.all() if queryset is None else queryset
    return series.filter(modality="CT").annotate(
        has_mask=Exists(
            CanonicalVolume.objects.filter(series=OuterRef("pk"), kind=CanonicalVolume.Kind.MASK)
        )
    )


@cohort_page(Action.VIEW_IMAGES)
def images_page(request, cohort):
    query = request.GET.get("q", "").strip()
    patients = Patient.objects.filter(cohort=cohort).order_by("study_id")
    if query:
        patients = patients.filter(study_id__icontains=query)
    patients = patients.prefetch_related(
        Prefetch(
            "imaging_studies__series",
            queryset=_ct_series().order_by("-is_selected", "id"),
            to_attr="ct_series",
        )
    )
    page = Paginator(patients, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = []
    for patient in page:
        series = [s for study in patient.imaging_studies.all() for s in study.ct_series]
        selected = next((s for s in series if s.is_selected), None)
        rows.append({"patient": patient, "n_ct": len(series), "selected": selected})
    may_upload = can(request.user, cohort, Action.EDIT_DATA)
    return render(
        request,
        "imaging/images.html",
        {
            "cohort": cohort,
            "counts": imaging_counts(cohort),
            "page": page,
            "rows": rows,
            "query": query,
            "may_upload": may_upload,
            "uploads": _uploads(cohort)[:20] if may_upload else [],
            "upload_chunk_bytes": upload_chunk_bytes(),
        },
    )


@cohort_page(Action.EDIT_DATA)
def upload_detail(request, cohort, upload_id: int):
    upload = get_object_or_404(_uploads(cohort), pk=upload_id)
    return render(
        request,
        "imaging/upload_detail.html",
        {"cohort": cohort, "upload": upload, "files": upload.files.all()[:2000]},
    )


@cohort_page(Action.EDIT_DATA)
def upload_status(request, cohort, upload_id: int):
    """The status partial of an upload, polled by htmx until the ingest has finished."""
    upload = get_object_or_404(_uploads(cohort), pk=upload_id)
    return render(
        request,
        "imaging/_upload_status.html",
        {"cohort": cohort, "upload": upload, "files": upload.files.all()[:2000]},
    )


@cohort_page(Action.VIEW_IMAGES)
def patient_images(request, cohort, study_id: str):
    patient = get_object_or_404(Patient, cohort=cohort, study_id=study_id)
    audit(request.user, AuditAction.VIEW_PATIENT, patient=patient, page="images")
    series = (
        _ct_series(ImageSeries.objects.filter(study__patient=patient))
        .select_related("study", "picked_by")
        .prefetch_related("segmentations", "volumes")
        .order_by("-is_selected", "id")
    )
    may_upload = can(request.user, cohort, Action.EDIT_DATA)
    return render(
        request,
        "imaging/patient_images.html",
        {
            "cohort": cohort,
            "patient": patient,
            "series": series,
            "may_upload": may_upload,
            "uploads": _uploads(cohort).filter(patient=patient)[:10] if may_upload else [],
            "upload_chunk_bytes": upload_chunk_bytes(),
            "date_note": (
                "dates shifted back by a per-patient offset (intervals kept)"
                if settings.PMPD_DEID_DATES == "shift"
                else "dates reduced to their year"
            ),
        },
    )


@require_POST
@cohort_page(Action.EDIT_DATA)
def patient_images_select(request, cohort, study_id: str):
    patient = get_object_or_404(Patient, cohort=cohort, study_id=study_id)
    series = get_object_or_404(
        ImageSeries, pk=request.POST.get("series") or 0, study__patient=patient, modality="CT"
    )
    try:
        select_series(series, request.user)
    except UserFacingError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"The engine now uses {series.description or 'this series'}.")
    return redirect("patient-images", cohort_id=cohort.pk, study_id=patient.study_id)
