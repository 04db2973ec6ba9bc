"""Write the de-identified instances, the SEG of each mask and the canonical volumes of one
patient to storage (staged: deleted again when the ingest fails)."""

from __future__ import annotations

from typing import Any

from django.core.files.base import ContentFile

from pmpd_web.cohorts.models import Patient

from .. import deid
from ..dicom_series import (
    GeneratedUids,
    build_segmentation,
    ct_series_from_volume,
    encode,
    encode_series,
    instance_metadata,
)
from ..intake import IngestOptions
from .outputs import CtOutput, MaskOutput, storage_folder, stored_sources, uid_scope
from .staging import Staging, VolumeWriter


class _WholeFile(ContentFile):
    """A file's bytes handed to the storage in one piece: the file-system storage writes them
    with one call, without cutting them into copies of 64 KiB."""

    DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024


def write_outputs(
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
    folder = storage_folder(patient)
    # The masks' volumes compress in the pool while the instances are written here.
    for mask in masks:
        if not mask.unchanged:
            # A label mask is mostly zeros: gzip at the fastest level shrinks it ~100x in
            # little time, whatever the CT's level.
            writer.submit(
                mask.mask,
                mask.grid,
                f"{folder}/{_target_uid(mask)}/mask",
                mask,
                level=max(options.gzip_level, 1),
            )
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
                        study_id=uid_scope(patient),
                        secret=options.secret,
                    ),
                ),
                description="CT converted from " + output.items[0].kind.value.replace("_gz", ""),
            )
        metadata = instance_metadata(output.datasets)
        sop_uids = [str(ds.SOPInstanceUID) for ds in output.datasets]
        names = staging.save_all(
            [f"{series_folder}/{sop_uid}.dcm" for sop_uid in sop_uids],
            (_WholeFile(data) for data in encode_series(output.datasets)),
        )
        for ds, sop_uid, meta, name in zip(output.datasets, sop_uids, metadata, names, strict=True):
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
            sources = stored_sources(target)
            ct_uid, ct_hash = target.series_instance_uid, target.content_hash
        mask.seg_series_uid = deid.derived_uid(
            "seg",
            ct_uid,
            ct_hash,
            mask.resolve_hash(),
            study_id=uid_scope(patient),
            secret=options.secret,
        )
        mask.seg_sop_uid = deid.derived_uid(
            "seg-instance", mask.seg_series_uid, study_id=uid_scope(patient), secret=options.secret
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
            f"{folder}/{mask.seg_series_uid}/{mask.seg_sop_uid}.dcm", _WholeFile(encode(seg))
        )
    writer.store(staging)


def _target_uid(mask: MaskOutput) -> str:
    """The series UID of the CT the mask lies on."""
    target = mask.target
    return target.series_uid if isinstance(target, CtOutput) else target.series_instance_uid


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
