"""What the ingest plans for one patient: the CT series and masks of the upload, each either
unchanged or to be stored, and where a patient's files lie in storage."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pmpd_web.cohorts.models import Patient

from ..intake import Item
from ..models import ImageSeries
from ..volumes import Grid


@dataclass(eq=False)
class CtOutput:
    """A CT series of the upload: what is stored for it, or that it is unchanged."""

    series_uid: str
    study_uid: str
    study_date: str
    frame_of_reference_uid: str
    grid: Grid
    hu: np.ndarray | None
    description: str
    phase: str
    manufacturer: str
    slice_thickness_mm: float | None
    pixel_spacing_mm: list[float]
    series_number: int | None
    content_hash: str
    items: list[Item]
    source_patient_key: str = ""
    source_study_key: str = ""
    datasets: list[Dataset] = field(default_factory=list)
    existing: ImageSeries | None = None
    instances: list[dict[str, Any]] = field(default_factory=list)
    volume_name: str = ""
    row: ImageSeries | None = None

    @property
    def unchanged(self) -> bool:
        return self.existing is not None and self.existing.content_hash == self.content_hash

    def sources(self) -> list[Dataset]:
        """The series' slices in slice order: in memory, or the stored ones when an unchanged
        series was not rebuilt (a CT that came as a volume)."""
        if self.datasets:
            return self.datasets
        if self.existing is not None:
            return stored_sources(self.existing)
        return []


@dataclass(eq=False)
class MaskOutput:
    """A mask of the upload, on the grid of a CT of the upload or of one already stored."""

    target: CtOutput | ImageSeries
    mask: np.ndarray | None
    content_hash: str
    items: list[Item]
    unchanged: bool = False
    seg_series_uid: str = ""
    seg_sop_uid: str = ""
    seg_name: str = ""
    seg_metadata: dict[str, Any] = field(default_factory=dict)
    seg_frames: int = 0
    pancreas_voxels: int = 0
    tumour_voxels: int = 0
    volume_name: str = ""
    hashing: Future[str] | None = None  # the content hash, while the pool computes it

    def resolve_hash(self) -> str:
        """The content hash, waiting for the pool when it is computing it."""
        if self.hashing is not None:
            self.content_hash = self.hashing.result()
            self.hashing = None
        return self.content_hash

    @property
    def grid(self) -> Grid:
        if isinstance(self.target, CtOutput):
            return self.target.grid
        return Grid.from_dict(self.target.geometry)


@dataclass(eq=False)
class PatientPlan:
    patient: Patient
    cts: list[CtOutput]
    masks: list[MaskOutput]
    items: list[Item]


class PatientFailed(Exception):
    def __init__(self, problems: list[tuple[Item, str]]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


def storage_folder(patient: Patient) -> str:
    return f"imaging/cohort-{patient.cohort_id}/patient-{patient.pk}"


def stored_sources(series: ImageSeries) -> list[Dataset]:
    """The stored slices of a CT series (headers only), in slice order."""
    datasets = []
    for instance in series.instances.all():
        with instance.file.open("rb") as handle:
            datasets.append(pydicom.dcmread(handle, stop_before_pixels=True))
    grid = Grid.from_dict(series.geometry)
    normal = grid.matrix[:, 2]
    datasets.sort(key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    return datasets


def uid_scope(patient: Patient) -> str:
    """What de-identified UIDs are keyed by: the cohort and the study ID, so that the same scan
    under the same study ID in two cohorts is two studies, told apart."""
    return f"cohort-{patient.cohort_id}/{patient.study_id}"
