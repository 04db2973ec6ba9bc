"""The one transaction at the end of an ingest: studies, series, instances, SEGs and canonical
volumes of every patient, the pick rule applied, the upload and its files marked."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pydicom
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import Value
from django.utils import timezone

from pmpd_web.accounts.audit import record as audit
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.dbcopy import copy_csv, csv_field
from pmpd_web.jobs.files import forget_written
from pmpd_web.jobs.runner import UserFacingError

from ..dicom_series import PHASE_LABELS
from ..intake import Failures, Item
from ..models import (
    CanonicalVolume,
    DicomInstance,
    ImageSeries,
    ImageUpload,
    ImagingStudy,
    MaskVersion,
)
from ..models import UploadFile as UploadFileModel
from ..series_pick import apply_pick_rule
from ..sniff import Kind
from .outputs import CtOutput, PatientPlan
from .staging import Staging

AUDIT_ACTION = "ingest_images"


def _delete_later(names: list[str]) -> None:
    def delete() -> None:
        for name in names:
            default_storage.delete(name)

    transaction.on_commit(delete)


def _json_value(value: dict[str, Any]) -> Value:
    """A JSON value as an expression: bulk_create then sends each row's JSON as a parameter of
    its own, not all of them in one jsonb[] array literal (Django's UNNEST insert on
    PostgreSQL), whose quoting of every double quote of 300 DICOM JSON documents costs more
    than the insert itself."""
    return Value(value, output_field=DicomInstance._meta.get_field("metadata"))


# The columns the COPY of a series' instances fills, in its CSV's order.
_INSTANCE_COLUMNS = (
    "series_id",
    "sop_instance_uid",
    "sop_class_uid",
    "instance_number",
    "number_of_frames",
    "transfer_syntax_uid",
    "file",
    "metadata",
)


def _insert_instances(series: ImageSeries, instances: list[dict[str, Any]]) -> None:
    """The stored instances of a new series, each with its DICOM JSON: on PostgreSQL one COPY
    (the 300 rows of a CT series as one INSERT took 70 ms, most of it building and sending
    its 2,400 parameters), elsewhere ``bulk_create``."""
    syntax = str(pydicom.uid.ExplicitVRLittleEndian)
    if connection.vendor != "postgresql":
        DicomInstance.objects.bulk_create(
            [
                DicomInstance(
                    series=series,
                    transfer_syntax_uid=syntax,
                    number_of_frames=1,
                    **{**instance, "metadata": _json_value(instance["metadata"])},
                )
                for instance in instances
            ],
            batch_size=200,
        )
        return
    rows = [
        ",".join(
            (
                str(series.pk),
                csv_field(instance["sop_instance_uid"]),
                csv_field(instance["sop_class_uid"]),
                ""
                if instance["instance_number"] is None
                else str(int(instance["instance_number"])),
                "1",
                syntax,
                csv_field(instance["file"]),
                csv_field(json.dumps(instance["metadata"], separators=(",", ":"))),
            )
        )
        for instance in instances
    ]
    quote = connection.ops.quote_name
    columns = [
        quote(DicomInstance._meta.get_field(name.removesuffix("_id")).column)
        for name in _INSTANCE_COLUMNS
    ]
    with connection.cursor() as cursor:
        copy_csv(cursor, quote(DicomInstance._meta.db_table), columns, "\n".join(rows) + "\n")


def _series_files(series: ImageSeries) -> list[str]:
    """Every stored file of a series and of what hangs on it (instances, volumes, SEGs)."""
    names = [i.file.name for i in series.instances.all()]
    names += [v.file.name for v in series.volumes.all()]
    names += [v.file.name for v in series.mask_versions.all()]
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
                "source_patient_key": output.source_patient_key,
                "source_study_key": output.source_study_key,
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
        _insert_instances(output.row, output.instances)
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
        # Earlier versions stay (their SEGs too): the new upload supersedes the approved one.
        number = max(ct_row.mask_versions.values_list("number", flat=True), default=0) + 1
        ct_row.mask_versions.filter(status=MaskVersion.Status.APPROVED).update(
            status=MaskVersion.Status.SUPERSEDED
        )
        CanonicalVolume.objects.filter(series=ct_row, kind=CanonicalVolume.Kind.MASK).delete()
        seg_row = ImageSeries.objects.create(
            study=ct_row.study,
            series_instance_uid=mask.seg_series_uid,
            modality="SEG",
            series_number=900,
            description=f"Masks v{number}: pancreas, tumour (uploaded)",
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
        MaskVersion.objects.create(
            patient=patient,
            ct_series=ct_row,
            number=number,
            source=MaskVersion.Source.UPLOADED,
            source_label=f"image upload #{upload.pk}",
            status=MaskVersion.Status.APPROVED,
            seg_series=seg_row,
            file=mask.volume_name,
            content_hash=mask.content_hash,
            geometry=mask.grid.as_dict(),
            pancreas_voxels=mask.pancreas_voxels,
            tumour_voxels=mask.tumour_voxels,
            produced_by=upload.uploaded_by,
            reviewed_by=upload.uploaded_by,
            reviewed_at=timezone.now(),
            review_note="Uploaded masks are approved on upload",
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


def commit_upload(
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
        mark_files(items, None)
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


def mark_files(items: list[Item], failures: Failures | None) -> None:
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
