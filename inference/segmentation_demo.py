"""The annotation part of the local demo: a few demo patients come without masks; a small
nnU-Net v2 is trained on some of the others' approved masks and predicts theirs, which then
wait "needs review" beside the approved ones (the review queue, each patient's Mask versions).

CPU settings (a few minutes on two cores): 2d, one fold, eight patients, nnU-Net planned at
3 mm across the slice, a 16-feature U-Net on 64-pixel patches (192 mm, most of an abdomen),
patches centred on pancreas or tumour two times in three, nnU-Net's AdamW trainer variant and no
mirroring. A second run reuses the model and predicts only what is still missing.
"""

from __future__ import annotations

from typing import Any

from pmpd_web.cohorts.models import Cohort
from pmpd_web.jobs.models import Job, JobStatus

from .console import progress_bar
from .segmentation import nnunet_core as nc
from .segmentation_jobs import (
    approved_training_patients,
    execute_segmentation,
    execute_segmentation_training,
    patients_to_segment,
    start_segmentation,
    start_segmentation_training,
)
from .segmentation_models import SegmentationModelVersion

DEMO_MODEL = "Demo nnU-Net (phantoms)"
DEMO_BUDGET = nc.TrainingBudget(
    epochs=10,
    iterations_per_epoch=30,
    validation_iterations=2,
    batch_size=16,
    max_features=16,
    max_patch=64,
    in_plane_mm=3.0,
    foreground_oversampling=0.66,
    optimizer="adamw",
    mirroring=False,
)


def run_demo_segmentation(
    cohort: Cohort, *, stdout: Any, training_patients: int = 8
) -> SegmentationModelVersion | None:
    """Train the demo's nnU-Net (once) and predict the masks the demo withheld."""
    if not patients_to_segment(cohort).exists():
        stdout.write(
            f"{cohort.name}: no mask to predict (each CT has an approved mask or one to review)."
        )
        return None
    model = SegmentationModelVersion.objects.filter(cohort=cohort, name=DEMO_MODEL).first()
    if model is None or model.status != SegmentationModelVersion.Status.READY:
        if model is not None:
            model.delete()
        budget = DEMO_BUDGET
        # The first patients with approved masks: a small training set keeps the demo short.
        chosen = list(approved_training_patients(cohort)[:training_patients])
        model = start_segmentation_training(
            cohort, user=None, name=DEMO_MODEL, budget=budget, patients=chosen
        )
        with progress_bar("Training the demo nnU-Net") as progress:
            execute_segmentation_training(model.job_id, on_progress=progress)
        model.refresh_from_db()
        job = Job.objects.get(pk=model.job_id)
        if job.status != JobStatus.SUCCEEDED:
            stdout.write(f"The demo nnU-Net did not train: {job.error}")
            return None
        SegmentationModelVersion.objects.filter(cohort=cohort).update(is_active=False)
        SegmentationModelVersion.objects.filter(pk=model.pk).update(is_active=True)
        model.refresh_from_db()
        dice = model.card.get("dice_per_fold", {})
        stdout.write(f"{model}: trained on {len(chosen)} patients; validation Dice {dice}.")
    job = start_segmentation(cohort, model, user=None)
    with progress_bar("Predicting the withheld masks") as progress:
        execute_segmentation(job.pk, on_progress=progress)
    job.refresh_from_db()
    if job.status != JobStatus.SUCCEEDED:
        stdout.write(f"The demo segmentation failed: {job.error}")
        return model
    stored = job.result["stored"]
    stdout.write(
        f"{cohort.name}: {len(stored)} automatic masks need review "
        f"({', '.join(s['study_id'] for s in stored)}); see the cohort's review queue."
    )
    return model
