"""The ingest job: from an upload's received files to de-identified DICOM studies, series and
instances, a DICOM SEG per mask and the canonical volumes the engine reads (the contract is in
``models``). All or nothing: every patient of the upload is read, checked, de-identified and
written to storage first; the database rows change in one transaction at the end, and any
problem leaves every patient's images as they were (what was written is deleted again).
Idempotent: unchanged series and masks (same de-identified UID, same content hash) are left
alone, so a repeated upload of the same files changes nothing.

Steps: ``intake`` puts each received file on local disk, sniffs it and gives it a study ID;
then per patient: read, de-identify, check, convert and store (``prepare_patient``); finally
one transaction commits every patient (``_commit``).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Exists, OuterRef
from pydicom.dataset import Dataset

from pmpd_web.accounts.audit import record as audit
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.jobs.files import forget_written, save_recorded, scratch_folder
from pmpd_web.jobs.runner import TRANSIENT_ERRORS, ProgressCallback, UserFacingError

from . import deid
from .dicom_series import (
    PHASE_LABELS,
    Candidate,
    CtSeries,
    DicomFile,
    GeneratedUids,
    assemble_ct,
    build_segmentation,
    contrast_phase,
    ct_series_from_volume,
    encode,
    encode_series,
    instance_metadata,
    pick_series,
    read_dicom,
    referenced_series,
    role_of,
    seg_to_canonical,
)
from .errors import IngestError
from .intake import (
    Failures,
    IngestOptions,
    Item,
    assign_study_ids,
    link_metaimage_data,
    materialise,
)
from .models import CanonicalVolume, DicomInstance, ImageSeries, ImageUpload, ImagingStudy
from .models import UploadFile as UploadFileModel
from .sniff import Kind, describe_unknown
from .volumes import (
    Grid,
    Volume,
    align_to_grid,
    canonical_mask,
    check_ct_values,
    check_grid,
    content_hash,
    label_values,
    read_volume,
    to_hounsfield,
    write_nifti,
)

AUDIT_ACTION = "ingest_images"
VOLUME_KINDS = {Kind.NIFTI, Kind.NIFTI_GZ, Kind.NRRD, Kind.METAIMAGE}


class Staging:
    """Storage names written by this ingest: deleted again when it fails, and recorded on its
    job until the commit references them, so that the next attempt or the sweeper deletes
    them when the worker is killed (``pmpd_web.jobs.files``)."""

    def __init__(self, job_id: int | None) -> None:
        self.job_id = job_id
        self.names: list[str] = []

    def save(self, name: str, content: File) -> str:
        saved = save_recorded(self.job_id, name, content)
        self.names.append(saved)
        return saved

    def discard(self) -> None:
        for name in self.names:
            default_storage.delete(name)
        self.names.clear()


class _ScratchFile(File):
    """A finished file in the scratch folder: the file-system storage moves it into place
    instead of copying it."""

    def temporary_file_path(self) -> str:
        return self.name


class VolumeWriter:
    """Writes canonical NIfTI volumes in worker threads (zlib releases the GIL) while the main
    thread goes on with the DICOM work; ``store`` saves the finished files to storage."""

    def __init__(self, pool: ThreadPoolExecutor, scratch: Path, *, level: int) -> None:
        self.pool = pool
        self.scratch = scratch
        self.level = level
        self.pending: list[tuple[Future, str, Any, Path]] = []
        self.count = 0

    def submit(self, array: np.ndarray, grid: Grid, name: str, owner: Any) -> None:
        """Start writing ``array`` for ``owner`` (its ``volume_name`` is set by ``store``)."""
        self.count += 1
        target = self.scratch / f"volume-{self.count}.nii.gz"
        future = self.pool.submit(write_nifti, array, grid, target, compression_level=self.level)
        self.pending.append((future, name, owner, target))

    def store(self, staging: Staging) -> None:
        for future, name, owner, target in self.pending:
            future.result()
            with _ScratchFile(open(target, "rb"), name=str(target)) as content:
                owner.volume_name = staging.save(name, content)
        self.pending.clear()


# ----------------------------------------------------------------------------------------------
# One patient


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
            return _stored_sources(self.existing)
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
    volume_name: str = ""

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


def _storage_folder(patient: Patient) -> str:
    return f"imaging/cohort-{patient.cohort_id}/patient-{patient.pk}"


def _dicom_cts(
    patient: Patient,
    items: list[Item],
    options: IngestOptions,
    problems: list[tuple[Item, str]],
) -> tuple[list[CtSeries], list[tuple[Item, DicomFile]]]:
    """Read, de-identify and assemble the patient's DICOM files; returns the CT series and the
    SEG files."""
    groups: dict[str, list[tuple[Item, DicomFile]]] = defaultdict(list)
    segs: list[tuple[Item, DicomFile]] = []
    patient_ids: set[str] = set()
    for item in items:
        try:
            dicom = read_dicom(item.path, label=item.label)
            role, reason = role_of(dicom)
        except IngestError as exc:
            problems.append((item, str(exc)))
            continue
        item.role = f"DICOM {reason}"
        if role == "skip":
            item.skipped = reason
            continue
        original_patient = str(dicom.dataset.get("PatientID", "") or "")
        if original_patient:
            patient_ids.add(original_patient)
        original_series = str(dicom.dataset.get("SeriesInstanceUID", ""))
        deid.deidentify(
            dicom.dataset,
            study_id=patient.study_id,
            secret=options.secret,
            date_mode=options.date_mode,
            date_shift_max_days=options.date_shift_max_days,
        )
        if role == "seg":
            segs.append((item, dicom))
        else:
            groups[original_series].append((item, dicom))
    if len(patient_ids) > 1:
        problems.append(
            (
                items[0],
                f"the DICOM files given study ID {patient.study_id} carry {len(patient_ids)} "
                "different patient IDs: files of several patients are mixed",
            )
        )
        return [], []
    series = []
    for members in groups.values():
        try:
            series.append(
                assemble_ct(
                    [dicom for _, dicom in members],
                    min_slices=options.min_slices,
                    tolerance_mm=options.tolerance_mm,
                )
            )
        except IngestError as exc:
            named = next((item for item, _ in members if item.label == exc.label), members[0][0])
            problems.append((named, str(exc)))
    return series, segs


def _volume_items(
    items: list[Item], upload: ImageUpload, options: IngestOptions, problems: list
) -> tuple[list[tuple[Item, np.ndarray, Grid]], list[tuple[Item, Volume, np.ndarray]]]:
    """CT volumes (int16 HU) and mask volumes among the patient's NIfTI/NRRD/MetaImage files."""
    cts, masks = [], []
    labels = {upload.label_pancreas, upload.label_tumour}
    for item in items:
        try:
            volume = read_volume(item.path, label=item.label)
            values = label_values(volume, name=item.parts[-1] if item.parts else "", labels=labels)
            if values is not None:
                item.role = f"{item.kind.value} mask"
                masks.append((item, volume, values))
                continue
            item.role = f"{item.kind.value} CT"
            check_grid(volume.grid, label=item.label, min_slices=options.min_slices)
            hu = to_hounsfield(volume, label=item.label)
            check_ct_values(hu, label=item.label)
            cts.append((item, hu, volume.grid))
        except IngestError as exc:
            problems.append((item, str(exc)))
    return cts, masks


