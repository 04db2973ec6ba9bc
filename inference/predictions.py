"""Storing a patient's result: the prediction row (an upsert: unique per patient and model
version) and its Grad-CAM overlays, one PNG per scored slice."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pmpd_web.cohorts.models import Patient

from .models import ModelVersion, PatientPrediction
from .storage import json_safe, replace_file


def overlay_folder(version: ModelVersion, patient: Patient) -> str:
    return f"predictions/{version.pk}/{patient.pk}"


def draw_overlays(slices: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[bytes]:
    """The PNG of each (CT slice, heatmap) pair, in order, encoded by a pool of threads (a
    scoring step draws all its patients' overlays at once)."""
    from inference.pmpd.gradcam import overlay_png  # torch: only workers load it

    if len(slices) <= 1:
        return [overlay_png(ct, heatmap) for ct, heatmap in slices]
    return list(_drawing_pool().map(lambda pair: overlay_png(*pair), slices))


def draw_patient_overlays(patients: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[list[bytes]]:
    """Each patient's overlay PNGs from its (patches, heatmaps): the windowed CT of each patch
    (channel 0) under its heatmap, every patient's drawn at once (``draw_overlays``)."""
    slices = [
        (patch[0], heatmap)
        for patches, heatmaps in patients
        for patch, heatmap in zip(patches, heatmaps, strict=True)
    ]
    pngs = iter(draw_overlays(slices))
    return [[next(pngs) for _ in patches] for patches, _ in patients]


def _drawing_pool() -> ThreadPoolExecutor:
    """This process's pool of drawing threads (one per core, at most 8), made anew in a forked
    child (a pool's threads do not survive a fork)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        threads = max(1, min(8, os.cpu_count() or 1))
        _POOL = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="pmpd-overlay"))
    return _POOL[1]


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def store_overlays(
    version: ModelVersion, patient: Patient, pngs: Sequence[bytes], slice_indices: Sequence[int]
) -> list[str]:
    """Store a patient's overlay PNGs, one per scored slice, named after the slice (its index
    in the 2 mm volume) so that a re-run replaces them; returns the stored names."""
    return [
        replace_file(f"{overlay_folder(version, patient)}/slice_{int(slice_index)}.png", png)
        for png, slice_index in zip(pngs, slice_indices, strict=True)
    ]


def save_overlays(
    version: ModelVersion,
    patient: Patient,
    patches: np.ndarray,
    heatmaps: np.ndarray,
    slice_indices: Sequence[int],
) -> list[str]:
    """One PNG per scored slice: the windowed CT of its patch (channel 0) under the heatmap,
    drawn in memory and stored (``store_overlays``)."""
    (pngs,) = draw_patient_overlays([(patches, heatmaps)])
    return store_overlays(version, patient, pngs, slice_indices)


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
