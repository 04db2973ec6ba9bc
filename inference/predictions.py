"""Storing a patient's result: the prediction row (an upsert: unique per patient and model
version) and its Grad-CAM overlays, one PNG per scored slice."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pmpd_web.cohorts.models import Patient
from pmpd_web.jobs.files import current_scratch

from .models import ModelVersion, PatientPrediction
from .storage import json_safe, store_local_file


def overlay_folder(version: ModelVersion, patient: Patient) -> str:
    return f"predictions/{version.pk}/{patient.pk}"


def save_overlays(
    version: ModelVersion,
    patient: Patient,
    patches: np.ndarray,
    heatmaps: np.ndarray,
    slice_indices: Sequence[int],
) -> list[str]:
    """One PNG per scored slice: the windowed CT of its patch (channel 0) under the heatmap.
    Named after the slice (its index in the 2 mm volume), so a re-run replaces them. Drawn in
    the running job's scratch folder (the only local files a worker writes)."""
    from inference.pmpd.gradcam import save_overlay_png  # torch: only workers load it

    names = []
    with tempfile.TemporaryDirectory(prefix="pmpd-gradcam-", dir=current_scratch()) as folder:
        for patch, heatmap, slice_index in zip(patches, heatmaps, slice_indices, strict=True):
            local = save_overlay_png(patch[0], heatmap, Path(folder) / f"{slice_index}.png")
            names.append(
                store_local_file(
                    f"{overlay_folder(version, patient)}/slice_{int(slice_index)}.png", local
                )
            )
    return names


def upsert_prediction(
    patient: Patient, version: ModelVersion, *, source: str, values: dict[str, Any]
) -> PatientPrediction:
    """Create or update the patient's prediction under ``version`` (the row is locked while it
    changes: ``update_or_create`` selects it for update)."""
    prediction, _ = PatientPrediction.objects.update_or_create(
        patient=patient,
        model_version=version,
        defaults={"source": source, **json_safe(values)},
    )
    return prediction
