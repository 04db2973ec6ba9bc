"""Segmentation pages of a cohort: the review queue (who is reviewing what), the nnU-Net models
with their cards, and the coordinator's forms: train, import (upload, then map the labels),
activate, predict masks. Every form calls the function the API calls (``segmentation_jobs``)."""

from __future__ import annotations

import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from django.contrib import messages
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from pmpd_web.accounts.permissions import Action, can
from pmpd_web.cohorts.decorators import cohort_page
from pmpd_web.cohorts.models import Cohort
from pmpd_web.imaging.mask_versions import mark_reviewing
from pmpd_web.imaging.models import MaskVersion
from pmpd_web.jobs.models import Job
from pmpd_web.jobs.runner import UserFacingError

from .segmentation import nnunet_core as nc
from .segmentation_forms import (
    ImportUploadForm,
    LabelMappingForm,
    PredictForm,
    TrainSegmentationForm,
    checked_upload,
)
from .segmentation_jobs import (
    activate_segmentation_model,
    approved_training_patients,
    import_segmentation_model,
    patients_to_segment,
    review_queue,
    start_segmentation,
    start_segmentation_training,
)
from .segmentation_models import SegmentationModelVersion

SEGMENTATION_JOBS = (Job.Kind.SEGMENTATION_TRAINING, Job.Kind.SEGMENTATION)


def _segmentation_mode_url(study_instance_uid: str) -> str:
    """OHIF's segmentation mode on the patient's CT study (brush, eraser, save as SEG)."""
    query = urlencode({"StudyInstanceUIDs": study_instance_uid})
    return f"{reverse('ohif', kwargs={'path': 'segmentation'})}?{query}"


