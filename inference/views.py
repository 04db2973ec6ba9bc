"""Pages of the engine: the model registry, a cohort's training and scoring, its predictions,
and the Grad-CAM overlays (served only to users who may view the cohort's results)."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pmpd_web.accounts.permissions import Action, can
from pmpd_web.cohorts.decorators import cohort_page
from pmpd_web.cohorts.models import Cohort
from pmpd_web.jobs.models import Job
from pmpd_web.jobs.runner import UserFacingError

from . import registry
from .forms import ScoringForm, TrainingForm
from .jobs import start_scoring, start_training
from .models import ModelVersion, PatientPrediction
from .services import (
    RESEARCH_USE_ONLY,
    card_for,
    metrics_table,
    prediction_view,
    trained_on_label,
)
from .training import training_candidates

ENGINE_JOBS = (Job.Kind.TRAINING, Job.Kind.SCORING)


@login_required
def model_list(request: HttpRequest) -> HttpResponse:
    versions = registry.visible_model_versions(request.user).select_related("trained_on")
    rows = [
        {"version": version, "trained_on": trained_on_label(request.user, version)}
        for version in versions
    ]
    return render(
        request,
        "inference/model_list.html",
        {"rows": rows, "research_use_only": RESEARCH_USE_ONLY},
    )


@login_required
def model_detail(request: HttpRequest, version_id: int) -> HttpResponse:
    version = registry.model_version_for(request.user, version_id)
    job = version.job
    show_job = (
        job is not None
        and job.cohort_id is not None
        and can(request.user, job.cohort_id, Action.VIEW_COHORT)
    )
    card = card_for(request.user, version)
    left_out = card.get("trained_on", {}).get("skipped")
    return render(
        request,
        "inference/model_detail.html",
        {
            "version": version,
            "card": card,
            "left_out_rows": left_out if isinstance(left_out, list) else None,
            "left_out_count": len(left_out) if isinstance(left_out, list) else left_out,
            "metrics": metrics_table(version),
            "config_text": json.dumps(version.config, indent=2),
            "trained_on": trained_on_label(request.user, version),
            "can_activate": registry.can_activate(request.user, version)
            and version.status == ModelVersion.Status.READY
            and not version.is_active,
            "job": job if show_job else None,
            "research_use_only": RESEARCH_USE_ONLY,
        },
    )


@require_POST
@login_required
def model_activate(request: HttpRequest, version_id: int) -> HttpResponse:
    version = registry.model_version_for(request.user, version_id)
    if not registry.can_activate(request.user, version):
        raise PermissionDenied(
            "Only site administrators and the coordinators of the cohort a model was trained "
            "on can activate it."
        )
    try:
        registry.activate(version, request.user)
    except UserFacingError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{version.name} is now the active model version.")
    return redirect("inference-model-detail", version_id=version.pk)


def _engine_page(
    request: HttpRequest,
    cohort: Cohort,
    *,
    training_form: TrainingForm | None = None,
    scoring_form: ScoringForm | None = None,
    status: int = 200,
) -> HttpResponse:
    jobs = Job.objects.filter(cohort=cohort, kind__in=ENGINE_JOBS)[:10]
    trained_here = ModelVersion.objects.filter(trained_on=cohort)
    return render(
        request,
        "inference/cohort_engine.html",
        {
            "cohort": cohort,
            "training_form": training_form
            or TrainingForm(n_patients=training_candidates(cohort).count()),
            "scoring_form": scoring_form or ScoringForm(user=request.user),
            "jobs": jobs,
            "versions": trained_here,
            "research_use_only": RESEARCH_USE_ONLY,
            "can_view_results": can(request.user, cohort, Action.VIEW_RESULTS),
        },
        status=status,
    )


@cohort_page(Action.RUN_JOBS)
def cohort_engine(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    """Train a model on the cohort or score it with a ready version; the engine's jobs."""
    return _engine_page(request, cohort)


@require_POST
@cohort_page(Action.RUN_JOBS)
def cohort_train(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    form = TrainingForm(request.POST)
    if form.is_valid():
        try:
            version = start_training(
                cohort, user=request.user, choices=form.choices(), name=form.cleaned_data["name"]
            )
        except UserFacingError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Training of {version.name} queued.")
            return redirect("inference-cohort-engine", cohort_id=cohort.pk)
    return _engine_page(request, cohort, training_form=form, status=400)


@require_POST
@cohort_page(Action.RUN_JOBS)
def cohort_score(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    form = ScoringForm(request.POST, user=request.user)
    if form.is_valid():
        version = form.cleaned_data["model_version"]
        try:
            start_scoring(cohort, version, user=request.user)
        except UserFacingError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Scoring of {cohort.name} with {version.name} queued.")
            return redirect("inference-cohort-engine", cohort_id=cohort.pk)
    return _engine_page(request, cohort, scoring_form=form, status=400)


@cohort_page(Action.VIEW_RESULTS)
def cohort_predictions(request: HttpRequest, cohort: Cohort) -> HttpResponse:
    """The cohort's predictions under one model version (the active one by default)."""
    scored_here = (
        ModelVersion.objects.filter(predictions__patient__cohort=cohort)
        .distinct()
        .order_by("-is_active", "-created_at")
    )
    chosen = request.GET.get("version", "")
    version = (
        get_object_or_404(scored_here, pk=int(chosen)) if chosen.isdigit() else scored_here.first()
    )
    with_overlays = can(request.user, cohort, Action.VIEW_IMAGES)
    predictions = (
        PatientPrediction.objects.filter(model_version=version, patient__cohort=cohort)
        .select_related("patient", "patient__cohort", "model_version")
        .order_by("patient__study_id")
        if version is not None
        else PatientPrediction.objects.none()
    )
    return render(
        request,
        "inference/predictions.html",
        {
            "cohort": cohort,
            "version": version,
            "versions": scored_here,
            "views": [prediction_view(p, with_overlays=with_overlays) for p in predictions],
            "research_use_only": RESEARCH_USE_ONLY,
        },
    )


@cohort_page(Action.VIEW_IMAGES)
def gradcam_image(
    request: HttpRequest, cohort: Cohort, study_id: str, prediction_id: int, index: int
) -> FileResponse:
    """One Grad-CAM overlay (PNG) of a patient's prediction: the CT slice under the heat map,
    so only for roles that may view images."""
    prediction = get_object_or_404(
        PatientPrediction, pk=prediction_id, patient__cohort=cohort, patient__study_id=study_id
    )
    if index >= len(prediction.gradcam_files):
        raise Http404("No such overlay.")
    name = prediction.gradcam_files[index]
    if not default_storage.exists(name):
        raise Http404("The overlay is no longer stored; score the patient again.")
    response = FileResponse(default_storage.open(name, "rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=300"
    return response
