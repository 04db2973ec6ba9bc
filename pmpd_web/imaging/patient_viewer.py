"""Where the patient page's viewer opens: the patient's CT study with its segmentation, on the
CT image with the largest tumour area; and which CT image a slice of the engine's 2 mm grid is,
so the page names a Grad-CAM slice as the viewer does (its instance number) and can move the
viewer there.

The tumour area per slice is read from the patient's canonical mask (label 2 = tumour) once per
mask content and kept in Django's cache.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils.http import urlencode

from pmpd_web.jobs.files import current_scratch

from .errors import IngestError
from .models import CanonicalVolume, DicomInstance, ImageSeries, ImagingStudy, MaskVersion
from .volumes import Grid, read_volume

logger = logging.getLogger(__name__)

TUMOUR_LABEL = 2
POSITION_TAG = "00200032"  # ImagePositionPatient
ORIENTATION_TAG = "00200037"  # ImageOrientationPatient


@dataclass(frozen=True)
class ViewerImage:
    """One CT image as the viewer names it, and the viewer's address opened on it."""

    sop_instance_uid: str
    instance_number: int | None
    image_index: int  # 0-based position in the series ordered along the slice normal
    viewer_url: str


@dataclass(frozen=True)
class PatientViewer:
    url: str
    study_instance_uid: str
    series_instance_uid: str | None
    has_segmentation: bool
    tumour_image: ViewerImage | None
    tumour_area_mm2: float | None


@contextlib.contextmanager
def stored_file_path(name: str) -> Iterator[Path]:
    """A local path holding the stored file ``name``: the file itself on file-system storage,
    else (an S3 bucket) a temporary copy keeping the name's suffixes (``.nii.gz`` stays
    readable), in the running job's scratch folder when there is one, deleted on exit."""
    try:
        yield Path(default_storage.path(name))
        return
    except NotImplementedError:
        pass
    suffix = "".join(PurePosixPath(name).suffixes)
    with tempfile.TemporaryDirectory(prefix="pmpd-", dir=current_scratch()) as folder:
        target = Path(folder) / f"copy{suffix}"
        with default_storage.open(name, "rb") as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, length=4 * 1024 * 1024)
        yield target


def _viewer_url(query: dict[str, str], *, mode: str = "viewer") -> str:
    return f"{reverse('ohif', kwargs={'path': mode})}?{urlencode(query)}"


def correction_url(version: MaskVersion) -> str | None:
    """OHIF's segmentation mode on the version's CT with that version's SEG alone (the study's
    other SEG series left out, so the one opened for editing is this one), or None for a
    version without a SEG. Saving there stores the edit as a new version (STOW-RS)."""
    if version.seg_series is None:
        return None
    uids = (version.ct_series.series_instance_uid, version.seg_series.series_instance_uid)
    return _viewer_url(
        {
            "StudyInstanceUIDs": version.ct_series.study.study_instance_uid,
            "SeriesInstanceUIDs": ",".join(uids),
            "hangingProtocolId": "@ohif/seg",
        },
        mode="segmentation",
    )


def _normal(metadata: dict) -> np.ndarray:
    orientation = metadata.get(ORIENTATION_TAG, {}).get("Value") or [1, 0, 0, 0, 1, 0]
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    return np.cross(row, column)


def _ordered_images(series: ImageSeries) -> list[tuple[float, DicomInstance]]:
    """The series' CT images with their position along the slice normal, in that order."""
    instances = list(series.instances.all())
    if not instances:
        return []
    normal = _normal(instances[0].metadata)
    placed = []
    for instance in instances:
        position = instance.metadata.get(POSITION_TAG, {}).get("Value")
        if position:
            placed.append((float(np.dot(np.asarray(position, float), normal)), instance))
    return sorted(placed, key=lambda pair: pair[0])