@cohort_page(Action.VIEW_IMAGES)
def review_page(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    queue = list(review_queue(cohort).select_related("ct_series__study")[:500])
    may_annotate = can(request.user, cohort, Action.ANNOTATE)
    rows = [
        {
            "version": version,
            "segmentation_url": _segmentation_mode_url(version.ct_series.study.study_instance_uid),
            "mine": version.reviewing_by_id == request.user.pk,
        }
        for version in queue
    ]
    return render(
        request,
        "inference/review_queue.html",
        {
            "cohort": cohort,
            "rows": rows,
            "may_annotate": may_annotate,
            "may_run_jobs": can(request.user, cohort, Action.RUN_JOBS),
        },
    )


@require_POST
@cohort_page(Action.ANNOTATE)
def review_claim(request: HttpRequest, cohort: Cohort, version_id: int) -> HttpResponse:
    """ "I'm reviewing this" (or "I stopped"): the queue shows the reader's name and since when."""
    version = get_object_or_404(
        MaskVersion.objects.select_related("patient", "reviewing_by"),
        pk=version_id,
        patient__cohort=cohort,
    )
    stop = request.POST.get("stop") == "1"
    if version.status != MaskVersion.Status.NEEDS_REVIEW:
        messages.error(
            request,
            f"Mask version {version.number} of {version.patient.study_id} is "
            f"{version.get_status_display().lower()}: nothing to review.",
        )
    else:
        previous = version.reviewing_by
        mark_reviewing(version, request.user, reviewing=not stop)
        taking_over = (
            f", taking over from {previous.username}"
            if previous is not None and previous != request.user and not stop
            else ""
        )
        messages.success(
            request,
            f"{'You stopped reviewing' if stop else 'You are reviewing'} "
            f"{version.patient.study_id} (mask version {version.number}){taking_over}.",
        )
    return redirect("review-queue", cohort_id=cohort.pk)


# ------------------------------------------------------------------------------------------
# The models and their cards


def _models_page(
    request: HttpRequest, cohort: Cohort, *, predict_form: PredictForm | None = None, status=200
) -> HttpResponse:
    may_run_jobs = can(request.user, cohort, Action.RUN_JOBS)
    to_segment = patients_to_segment(cohort).count()
    return render(
        request,
        "inference/segmentation/models.html",
        {
            "cohort": cohort,
            "models": SegmentationModelVersion.objects.filter(cohort=cohort).select_related(
                "job", "created_by"
            ),
            "active": SegmentationModelVersion.objects.filter(
                cohort=cohort, is_active=True
            ).first(),
            "may_run_jobs": may_run_jobs,
            "predict_form": predict_form or PredictForm(cohort=cohort),
            "to_segment": to_segment,
            "jobs": Job.objects.filter(cohort=cohort, kind__in=SEGMENTATION_JOBS)[:10]
            if may_run_jobs
            else [],
            "needs_review": review_queue(cohort).count(),
            "approved": approved_training_patients(cohort).count(),
        },
        status=status,
    )


@cohort_page(Action.VIEW_IMAGES)
def models_page(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    return _models_page(request, cohort)


def _dice_rows(model: SegmentationModelVersion) -> list[dict]:
    dice = model.card.get("dice_per_fold") or {}
    return [
        {"fold": fold, "pancreas": values.get("pancreas"), "tumour": values.get("tumour")}
        for fold, values in sorted(dice.items())
        if isinstance(values, dict)
    ]


@cohort_page(Action.VIEW_IMAGES)
def model_card(request: HttpRequest, cohort: Cohort, model_id: int) -> HttpResponse:
    model = get_object_or_404(
        SegmentationModelVersion.objects.select_related("job", "created_by"),
        pk=model_id,
        cohort=cohort,
    )
    may_run_jobs = can(request.user, cohort, Action.RUN_JOBS)
    return render(
        request,
        "inference/segmentation/model_card.html",
        {
            "cohort": cohort,
            "model": model,
            "card": model.card,
            "dice_rows": _dice_rows(model),
            "may_run_jobs": may_run_jobs,
            "job": model.job if may_run_jobs or request.user.is_superuser else None,
        },
    )


@require_POST
@cohort_page(Action.RUN_JOBS)
def model_activate(request: HttpRequest, cohort: Cohort, model_id: int) -> HttpResponse:
    model = get_object_or_404(SegmentationModelVersion, pk=model_id, cohort=cohort)
    try:
        activate_segmentation_model(model)
    except UserFacingError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{model} now predicts the masks of {cohort.name}.")
    return redirect("segmentation-model-card", cohort_id=cohort.pk, model_id=model.pk)


@require_POST
@cohort_page(Action.RUN_JOBS)
def predict(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    """Predict masks with the active model: the patients without one, or those named."""
    form = PredictForm(request.POST, cohort=cohort)
    if form.is_valid():
        model = SegmentationModelVersion.objects.filter(cohort=cohort, is_active=True).first()
        if model is None:
            form.add_error(
                None, "No active segmentation model: activate a ready one (or train or import one)."
            )
        else:
            try:
                job = start_segmentation(
                    cohort, model, user=request.user, study_ids=form.cleaned_data["study_ids"]
                )
            except UserFacingError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Segmentation with {model.name} queued.")
                return redirect("job-detail", job_id=job.pk)
    return _models_page(request, cohort, predict_form=form, status=400)


# ------------------------------------------------------------------------------------------
# Training


@cohort_page(Action.RUN_JOBS)
def train(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    n_patients = approved_training_patients(cohort).count()
    default_name = f"{cohort.name} nnU-Net {timezone.localtime():%Y-%m-%d %H:%M}"[:120]
    if request.method != "POST":
        form = TrainSegmentationForm(n_patients=n_patients, default_name=default_name)
        return _train_page(request, cohort, form)
    form = TrainSegmentationForm(request.POST, n_patients=n_patients)
    if form.is_valid():
        try:
            model = start_segmentation_training(
                cohort, user=request.user, name=form.cleaned_data["name"], budget=form.budget()
            )
        except UserFacingError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Training of {model} queued on the GPU queue.")
            return redirect("job-detail", job_id=model.job_id)
    return _train_page(request, cohort, form, status=400)


def _train_page(request, cohort, form, status=200) -> HttpResponse:
    return render(
        request,
        "inference/segmentation/train.html",
        {"cohort": cohort, "form": form},
        status=status,
    )


# ------------------------------------------------------------------------------------------
# Importing a model trained elsewhere: upload (checked, kept aside), then map its labels.


PENDING_FOLDER = "segmentation-models/pending"
# An upload whose labels were never mapped (the session ended) is deleted after this long.
ABANDONED_AFTER = timedelta(days=1)


def _forget_abandoned_uploads() -> None:
    if not default_storage.exists(PENDING_FOLDER):
        return
    cutoff = timezone.now() - ABANDONED_AFTER
    for name in default_storage.listdir(PENDING_FOLDER)[1]:
        path = f"{PENDING_FOLDER}/{name}"
        if default_storage.get_modified_time(path) < cutoff:
            default_storage.delete(path)


def _pending_key(cohort: Cohort) -> str:
    return f"segmentation-import-{cohort.pk}"


def _drop_pending(request: HttpRequest, cohort: Cohort) -> None:
    pending = request.session.pop(_pending_key(cohort), None)
    if pending and default_storage.exists(pending["file"]):
        default_storage.delete(pending["file"])


@cohort_page(Action.RUN_JOBS)
def import_upload(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    """Step 1: the ZIP is checked as the import checks it; only a good one is kept aside for
    step 2 (in this session), and its labels are read for the mapping."""
    posted = request.method == "POST"
    form = ImportUploadForm(request.POST if posted else None, request.FILES if posted else None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        with tempfile.TemporaryDirectory() as scratch:
            try:
                path, labels = checked_upload(upload, Path(scratch))
            except nc.NnUNetError as exc:
                form.add_error("file", str(exc))
            else:
                _drop_pending(request, cohort)
                _forget_abandoned_uploads()
                with path.open("rb") as handle:
                    stored = default_storage.save(
                        f"{PENDING_FOLDER}/{uuid.uuid4().hex}.zip", File(handle)
                    )
                request.session[_pending_key(cohort)] = {
                    "file": stored,
                    "upload_name": path.name,
                    "labels": labels,
                }
                return redirect("segmentation-import-labels", cohort_id=cohort.pk)
    return render(
        request,
        "inference/segmentation/import.html",
        {"cohort": cohort, "form": form},
        status=400 if request.method == "POST" else 200,
    )


@cohort_page(Action.RUN_JOBS)
def import_labels(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    """Step 2: map the model's labels to pancreas and tumour and store the model."""
    pending = request.session.get(_pending_key(cohort))
    if not pending or not default_storage.exists(pending["file"]):
        messages.error(request, "Upload the model's results ZIP first.")
        return redirect("segmentation-import", cohort_id=cohort.pk)
    if request.method == "POST" and "cancel" in request.POST:
        _drop_pending(request, cohort)
        messages.success(request, f"Import of {pending['upload_name']} cancelled; nothing stored.")
        return redirect("segmentation-models", cohort_id=cohort.pk)
    default_name = Path(pending["upload_name"]).stem[:120]
    form = LabelMappingForm(
        request.POST if request.method == "POST" else None,
        labels=pending["labels"],
        default_name=default_name,
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            with default_storage.open(pending["file"], "rb") as handle:
                model = import_segmentation_model(
                    cohort,
                    user=request.user,
                    upload=File(handle, name=pending["upload_name"]),
                    name=data["name"],
                    pancreas_label=data["pancreas_label"],
                    tumour_label=data["tumour_label"],
                )
        except UserFacingError as exc:
            form.add_error(None, str(exc))
        else:
            _drop_pending(request, cohort)
            messages.success(request, f"{model} imported; activate it to predict with it.")
            return redirect("segmentation-model-card", cohort_id=cohort.pk, model_id=model.pk)
    return render(
        request,
        "inference/segmentation/import_labels.html",
        {"cohort": cohort, "form": form, "pending": pending},
        status=400 if request.method == "POST" else 200,
    )