def _stored_sources(series: ImageSeries) -> list[Dataset]:
    """The stored slices of a CT series (headers only), in slice order."""
    datasets = []
    for instance in series.instances.all():
        with instance.file.open("rb") as handle:
            datasets.append(pydicom.dcmread(handle, stop_before_pixels=True))
    grid = Grid.from_dict(series.geometry)
    normal = grid.matrix[:, 2]
    datasets.sort(key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    return datasets


def prepare_patient(
    patient: Patient,
    items: list[Item],
    *,
    upload: ImageUpload,
    options: IngestOptions,
    staging: Staging,
    pool: ThreadPoolExecutor,
    scratch: Path,
) -> PatientPlan:
    """Read and check everything of one patient, then write what changed to storage (not to
    the database). PatientFailed lists every problem found."""
    problems: list[tuple[Item, str]] = []
    dicom_items = [i for i in items if i.kind == Kind.DICOM]
    volume_items = [i for i in items if i.kind in VOLUME_KINDS]
    for item in items:
        if item.kind not in VOLUME_KINDS and item.kind != Kind.DICOM:
            problems.append((item, f"{item.label}: {describe_unknown(item.path)}"))
    dicom_series, seg_files = _dicom_cts(patient, dicom_items, options, problems)
    ct_volumes, mask_volumes = _volume_items(volume_items, upload, options, problems)
    if problems:
        raise PatientFailed(problems)

    existing = {
        s.series_instance_uid: s
        for s in ImageSeries.objects.filter(study__patient=patient, modality="CT").prefetch_related(
            "volumes"
        )
    }
    outputs: list[CtOutput] = []
    for ct in dicom_series:
        labels = set(ct.labels)
        outputs.append(
            CtOutput(
                series_uid=ct.series_uid,
                study_uid=ct.study_uid,
                study_date=ct.study_date,
                frame_of_reference_uid=ct.frame_of_reference_uid,
                grid=ct.grid,
                hu=ct.hu,
                description=ct.description,
                phase=ct.phase,
                manufacturer=ct.manufacturer,
                slice_thickness_mm=ct.slice_thickness_mm,
                pixel_spacing_mm=ct.pixel_spacing_mm,
                series_number=ct.series_number,
                content_hash=content_hash(ct.hu, ct.grid),
                items=[i for i in dicom_items if i.label in labels],
                datasets=ct.datasets,
            )
        )
    for item, hu, grid in ct_volumes:
        digest = content_hash(hu, grid)
        outputs.append(
            CtOutput(
                series_uid=deid.derived_uid(
                    "volume-ct", digest, study_id=patient.study_id, secret=options.secret
                ),
                study_uid=deid.derived_uid(
                    "volume-study", study_id=patient.study_id, secret=options.secret
                ),
                study_date="",
                frame_of_reference_uid=deid.derived_uid(
                    "volume-frame", digest, study_id=patient.study_id, secret=options.secret
                ),
                grid=grid,
                hu=hu,
                description="",
                phase=contrast_phase(item.parts[-1] if item.parts else ""),
                manufacturer="",
                slice_thickness_mm=grid.spacing[2],
                pixel_spacing_mm=[grid.spacing[1], grid.spacing[0]],
                series_number=None,
                content_hash=digest,
                items=[item],
            )
        )
    seen: dict[str, CtOutput] = {}
    for output in outputs:
        if output.series_uid in seen:
            problems.append(
                (output.items[0], f"{output.items[0].label}: the same CT series is uploaded twice")
            )
        seen[output.series_uid] = output
        output.existing = existing.get(output.series_uid)
    writer = VolumeWriter(pool, scratch, level=options.gzip_level)
    folder = _storage_folder(patient)
    if not problems:
        # The canonical CTs compress while the masks are checked and the DICOM files written.
        for output in outputs:
            if not output.unchanged:
                writer.submit(
                    output.hu, output.grid, f"{folder}/{output.series_uid}/ct.nii.gz", output
                )

    masks = _match_masks(
        patient,
        outputs=outputs,
        existing=existing,
        mask_volumes=mask_volumes,
        seg_files=seg_files,
        upload=upload,
        options=options,
        problems=problems,
    )
    if problems:
        raise PatientFailed(problems)
    _write_outputs(patient, outputs, masks, options=options, staging=staging, writer=writer)
    # What the commit needs is kept; the volumes and datasets are not (a bulk upload holds every
    # patient's plan until the commit).
    for output in outputs:
        output.hu = None
        output.datasets = []
    for mask in masks:
        mask.mask = None
    return PatientPlan(patient=patient, cts=outputs, masks=masks, items=items)


def _match_masks(
    patient: Patient,
    *,
    outputs: list[CtOutput],
    existing: dict[str, ImageSeries],
    mask_volumes: list,
    seg_files: list[tuple[Item, DicomFile]],
    upload: ImageUpload,
    options: IngestOptions,
    problems: list,
) -> list[MaskOutput]:
    """Put each mask on the CT whose grid it lies on (a CT of this upload first, then one
    already stored) and make it canonical."""
    replaced = {o.series_uid for o in outputs}
    targets: list[CtOutput | ImageSeries] = [*outputs]
    targets += sorted(
        (s for uid, s in existing.items() if uid not in replaced),
        key=lambda s: (not s.is_selected, s.pk),
    )
    masks: list[MaskOutput] = []
    for item, volume, values in mask_volumes:
        if not targets:
            problems.append(
                (item, f"{item.label}: a mask without a CT: upload the CT with it or first")
            )
            continue
        aligned, target, first_error = None, None, None
        for candidate in targets:
            grid = (
                candidate.grid
                if isinstance(candidate, CtOutput)
                else Grid.from_dict(candidate.geometry)
            )
            try:
                aligned = align_to_grid(
                    volume,
                    grid,
                    label=item.label,
                    tolerance_mm=options.tolerance_mm,
                    direction_tolerance=options.direction_tolerance,
                )
            except IngestError as exc:
                first_error = first_error or exc
                continue
            target = candidate
            break
        if target is None:
            problems.append((item, str(first_error)))
            continue
        try:
            mask = canonical_mask(
                aligned,
                label=item.label,
                label_pancreas=upload.label_pancreas,
                label_tumour=upload.label_tumour,
                values=values,
            )
        except IngestError as exc:
            problems.append((item, str(exc)))
            continue
        masks.append(MaskOutput(target=target, mask=mask, content_hash="", items=[item]))
    by_uid = {o.series_uid: o for o in outputs} | {
        uid: s for uid, s in existing.items() if uid not in replaced
    }
    for item, dicom in seg_files:
        references = referenced_series(dicom.dataset) & set(by_uid)
        if not references:
            problems.append(
                (
                    item,
                    f"{item.label}: the SEG references no CT series of this patient (neither in "
                    "this upload nor already stored)",
                )
            )
            continue
        target = by_uid[sorted(references)[0]]
        if isinstance(target, CtOutput):
            source_uids = [str(ds.SOPInstanceUID) for ds in target.sources()]
        else:
            source_uids = [str(ds.SOPInstanceUID) for ds in _stored_sources(target)]
        try:
            mask = seg_to_canonical(
                dicom,
                source_uids,
                label_pancreas=upload.label_pancreas,
                label_tumour=upload.label_tumour,
            )
        except IngestError as exc:
            problems.append((item, str(exc)))
            continue
        masks.append(MaskOutput(target=target, mask=mask, content_hash="", items=[item]))
    by_target: dict[int, MaskOutput] = {}
    for mask in masks:
        key = id(mask.target)
        if key in by_target:
            problems.append(
                (
                    mask.items[0],
                    f"{mask.items[0].label}: a second mask for the same CT series (the first is "
                    f"{by_target[key].items[0].label})",
                )
            )
        by_target[key] = mask
        mask.content_hash = content_hash(mask.mask, mask.grid)
        if isinstance(mask.target, ImageSeries):
            stored = next((v for v in mask.target.volumes.all() if v.kind == "mask"), None)
            mask.unchanged = stored is not None and stored.content_hash == mask.content_hash
        elif mask.target.unchanged:
            stored = next((v for v in mask.target.existing.volumes.all() if v.kind == "mask"), None)
            mask.unchanged = stored is not None and stored.content_hash == mask.content_hash
    return masks


def _write_outputs(
    patient: Patient,
    outputs: list[CtOutput],
    masks: list[MaskOutput],
    *,
    options: IngestOptions,
    staging: Staging,
    writer: VolumeWriter,
) -> None:
    """Store the new de-identified instances and SEGs, and the canonical volumes ``writer``
    is compressing."""
    folder = _storage_folder(patient)
    for output in outputs:
        if output.unchanged:
            continue
        series_folder = f"{folder}/{output.series_uid}"
        if not output.datasets:
            output.datasets = ct_series_from_volume(
                output.hu,
                output.grid,
                study_id=patient.study_id,
                uids=GeneratedUids(
                    study=output.study_uid,
                    series=output.series_uid,
                    frame_of_reference=output.frame_of_reference_uid,
                    instance=lambda index, output=output: deid.derived_uid(
                        "volume-instance",
                        output.content_hash,
                        index,
                        study_id=patient.study_id,
                        secret=options.secret,
                    ),
                ),
                description="CT converted from " + output.items[0].kind.value.replace("_gz", ""),
            )
        metadata = instance_metadata(output.datasets)
        encoded = encode_series(output.datasets)
        for ds, meta, data in zip(output.datasets, metadata, encoded, strict=True):
            sop_uid = str(ds.SOPInstanceUID)
            name = staging.save(f"{series_folder}/{sop_uid}.dcm", ContentFile(data))
            output.instances.append(
                {
                    "sop_instance_uid": sop_uid,
                    "sop_class_uid": str(ds.SOPClassUID),
                    "instance_number": _int_or_none(ds.get("InstanceNumber")),
                    "file": name,
                    "metadata": meta,
                }
            )
    for mask in masks:
        if mask.unchanged:
            continue
        target = mask.target
        if isinstance(target, CtOutput):
            sources, ct_uid, ct_hash = target.sources(), target.series_uid, target.content_hash
        else:
            sources = _stored_sources(target)
            ct_uid, ct_hash = target.series_instance_uid, target.content_hash
        series_folder = f"{folder}/{ct_uid}"
        writer.submit(mask.mask, mask.grid, f"{series_folder}/mask.nii.gz", mask)
        mask.seg_series_uid = deid.derived_uid(
            "seg",
            ct_uid,
            ct_hash,
            mask.content_hash,
            study_id=patient.study_id,
            secret=options.secret,
        )
        mask.seg_sop_uid = deid.derived_uid(
            "seg-instance", mask.seg_series_uid, study_id=patient.study_id, secret=options.secret
        )
        seg = build_segmentation(
            sources,
            mask.mask,
            series_uid=mask.seg_series_uid,
            sop_uid=mask.seg_sop_uid,
            content_date=str(sources[0].get("StudyDate", "") or ""),
        )
        mask.seg_frames = int(seg.NumberOfFrames)
        mask.seg_metadata = instance_metadata([seg])[0]
        mask.seg_name = staging.save(
            f"{folder}/{mask.seg_series_uid}/{mask.seg_sop_uid}.dcm", ContentFile(encode(seg))
        )
    writer.store(staging)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# Commit


def _delete_later(names: list[str]) -> None:
    def delete() -> None:
        for name in names:
            default_storage.delete(name)

    transaction.on_commit(delete)


def _series_files(series: ImageSeries) -> list[str]:
    """Every stored file of a series and of what hangs on it (instances, volumes, SEGs)."""
    names = [i.file.name for i in series.instances.all()]
    names += [v.file.name for v in series.volumes.all()]
    for seg in series.segmentations.all():
        names += _series_files(seg)
    return names


def _commit_patient(plan: PatientPlan, upload: ImageUpload) -> dict[str, Any]:
    patient = plan.patient
    old_files: list[str] = []
    outcome = {
        "ct_added": 0,
        "ct_replaced": 0,
        "ct_unchanged": 0,
        "mask_added": 0,
        "mask_unchanged": 0,
    }
    for output in plan.cts:
        if output.unchanged:
            output.row = output.existing
            outcome["ct_unchanged"] += 1
            continue
        if output.existing is not None:
            old_files += _series_files(output.existing)
            output.existing.delete()
            outcome["ct_replaced"] += 1
        else:
            outcome["ct_added"] += 1
        study, _ = ImagingStudy.objects.get_or_create(
            study_instance_uid=output.study_uid,
            defaults={
                "patient": patient,
                "study_date": output.study_date[:8],
                "description": "CT study" if output.study_date else "CT study (from volume files)",
            },
        )
        if study.patient_id != patient.pk:
            raise UserFacingError(
                f"Study {output.study_uid} already belongs to another patient; nothing was changed."
            )
        output.row = ImageSeries.objects.create(
            study=study,
            series_instance_uid=output.series_uid,
            modality="CT",
            series_number=output.series_number,
            description=_series_description(output),
            manufacturer=output.manufacturer,
            slice_thickness_mm=output.slice_thickness_mm,
            pixel_spacing_mm=output.pixel_spacing_mm,
            geometry=output.grid.as_dict(),
            frame_of_reference_uid=output.frame_of_reference_uid,
            n_instances=len(output.instances),
            content_hash=output.content_hash,
            contrast_phase=output.phase,
            source_upload=upload,
        )
        DicomInstance.objects.bulk_create(
            [
                DicomInstance(
                    series=output.row,
                    transfer_syntax_uid=str(pydicom.uid.ExplicitVRLittleEndian),
                    number_of_frames=1,
                    **instance,
                )
                for instance in output.instances
            ],
            batch_size=200,
        )
        CanonicalVolume.objects.create(
            patient=patient,
            series=output.row,
            kind=CanonicalVolume.Kind.CT,
            file=output.volume_name,
            content_hash=output.content_hash,
            geometry=output.grid.as_dict(),
        )
    for mask in plan.masks:
        if mask.unchanged:
            outcome["mask_unchanged"] += 1
            continue
        outcome["mask_added"] += 1
        ct_row = mask.target.row if isinstance(mask.target, CtOutput) else mask.target
        for seg in ImageSeries.objects.filter(referenced_series=ct_row, modality="SEG"):
            old_files += _series_files(seg)
            seg.delete()
        for volume in CanonicalVolume.objects.filter(series=ct_row, kind=CanonicalVolume.Kind.MASK):
            old_files.append(volume.file.name)
            volume.delete()
        seg_row = ImageSeries.objects.create(
            study=ct_row.study,
            series_instance_uid=mask.seg_series_uid,
            modality="SEG",
            series_number=900,
            description="Masks: pancreas, tumour",
            geometry=mask.grid.as_dict(),
            frame_of_reference_uid=ct_row.frame_of_reference_uid,
            n_instances=1,
            content_hash=mask.content_hash,
            referenced_series=ct_row,
            source_upload=upload,
        )
        DicomInstance.objects.create(
            series=seg_row,
            sop_instance_uid=mask.seg_sop_uid,
            sop_class_uid=str(pydicom.uid.SegmentationStorage),
            instance_number=1,
            number_of_frames=mask.seg_frames,
            transfer_syntax_uid=str(pydicom.uid.ExplicitVRLittleEndian),
            file=mask.seg_name,
            metadata=mask.seg_metadata,
        )
        CanonicalVolume.objects.create(
            patient=patient,
            series=ct_row,
            kind=CanonicalVolume.Kind.MASK,
            file=mask.volume_name,
            content_hash=mask.content_hash,
            geometry=mask.grid.as_dict(),
        )
    changed = outcome["ct_added"] + outcome["ct_replaced"] + outcome["mask_added"]
    if changed:
        ImagingStudy.objects.filter(patient=patient, series__isnull=True).delete()
        apply_pick_rule(patient)
    _delete_later(old_files)
    return outcome


def _series_description(output: CtOutput) -> str:
    """The stored series' description, written by the platform (de-identification removes the
    original): slice thickness, phase, and the format it came in."""
    parts = ["CT"]
    if output.slice_thickness_mm:
        parts.append(f"{output.slice_thickness_mm:g} mm")
    parts.append(PHASE_LABELS.get(output.phase, output.phase))
    if output.items and output.items[0].kind != Kind.DICOM:
        parts.append(f"(from {output.items[0].kind.value.replace('_gz', '').upper()})")
    return " ".join(parts)[:200]


def apply_pick_rule(patient: Patient) -> ImageSeries | None:
    """Select the patient's CT series by the pick rule, unless a coordinator chose one."""
    series = list(
        ImageSeries.objects.filter(study__patient=patient, modality="CT").annotate(
            has_mask=Exists(
                CanonicalVolume.objects.filter(
                    series=OuterRef("pk"), kind=CanonicalVolume.Kind.MASK
                )
            )
        )
    )
    if not series:
        return None
    chosen = next((s for s in series if s.is_selected and s.picked_by_id), None)
    if chosen is None:
        key, reason = pick_series(
            Candidate(
                key=s.pk,
                has_mask=s.has_mask,
                phase=s.contrast_phase or "unknown",
                slice_thickness_mm=s.slice_thickness_mm
                or (s.geometry.get("spacing") or [0, 0, 0])[2],
                rows=int((s.geometry.get("size") or [0, 0])[1]),
                n_slices=s.n_instances,
                series_number=s.series_number,
            )
            for s in series
        )
        chosen = next(s for s in series if s.pk == key)
        ImageSeries.objects.filter(pk=chosen.pk).update(is_selected=True, pick_reason=reason[:200])
    ImageSeries.objects.filter(study__patient=patient, modality="CT").exclude(pk=chosen.pk).update(
        is_selected=False, pick_reason="", picked_by=None
    )
    return chosen


def select_series(series: ImageSeries, user: Any) -> None:
    """A coordinator's pick: this CT series is the one the engine uses."""
    if series.modality != "CT":
        raise UserFacingError("Only a CT series can be picked.")
    with transaction.atomic():
        patient = Patient.objects.select_for_update().get(pk=series.study.patient_id)
        ImageSeries.objects.filter(study__patient=patient, modality="CT").update(
            is_selected=False, pick_reason="", picked_by=None
        )
        name = getattr(user, "username", "") or "a coordinator"
        ImageSeries.objects.filter(pk=series.pk).update(
            is_selected=True, picked_by=user, pick_reason=f"chosen by {name}"[:200]
        )
        audit(
            user,
            "select_series",
            patient=patient,
            series=series.series_instance_uid,
        )


def _fill_manufacturers(cohort: Cohort, patients: list[Patient]) -> int:
    """Fill the clinical table's CT manufacturer from the selected series when it is empty."""
    filled = 0
    for patient in Patient.objects.filter(pk__in=[p.pk for p in patients], ct_manufacturer=""):
        selected = ImageSeries.objects.filter(
            study__patient=patient, modality="CT", is_selected=True
        ).first()
        if selected is not None and selected.manufacturer:
            Patient.objects.filter(pk=patient.pk).update(ct_manufacturer=selected.manufacturer)
            filled += 1
    if filled:
        cohort.bump_data_version()
    return filled


# ----------------------------------------------------------------------------------------------
# The job


def _mark_files(items: list[Item], failures: Failures | None) -> None:
    by_file: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_file[item.upload_file.pk].append(item)
    updates = []
    for upload_file_id, file_items in by_file.items():
        upload_file = file_items[0].upload_file
        kinds = sorted({i.role or i.kind.value for i in file_items if not i.skipped})
        if len(file_items) > 1 or file_items[0].label != upload_file.client_name:
            kinds = [f"ZIP of {len(file_items)} files", *kinds[:3]]
        upload_file.detected_kind = ", ".join(kinds)[:24] if kinds else "skipped"
        if failures and upload_file_id in failures.by_file:
            upload_file.status = UploadFileModel.Status.FAILED
            upload_file.error = "\n".join(failures.by_file[upload_file_id])[:4000]
        elif failures:
            upload_file.status = UploadFileModel.Status.SKIPPED
            upload_file.error = "Not ingested: other files of this upload failed (nothing changed)."
        elif all(i.skipped for i in file_items):
            upload_file.status = UploadFileModel.Status.SKIPPED
            upload_file.error = "; ".join(sorted({i.skipped for i in file_items}))[:4000]
        else:
            upload_file.status = UploadFileModel.Status.DONE
            upload_file.error = ""
        updates.append(upload_file)
    # Files mostly share their outcome: one UPDATE per distinct outcome, not a CASE per row.
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for upload_file in updates:
        key = (upload_file.status, upload_file.error, upload_file.detected_kind)
        groups[key].append(upload_file.pk)
    for (status, error, kind), ids in groups.items():
        for start in range(0, len(ids), 1000):
            UploadFileModel.objects.filter(pk__in=ids[start : start + 1000]).update(
                status=status, error=error, detected_kind=kind
            )


def _fail(upload: ImageUpload, items: list[Item], failures: Failures) -> UserFacingError:
    for upload_file in upload.files.all():
        if upload_file.pk in failures.by_file and not any(
            i.upload_file.pk == upload_file.pk for i in items
        ):
            items.append(Item(upload_file, upload_file.client_name, (), Path(), Kind.UNKNOWN))
    _mark_files(items, failures)
    messages = failures.messages()
    shown = "\n".join(messages[:10])
    more = f"\n... and {len(messages) - 10} more" if len(messages) > 10 else ""
    message = f"{len(failures.by_file)} file(s) failed; nothing was changed.\n{shown}{more}"
    ImageUpload.objects.filter(pk=upload.pk).update(
        status=ImageUpload.Status.FAILED, error=message[:8000]
    )
    return UserFacingError(message)


def ingest_upload(upload: ImageUpload, progress: ProgressCallback) -> dict[str, Any]:
    """Ingest every file of ``upload`` (see the module docstring); returns the summary.

    Raises UserFacingError, after marking the upload and its files, when anything fails.
    """
    options = IngestOptions.from_settings()
    upload = ImageUpload.objects.select_related("cohort", "patient", "uploaded_by").get(
        pk=upload.pk
    )
    ImageUpload.objects.filter(pk=upload.pk).update(status=ImageUpload.Status.PROCESSING, error="")
    upload.files.update(status=UploadFileModel.Status.PROCESSING, error="")
    staging = Staging(upload.job_id)
    failures = Failures()
    items: list[Item] = []
    transient = False
    try:
        with (
            tempfile.TemporaryDirectory(
                dir=_scratch_parent(upload, options), prefix="ingest-"
            ) as folder,
            ThreadPoolExecutor(max_workers=2) as pool,
        ):
            scratch = Path(folder)
            progress(2, "Reading the uploaded files")
            items = materialise(upload, scratch, options, failures)
            link_metaimage_data(items, scratch, failures)
            assign_study_ids(upload, items, failures)
            if failures:
                raise _fail(upload, items, failures)
            by_patient: dict[str, list[Item]] = defaultdict(list)
            for item in items:
                if not item.skipped:
                    by_patient[item.study_id].append(item)
            patients = {
                p.study_id: p
                for p in Patient.objects.filter(cohort_id=upload.cohort_id, study_id__in=by_patient)
            }
            plans: list[PatientPlan] = []
            for index, study_id in enumerate(sorted(by_patient), start=1):
                progress(
                    5 + int(85 * (index - 1) / len(by_patient)),
                    f"Patient {study_id} ({index} of {len(by_patient)}): checking, de-identifying, "
                    "storing",
                )
                try:
                    plans.append(
                        prepare_patient(
                            patients[study_id],
                            by_patient[study_id],
                            upload=upload,
                            options=options,
                            staging=staging,
                            pool=pool,
                            scratch=scratch,
                        )
                    )
                except PatientFailed as exc:
                    for item, message in exc.problems:
                        failures.add(item.upload_file, message)
            if failures:
                raise _fail(upload, items, failures)
            progress(92, "Saving the series in one transaction")
            summary = _commit(upload, plans, items, staging)
    except UserFacingError:
        staging.discard()
        raise
    except TRANSIENT_ERRORS:
        staging.discard()
        transient = True
        ImageUpload.objects.filter(pk=upload.pk).update(status=ImageUpload.Status.QUEUED)
        upload.files.update(status=UploadFileModel.Status.QUEUED)
        raise
    except Exception:
        staging.discard()
        ImageUpload.objects.filter(pk=upload.pk).update(
            status=ImageUpload.Status.FAILED,
            error="Internal error; the administrators can see the log. Nothing was changed.",
        )
        upload.files.update(status=UploadFileModel.Status.FAILED, error="Internal error")
        raise
    finally:
        if not transient:
            from .uploads import purge_received

            purge_received(upload)
    return summary


def _scratch_parent(upload: ImageUpload, options: IngestOptions) -> str | None:
    """The job's scratch folder (removed by the next attempt or the sweeper when the worker is
    killed), else the configured work folder."""
    if upload.job_id is not None and scratch_folder(upload.job_id).is_dir():
        return str(scratch_folder(upload.job_id))
    return options.work_dir


def _commit(
    upload: ImageUpload, plans: list[PatientPlan], items: list[Item], staging: Staging
) -> dict[str, Any]:
    totals: dict[str, int] = defaultdict(int)
    per_patient = {}
    with transaction.atomic():
        forget_written(staging.job_id)
        list(Patient.objects.select_for_update().filter(pk__in=[p.patient.pk for p in plans]))
        for plan in plans:
            outcome = _commit_patient(plan, upload)
            per_patient[plan.patient.study_id] = outcome
            for key, value in outcome.items():
                totals[key] += value
        filled = _fill_manufacturers(upload.cohort, [p.patient for p in plans])
        skipped = [f"{i.label}: {i.skipped}" for i in items if i.skipped][:50]
        summary = {
            "patients": len(plans),
            **totals,
            "manufacturers_filled": filled,
            "skipped": skipped,
            "per_patient": per_patient,
        }
        ImageUpload.objects.filter(pk=upload.pk).update(
            status=ImageUpload.Status.DONE, error="", summary=summary
        )
        _mark_files(items, None)
        audit(
            upload.uploaded_by,
            AUDIT_ACTION,
            cohort=upload.cohort,
            patient=upload.patient,
            label=f"image upload #{upload.pk}",
            upload=upload.pk,
            patients=len(plans),
            **{k: v for k, v in totals.items()},
        )
    return summary