def _image_at(
    ordered: list[tuple[float, DicomInstance]], position_mm: float, query: dict[str, str]
) -> ViewerImage | None:
    if not ordered:
        return None
    positions = np.asarray([p for p, _ in ordered])
    index = int(np.argmin(np.abs(positions - position_mm)))
    instance = ordered[index][1]
    return ViewerImage(
        sop_instance_uid=instance.sop_instance_uid,
        instance_number=instance.instance_number,
        image_index=index,
        viewer_url=_viewer_url(
            {
                **query,
                "initialSeriesInstanceUID": instance.series.series_instance_uid,
                "initialSOPInstanceUID": instance.sop_instance_uid,
            }
        ),
    )


def tumour_area_by_slice(mask: CanonicalVolume) -> list[float]:
    """Tumour area (mm²) of each slice of the canonical mask, in index order (cached)."""
    key = f"pmpd:tumour-area:{mask.content_hash}"
    areas = cache.get(key)
    if areas is None:
        try:
            with stored_file_path(mask.file.name) as path:
                volume = read_volume(path, label=f"mask of {mask.patient}")
        except (IngestError, OSError) as exc:
            # The page still shows the viewer, on its default slice.
            logger.warning("tumour area of %s not read: %s", mask.file.name, exc)
            return []
        spacing = volume.grid.spacing
        counts = (volume.array == TUMOUR_LABEL).sum(axis=(1, 2))
        areas = [float(c) * spacing[0] * spacing[1] for c in counts]
        cache.set(key, areas, timeout=None)
    return areas


def _slice_position(grid: Grid, index: float, normal: np.ndarray) -> float:
    world = np.asarray(grid.origin) + grid.matrix @ np.asarray([0.0, 0.0, index * grid.spacing[2]])
    return float(np.dot(world, normal))


def _selected_ct(patient) -> ImageSeries | None:
    return (
        ImageSeries.objects.filter(study__patient=patient, modality="CT")
        .order_by("-is_selected", "study__study_date", "pk")
        .select_related("study")
        .first()
    )


def patient_viewer(patient) -> PatientViewer | None:
    """The viewer on the patient's CT study (the selected series' study), with its
    segmentation, opened on the CT image with the largest tumour area when a mask has one."""
    series = _selected_ct(patient)
    if series is None:
        return None
    study: ImagingStudy = series.study
    has_segmentation = study.series.filter(modality="SEG").exists()
    query = {"StudyInstanceUIDs": study.study_instance_uid}
    if has_segmentation:
        query["hangingProtocolId"] = "@ohif/seg"
    tumour_image, area = None, None
    mask = CanonicalVolume.objects.filter(series=series, kind=CanonicalVolume.Kind.MASK).first()
    if mask is not None and mask.geometry:
        areas = tumour_area_by_slice(mask)
        if areas and max(areas) > 0:
            index = int(np.argmax(areas))
            ordered = _ordered_images(series)
            if ordered:
                normal = _normal(ordered[0][1].metadata)
                position = _slice_position(Grid.from_dict(mask.geometry), index, normal)
                tumour_image, area = _image_at(ordered, position, query), areas[index]
    return PatientViewer(
        url=tumour_image.viewer_url if tumour_image else _viewer_url(query),
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        has_segmentation=has_segmentation,
        tumour_image=tumour_image,
        tumour_area_mm2=area,
    )


def images_on_grid(
    patient, grid_indices: Iterable[int], *, slice_thickness_mm: float
) -> dict[int, ViewerImage]:
    """The CT image nearest each slice of the engine's resampled grid (``slice_thickness_mm``
    apart, starting at the lowest CT image along the slice normal, as pre-processing builds it)."""
    series = _selected_ct(patient)
    if series is None:
        return {}
    ordered = _ordered_images(series)
    if not ordered:
        return {}
    query = {"StudyInstanceUIDs": series.study.study_instance_uid}
    if series.study.series.filter(modality="SEG").exists():
        query["hangingProtocolId"] = "@ohif/seg"
    start = ordered[0][0]
    found = {}
    for index in grid_indices:
        image = _image_at(ordered, start + int(index) * slice_thickness_mm, query)
        if image is not None:
            found[int(index)] = image
    return found
