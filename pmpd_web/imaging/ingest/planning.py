"""One patient of an upload: read, de-identify and check its DICOM and volume files, then write
what changed to storage (not to the database). Every problem found is collected."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db.models import Q

from pmpd_web.cohorts.models import Patient

from .. import deid
from ..dicom_series import (
    CtSeries,
    DicomFile,
    assemble_ct,
    contrast_phase,
    drop_duplicate_instances,
    load_deferred,
    read_dicom,
    role_of,
)
from ..errors import IngestError
from ..intake import IngestOptions, Item
from ..models import ImageSeries, ImageUpload, ImagingStudy
from ..sniff import Kind, describe_unknown
from ..volumes import (
    CANONICAL_PANCREAS,
    CANONICAL_TUMOUR,
    Grid,
    Volume,
    check_ct_values,
    check_grid,
    content_hash,
    label_values,
    read_volume,
    to_hounsfield,
    voxel_counts,
)
from .masks import match_masks
from .outputs import CtOutput, PatientFailed, PatientPlan, storage_folder, uid_scope
from .staging import Staging, VolumeWriter
from .storage import write_outputs

VOLUME_KINDS = {Kind.NIFTI, Kind.NIFTI_GZ, Kind.NRRD, Kind.METAIMAGE}


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
            uid_scope=uid_scope(patient),
            secret=options.secret,
            date_mode=options.date_mode,
            date_shift_max_days=options.date_shift_max_days,
        )
        if role == "seg":
            load_deferred(dicom.dataset)  # highdicom reads it, and knows no deferred values
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
        _, dropped = drop_duplicate_instances([dicom for _, dicom in members])
        for dicom, note in dropped:
            item = next(item for item, copy in members if copy is dicom)
            item.skipped = note
        members = [(item, dicom) for item, dicom in members if not item.skipped]
        try:
            series.append(
                assemble_ct(
                    [dicom for _, dicom in members],
                    min_slices=options.min_slices,
                    tolerance_mm=options.tolerance_mm,
                    hash_while_filling=True,
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


def _source_key(kind: str, value: str, patient: Patient) -> str:
    return deid.source_key(
        kind, value, scope=f"cohort-{patient.cohort_id}", secret=settings.PMPD_DEID_SECRET
    )


def _check_shared_source(
    patient: Patient, outputs: list[CtOutput], problems: list[tuple[Item, str]]
) -> None:
    """A series whose source PatientID or StudyInstanceUID is stored for another patient of
    the cohort is the same scan given to two patients (as XNAT's prearchive flags it):
    refused, naming the other study ID, unless the upload confirms it."""
    for output in outputs:
        same = Q()
        if output.source_patient_key:
            same |= Q(source_patient_key=output.source_patient_key)
        if output.source_study_key:
            same |= Q(source_study_key=output.source_study_key)
        if not same:
            continue
        other = (
            ImagingStudy.objects.filter(same, patient__cohort_id=patient.cohort_id)
            .exclude(patient=patient)
            .select_related("patient")
            .first()
        )
        if other is not None:
            problems.append(
                (output.items[0], shared_source_message(output, other.patient.study_id))
            )


def shared_source_message(output: CtOutput, other_study_id: str) -> str:
    return (
        f"{output.items[0].label}: the same scan (its source patient ID or study) is already "
        f"stored for study ID {other_study_id} of this cohort. If it truly belongs to this "
        'patient too, upload it again with "the same scan is stored for another patient" '
        "ticked (API: confirm_shared_source)"
    )


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
    # The volume files (masks mostly) are read in the pool while the DICOM files are read
    # here, and each series' content hash is computed by a thread of its own while its volume
    # is filled (SimpleITK, zlib, numpy and hashlib release the GIL).
    volume_problems: list[tuple[Item, str]] = []
    volumes = pool.submit(_volume_items, volume_items, upload, options, volume_problems)
    dicom_series, seg_files = _dicom_cts(patient, dicom_items, options, problems)
    # assemble_ct(..., hash_while_filling=True): every series has its hash.
    hashes = [ct.streamed_hash for ct in dicom_series if ct.streamed_hash is not None]
    ct_volumes, mask_volumes = volumes.result()
    problems += volume_problems
    if problems:
        for digest in hashes:
            digest.cancel()
        raise PatientFailed(problems)

    existing = {
        s.series_instance_uid: s
        for s in ImageSeries.objects.filter(study__patient=patient, modality="CT").prefetch_related(
            "volumes"
        )
    }
    outputs: list[CtOutput] = []
    for ct, digest in zip(dicom_series, hashes, strict=True):
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
                content_hash=digest.hexdigest(),  # hashed while filled
                items=[i for i in dicom_items if i.label in labels],
                source_patient_key=_source_key("patient", ct.files[0].source_patient_id, patient),
                source_study_key=_source_key("study", ct.files[0].source_study_uid, patient),
                datasets=ct.datasets,
            )
        )
    for item, hu, grid in ct_volumes:
        digest = content_hash(hu, grid)
        outputs.append(
            CtOutput(
                series_uid=deid.derived_uid(
                    "volume-ct", digest, study_id=uid_scope(patient), secret=options.secret
                ),
                study_uid=deid.derived_uid(
                    "volume-study", study_id=uid_scope(patient), secret=options.secret
                ),
                study_date="",
                frame_of_reference_uid=deid.derived_uid(
                    "volume-frame", digest, study_id=uid_scope(patient), secret=options.secret
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
    if not upload.confirm_shared_source:
        _check_shared_source(patient, outputs, problems)
    seen: dict[str, CtOutput] = {}
    for output in outputs:
        if output.series_uid in seen:
            problems.append(
                (output.items[0], f"{output.items[0].label}: the same CT series is uploaded twice")
            )
        seen[output.series_uid] = output
        output.existing = existing.get(output.series_uid)
    writer = VolumeWriter(pool, scratch, level=options.gzip_level)
    folder = storage_folder(patient)
    if not problems:
        # The canonical CTs compress while the masks are checked and the DICOM files written.
        for output in outputs:
            if not output.unchanged:
                writer.submit(output.hu, output.grid, f"{folder}/{output.series_uid}/ct", output)

    masks = match_masks(
        patient,
        outputs=outputs,
        existing=existing,
        mask_volumes=mask_volumes,
        seg_files=seg_files,
        upload=upload,
        options=options,
        problems=problems,
        pool=pool,
    )
    if problems:
        raise PatientFailed(problems)
    write_outputs(patient, outputs, masks, options=options, staging=staging, writer=writer)
    # What the commit needs is kept; the volumes and datasets are not (a bulk upload holds every
    # patient's plan until the commit).
    for output in outputs:
        output.hu = None
        output.datasets = []
    for mask in masks:
        mask.resolve_hash()
        if mask.mask is not None:
            mask.pancreas_voxels, mask.tumour_voxels = voxel_counts(
                mask.mask, (CANONICAL_PANCREAS, CANONICAL_TUMOUR)
            )
        mask.mask = None
    return PatientPlan(patient=patient, cts=outputs, masks=masks, items=items)
