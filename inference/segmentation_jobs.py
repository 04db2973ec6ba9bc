"""Segmentation jobs: train an nnU-Net v2 on a cohort's approved masks, import one trained
elsewhere, and predict masks that become "automatic" mask versions needing review.

The work is ``inference.segmentation.nnunet_core``'s; this module loads rows, calls it and
stores what it returns (the results folder as a ZIP in storage, the card, the mask versions).

A cohort's masks are predicted in parts of ``PMPD_SEGMENTATION_PATIENTS_PER_PART`` patients on
the gpu queue (``pmpd_web.jobs.parts``, as a scoring job's), so N GPU workers share one cohort,
and a part whose worker died is finished by another with every patient's mask stored once.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Exists, OuterRef

from inference.segmentation import nnunet_core as nc
from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction, acting_user
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.imaging.mask_versions import (
    NO_TUMOUR_FLAG,
    PANCREAS_ONLY_FLAG,
    store_mask_version,
)
from pmpd_web.imaging.models import CanonicalVolume, ImageSeries, MaskVersion
from pmpd_web.jobs.dispatch import start_on_commit
from pmpd_web.jobs.models import Job
from pmpd_web.jobs.parts import PlannedPart, hand_over, run_parts_here, split
from pmpd_web.jobs.runner import UserFacingError, run_job

from .cache import read_canonical, selected_volumes
from .jobs import _reporting
from .segmentation_models import SegmentationModelVersion

# Named rather than imported: the tasks module imports this one.
SEGMENTATION_TRAINING_TASK = "inference.tasks.gpu_train_segmentation_model"
SEGMENTATION_TASK = "inference.tasks.gpu_predict_masks"
# A segmentation job's parts: predicted on the gpu queue (nnU-Net preprocesses each case itself).
SEGMENTATION_PART_TASKS = ("inference.tasks.gpu_predict_masks_part",)

Progress = Callable[[int, str], None]

log = logging.getLogger(__name__)

# nnU-Net's five-fold split needs five cases; the train form and the API say so before starting.
MIN_TRAINING_PATIENTS = 5
# nnU-Net's configurations; it plans 3d_lowres only for images too large for 3d_fullres.
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")


def _device() -> str:
    """A GPU worker predicts on its GPU; the embedded worker on the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("nnunetv2", "torch", "dynamic-network-architectures"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _case(patient: Patient, *, with_mask: bool) -> nc.Case:
    """The patient's selected CT (and approved mask) as an nnU-Net case, read as PMPD reads
    them (``inference.cache.read_canonical``)."""
    volumes = selected_volumes(patient)
    mask = read_canonical(volumes[CanonicalVolume.Kind.MASK]).array if with_mask else None
    return nc.Case(
        case_id=f"case{patient.pk:06d}",
        ct=read_canonical(volumes[CanonicalVolume.Kind.CT]),
        mask=mask,
    )


def approved_training_patients(cohort: Cohort):
    """The cohort's patients whose selected CT has an approved mask."""
    approved = CanonicalVolume.objects.filter(
        patient=OuterRef("pk"), series__is_selected=True, kind=CanonicalVolume.Kind.MASK
    )
    return cohort.patients.filter(Exists(approved)).order_by("study_id")


# ------------------------------------------------------------------------------------------
# Training


def start_segmentation_training(
    cohort: Cohort,
    *,
    user: Any,
    name: str,
    budget: nc.TrainingBudget | None = None,
    patients: list[Patient] | None = None,
) -> SegmentationModelVersion:
    """A new model version in "training" with its queued job on the gpu queue; it trains on
    ``patients`` (who must have approved masks) or on every patient with an approved mask."""
    approved = approved_training_patients(cohort)
    if patients is not None:
        approved = approved.filter(pk__in=[p.pk for p in patients])
    study_ids = list(approved.values_list("study_id", flat=True))
    n_cases = len(study_ids)
    if n_cases < MIN_TRAINING_PATIENTS:
        raise UserFacingError(
            f"{cohort.name} has {n_cases} patients with an approved mask; nnU-Net's five-fold "
            f"split needs at least {MIN_TRAINING_PATIENTS}."
        )
    budget = budget or nc.default_budget(n_cases)
    if SegmentationModelVersion.objects.filter(cohort=cohort, name=name).exists():
        raise UserFacingError(f"A segmentation model named {name!r} exists in {cohort.name}.")
    with transaction.atomic():
        job = Job.objects.create(
            kind=Job.Kind.SEGMENTATION_TRAINING,
            cohort=cohort,
            created_by=acting_user(user),
            phrase="Waiting for a GPU worker",
            task=SEGMENTATION_TRAINING_TASK,
        )
        version = SegmentationModelVersion.objects.create(
            cohort=cohort,
            name=name,
            origin=SegmentationModelVersion.Origin.TRAINED,
            configuration=budget.configuration,
            folds=list(budget.folds),
            label_of_class={"pancreas": 1, "tumour": 2},
            card={"budget": budget.as_dict(), "training_patients": study_ids},
            job=job,
            created_by=acting_user(user),
        )
        Job.objects.filter(pk=job.pk).update(parameters={"segmentation_model": version.pk})
        audit(
            user,
            AuditAction.START_SEGMENTATION_TRAINING,
            cohort=cohort,
            label=str(version),
            segmentation_model=version.pk,
            patients=n_cases,
            budget=budget.as_dict(),
        )
        start_on_commit(job)
    return version


def train_segmentation_model(version_id: int, progress: Progress) -> dict[str, Any]:
    """The training job's body: raw dataset, planning, training, nnU-Net's validation."""
    version = SegmentationModelVersion.objects.select_related("cohort").get(pk=version_id)
    budget = nc.TrainingBudget(**{**version.card["budget"], "folds": tuple(version.folds)})
    patients = list(
        approved_training_patients(version.cohort).filter(
            study_id__in=version.card["training_patients"]
        )
    )
    progress(2, f"Writing the nnU-Net dataset of {len(patients)} patients")
    total_epochs = budget.epochs * len(budget.folds)

    def on_progress(message: dict) -> None:
        if message["kind"] == "epoch":
            done = budget.folds.index(message["fold"]) * budget.epochs + message["epoch"]
            dice = ", ".join(f"{d:.2f}" for d in message["pseudo_dice"])
            progress(
                20 + int(75 * done / total_epochs),
                f"Fold {message['fold']}, epoch {message['epoch']} of {message['epochs']}: "
                f"pseudo-Dice (pancreas, tumour) {dice}",
            )
        else:
            progress(10, message.get("phrase", "nnU-Net")[:200])

    try:
        with tempfile.TemporaryDirectory() as scratch:
            workdir = Path(scratch)
            nc.write_raw_dataset(
                [_case(p, with_mask=True) for p in patients],
                workdir / "raw",
                dataset_id=500 + version.pk % 400,
                name=f"PMPD_cohort{version.cohort_id}",
            )
            dataset_id = 500 + version.pk % 400
            nc.plan_and_preprocess(
                workdir, dataset_id=dataset_id, budget=budget, on_progress=on_progress
            )
            model = nc.train(workdir, dataset_id=dataset_id, budget=budget, on_progress=on_progress)
            progress(97, "Storing the results folder")
            archive = shutil.make_archive(str(workdir / "results"), "zip", model.folder)
            with open(archive, "rb") as handle:
                name = default_storage.save(
                    f"segmentation-models/{version.pk}/results.zip", File(handle)
                )
    except nc.NnUNetError as exc:
        SegmentationModelVersion.objects.filter(pk=version.pk).update(
            status=SegmentationModelVersion.Status.FAILED
        )
        raise UserFacingError(str(exc)) from None
    from inference.pmpd.train import code_version

    version.results_zip = name
    version.status = SegmentationModelVersion.Status.READY
    version.card = {
        **version.card,
        "labels": nc.LABELS,
        "configuration": budget.configuration,
        "folds": list(budget.folds),
        "dice_per_fold": model.dice_per_fold,
        "dice_source": "nnU-Net's own validation of each fold",
        "training_cohort": version.cohort.name,
        "training_patients": [p.study_id for p in patients],
        "trainer": model.trainer_name,
        "code_version": code_version(),
        "package_versions": _versions(),
    }
    version.is_synthetic = version.cohort.is_synthetic
    version.save()
    audit(
        None,
        AuditAction.SEGMENTATION_MODEL_READY,
        cohort=version.cohort,
        label=str(version),
        segmentation_model=version.pk,
        dice_per_fold=model.dice_per_fold,
    )
    return {"segmentation_model": version.pk, "dice_per_fold": model.dice_per_fold}


# ------------------------------------------------------------------------------------------
# Importing a model trained elsewhere


def import_segmentation_model(
    cohort: Cohort,
    *,
    user: Any,
    upload: File,
    name: str,
    pancreas_label: str,
    tumour_label: str | None,
) -> SegmentationModelVersion:
    """Check and store a ZIP of an nnU-Net v2 results folder; nothing stored when it is bad.
    No ``tumour_label``: a pancreas-only model (its masks are flagged; readers draw the
    tumour)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.zip"
        with path.open("wb") as sink:
            for chunk in upload.chunks():
                sink.write(chunk)
        try:
            imported = nc.inspect_results_zip(
                path, pancreas_label=pancreas_label, tumour_label=tumour_label
            )
        except nc.NnUNetError as exc:
            raise UserFacingError(str(exc).replace("model.zip", upload.name or "the ZIP")) from None
        if SegmentationModelVersion.objects.filter(cohort=cohort, name=name).exists():
            raise UserFacingError(f"A segmentation model named {name!r} exists in {cohort.name}.")
        with transaction.atomic():
            version = SegmentationModelVersion.objects.create(
                cohort=cohort,
                name=name,
                status=SegmentationModelVersion.Status.READY,
                origin=SegmentationModelVersion.Origin.IMPORTED,
                configuration=imported.configuration,
                folds=list(imported.folds),
                label_of_class=imported.label_of_class,
                card={
                    "labels": imported.labels,
                    "label_mapping": imported.label_of_class,
                    "segments_tumour": "tumour" in imported.label_of_class,
                    "configuration": imported.configuration,
                    "folds": list(imported.folds),
                    "trainer": imported.trainer_name,
                    "package_versions": _versions(),
                    "imported_from": upload.name,
                },
                created_by=acting_user(user),
            )
            with path.open("rb") as handle:
                version.results_zip = default_storage.save(
                    f"segmentation-models/{version.pk}/results.zip", File(handle)
                )
            version.save(update_fields=["results_zip"])
            audit(
                user,
                AuditAction.IMPORT_SEGMENTATION_MODEL,
                cohort=cohort,
                label=str(version),
                segmentation_model=version.pk,
                label_mapping=imported.label_of_class,
            )
    return version


def activate_segmentation_model(version: SegmentationModelVersion) -> SegmentationModelVersion:
    """Make ``version`` the model the cohort's segmentation jobs predict with."""
    if version.status != SegmentationModelVersion.Status.READY:
        raise UserFacingError(f"{version} is not ready.")
    with transaction.atomic():
        SegmentationModelVersion.objects.filter(cohort_id=version.cohort_id).update(is_active=False)
        SegmentationModelVersion.objects.filter(pk=version.pk).update(is_active=True)
    version.refresh_from_db()
    return version


# ------------------------------------------------------------------------------------------
# Predicting masks


def patients_to_segment(cohort: Cohort, study_ids: list[str] | None = None):
    """Patients with a selected CT and neither an approved mask nor one waiting for review,
    or those asked for by study ID (predicted again on request)."""
    with_ct = ImageSeries.objects.filter(
        study__patient=OuterRef("pk"), modality="CT", is_selected=True
    )
    patients = cohort.patients.filter(Exists(with_ct))
    if study_ids:
        return patients.filter(study_id__in=study_ids).order_by("study_id")
    approved = CanonicalVolume.objects.filter(
        patient=OuterRef("pk"), series__is_selected=True, kind=CanonicalVolume.Kind.MASK
    )
    waiting = MaskVersion.objects.filter(
        patient=OuterRef("pk"),
        ct_series__is_selected=True,
        status=MaskVersion.Status.NEEDS_REVIEW,
    )
    return patients.exclude(Exists(approved)).exclude(Exists(waiting)).order_by("study_id")


def start_segmentation(
    cohort: Cohort,
    model: SegmentationModelVersion,
    *,
    user: Any,
    study_ids: list[str] | None = None,
) -> Job:
    _ensure_ready(model)
    if not patients_to_segment(cohort, study_ids).exists():
        raise UserFacingError(
            "No patient to segment: each patient with a CT has an approved mask or one "
            "waiting for review (name patients to predict theirs again)."
        )
    with transaction.atomic():
        job = Job.objects.create(
            kind=Job.Kind.SEGMENTATION,
            cohort=cohort,
            created_by=acting_user(user),
            phrase=f"Waiting for a GPU worker to segment with {model.name}"[:200],
            task=SEGMENTATION_TASK,
            parameters={"segmentation_model": model.pk, "study_ids": study_ids or []},
        )
        audit(
            user,
            AuditAction.START_SEGMENTATION,
            cohort=cohort,
            label=str(model),
            segmentation_model=model.pk,
            study_ids=study_ids or [],
        )
        start_on_commit(job)
    return job


def patients_per_segmentation_part() -> int:
    """Patients in a part of a segmentation job (``PMPD_SEGMENTATION_PATIENTS_PER_PART``, 1 by
    default: nnU-Net predicts one case at a time, so a part of one patient shares the work
    most evenly between the workers and loses least when a worker dies)."""
    return max(1, int(getattr(settings, "PMPD_SEGMENTATION_PATIENTS_PER_PART", 1)))


# The model a worker predicts with stays loaded between the parts of the same model (nnU-Net
# keeps every fold's weights in memory): only the last one used is kept.
_segmenters: dict[tuple[Any, ...], nc.Segmenter] = {}


def segmenter_of(model: SegmentationModelVersion, scratch: Path) -> nc.Segmenter:
    """The model loaded for prediction on this worker's device, once per worker process (its
    results ZIP is extracted into ``scratch``, which may go once it is loaded)."""
    key = (model.pk, model.results_zip.name, tuple(model.folds), _device())
    if key not in _segmenters:
        _segmenters.clear()
        archive = scratch / "results.zip"
        try:
            with default_storage.open(model.results_zip.name, "rb") as handle:
                archive.write_bytes(handle.read())
        except FileNotFoundError:
            raise UserFacingError(
                f"The results ZIP of {model} is missing from storage; import or train it again."
            ) from None
        folder = nc.extract_results_zip(archive, scratch / "model")
        _segmenters[key] = nc.Segmenter(
            folder, folds=model.folds, label_of_class=model.label_of_class, device=key[-1]
        )
        archive.unlink()
    return _segmenters[key]


def _ensure_ready(model: SegmentationModelVersion) -> None:
    if model.status != SegmentationModelVersion.Status.READY:
        raise UserFacingError(f"{model} is {model.get_status_display().lower()}, not ready.")


def _ready_segmentation_model(model_id: int) -> SegmentationModelVersion:
    model = SegmentationModelVersion.objects.get(pk=model_id)
    _ensure_ready(model)
    return model


def predict_part(job: Job, payload: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """Predict the masks of a part's patients (the gpu step); the part's result. Each mask is
    stored with the job in one transaction, so a part run again after its worker died skips
    the patients whose mask this job already stored: every patient once."""
    model = _ready_segmentation_model(payload["segmentation_model"])
    patients = list(Patient.objects.filter(pk__in=payload["patients"]).order_by("study_id"))
    stored_before = {
        version.patient_id: version
        for version in MaskVersion.objects.filter(produced_by_job=job, patient__in=patients)
    }
    no_tumour_reason = NO_TUMOUR_FLAG if model.segments_tumour else PANCREAS_ONLY_FLAG
    stored, without_tumour, skipped = [], [], []
    for patient in patients:
        version = stored_before.get(patient.pk)
        if version is None:
            ct = ImageSeries.objects.filter(
                study__patient=patient, modality="CT", is_selected=True
            ).first()
            if ct is None:
                reason = "no CT selected for PMPD any more (deselected after the job started)"
                skipped.append({"study_id": patient.study_id, "reason": reason})
                continue
            prediction = segmenter_of(model, scratch).predict(_case(patient, with_mask=False))
            version = store_mask_version(
                ct_series=ct,
                mask=prediction.mask,
                source=MaskVersion.Source.AUTOMATIC,
                source_label=model.provenance_label,
                uncertainty=prediction.tumour_uncertainty,
                no_tumour_reason=no_tumour_reason,
                job=job,
            )
            log.info("Segmented %s with %s: mask version %s", patient.study_id, model, version)
        stored.append({"study_id": patient.study_id, "mask_version": version.number})
        if version.tumour_voxels == 0:
            without_tumour.append(patient.study_id)
    return {
        "stored": stored,
        "already_stored": sorted(p.study_id for p in patients if p.pk in stored_before),
        "without_tumour": without_tumour,
        "skipped": skipped,
    }


def merge_segmentation(job: Job, part_results: list[dict[str, Any]]) -> dict[str, Any]:
    """The segmentation job's result: what its parts stored, in study ID order."""
    model = SegmentationModelVersion.objects.get(pk=job.parameters["segmentation_model"])
    note = "Automatic masks need a reader's review; PMPD reads approved masks only."
    if not model.segments_tumour:
        note += f" {model.name} segments the pancreas only: readers draw the tumour."
    return {
        "segmentation_model": model.pk,
        "stored": sorted(
            (entry for part in part_results for entry in part["stored"]),
            key=lambda entry: entry["study_id"],
        ),
        "without_tumour": sorted(name for part in part_results for name in part["without_tumour"]),
        "skipped": [entry for part in part_results for entry in part["skipped"]],
        "parts": len(part_results),
        "note": note,
    }


def segmentation_training_work(job: Job, progress: Progress) -> dict[str, Any]:
    """The body of a segmentation training job: train ``parameters["segmentation_model"]``."""
    return train_segmentation_model(job.parameters["segmentation_model"], progress)


def segmentation_work(job: Job, progress: Progress, *, here: bool = False) -> Any:
    """The body of a segmentation job: predict the masks of the job's cohort.

    The patients are split into parts (once: a resumed job keeps its parts and what they did)
    handed to the gpu queue as a group, so N GPU workers share one cohort; the last part to
    finish settles the job. ``here``: run the parts in this process instead (the demo)."""
    parts = list(job.parts.all())
    if not parts:
        model = _ready_segmentation_model(job.parameters["segmentation_model"])
        study_ids = job.parameters.get("study_ids") or []
        patients = list(
            patients_to_segment(Cohort.objects.get(pk=job.cohort_id), study_ids).values_list(
                "pk", flat=True
            )
        )
        if not patients:
            return merge_segmentation(job, [])
        progress(5, f"Segmenting {len(patients)} patients with {model}")
        size = patients_per_segmentation_part()
        planned = [
            PlannedPart({"segmentation_model": model.pk, "patients": chunk}, len(chunk))
            for chunk in (patients[start : start + size] for start in range(0, len(patients), size))
        ]
        parts = split(job, planned, tasks=SEGMENTATION_PART_TASKS)
    if here:
        return run_parts_here(job, parts, predict_part, merge_segmentation, progress)
    # Said before publishing: the parts may finish (and settle the job) at once.
    progress(job.progress, f"{len(parts)} part(s) of the cohort handed to the GPU workers")
    return hand_over(job, parts, merge_segmentation)


def execute_segmentation_training(job_id: int, *, on_progress: Progress | None = None) -> None:
    """Run a training job here and now (the demo; the task runs the same work)."""
    run_job(job_id, _reporting(segmentation_training_work, on_progress))


def execute_segmentation(job_id: int, *, on_progress: Progress | None = None) -> None:
    """Run a segmentation job here and now (the demo and the benchmark)."""
    run_job(job_id, _reporting(functools.partial(segmentation_work, here=True), on_progress))


def review_queue(cohort: Cohort):
    """Mask versions needing review, with who is reviewing what: first the masks a model meant
    to have a tumour in and found none, then the most uncertain (softmax entropy inside the
    predicted tumour), then the masks of pancreas-only models (no tumour to measure an entropy
    in; a reader draws each one), oldest first."""
    from django.db.models import Case, F, TextField, Value, When
    from django.db.models.functions import Cast

    return (
        MaskVersion.objects.filter(patient__cohort=cohort, status=MaskVersion.Status.NEEDS_REVIEW)
        .select_related("patient", "reviewing_by", "produced_by")
        # The flags as text: a JSON "contains" lookup is PostgreSQL's, the demo runs SQLite.
        .annotate(flags_text=Cast("flags", TextField()))
        .annotate(
            pancreas_only=Case(
                When(flags_text__contains=PANCREAS_ONLY_FLAG, then=Value(True)),
                default=Value(False),
            )
        )
        .order_by(
            "pancreas_only",
            F("uncertainty").desc(nulls_first=True),
            "produced_at",
            "patient__study_id",
        )
    )
