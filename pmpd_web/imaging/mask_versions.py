"""Mask versions: store a new version of a CT's pancreas and tumour mask (uploaded, automatic
or edited), approve or reject one, and read a version's voxels.

The approved version's mask is the CT's ``CanonicalVolume`` of kind "mask": every reader of
the engine's inputs (the preprocessing cache, training, scoring) sees approved masks only. The
preprocessing cache is keyed by the volumes' content hashes, so approving a different mask
makes the patient's cached patches and earlier scores stale without deleting anything.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pydicom
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from pydicom.dataset import Dataset

from pmpd_web.accounts.audit import record as audit
from pmpd_web.accounts.models import AuditAction, acting_user
from pmpd_web.jobs.models import Job
from pmpd_web.jobs.runner import UserFacingError

from .dicom_series import build_segmentation, encode, instance_metadata
from .ingest.outputs import storage_folder, stored_sources
from .models import CanonicalVolume, DicomInstance, ImageSeries, MaskVersion
from .volumes import Grid, content_hash, dice_per_label, write_nifti

NO_TUMOUR_FLAG = "no tumour in this mask: PMPD needs one; correct it before approving"
# Why a pancreas-only model's masks have no tumour: by design, not a miss.
PANCREAS_ONLY_FLAG = (
    "no tumour: this model segments the pancreas only; draw the tumour before approval"
)
MASK_COMPRESSION_LEVEL = 6


def read_mask(version: MaskVersion | CanonicalVolume) -> np.ndarray:
    """The canonical mask (z, y, x, uint8) of a version or of a canonical volume."""
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "mask.nii.gz"
        with default_storage.open(version.file.name, "rb") as handle:
            path.write_bytes(handle.read())
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8)


def _save_nifti(mask: np.ndarray, grid: Grid, name: str) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "mask.nii.gz"
        write_nifti(mask, grid, target, compression_level=MASK_COMPRESSION_LEVEL)
        return default_storage.save(name, ContentFile(target.read_bytes()))


def _store_seg(ct_series: ImageSeries, seg: Dataset, description: str) -> ImageSeries:
    """The SEG as a series of the CT's study (one multi-frame instance), served over DICOMweb."""
    folder = storage_folder(ct_series.study.patient)
    series_uid, sop_uid = str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID)
    name = default_storage.save(f"{folder}/{series_uid}/{sop_uid}.dcm", ContentFile(encode(seg)))
    seg_row = ImageSeries.objects.create(
        study=ct_series.study,
        series_instance_uid=series_uid,
        modality="SEG",
        series_number=int(seg.get("SeriesNumber") or 900),
        description=description[:200],
        geometry=ct_series.geometry,
        frame_of_reference_uid=ct_series.frame_of_reference_uid,
        n_instances=1,
        referenced_series=ct_series,
    )
    DicomInstance.objects.create(
        series=seg_row,
        sop_instance_uid=sop_uid,
        sop_class_uid=str(seg.SOPClassUID),
        instance_number=1,
        number_of_frames=int(seg.get("NumberOfFrames") or 1),
        transfer_syntax_uid=str(pydicom.uid.ExplicitVRLittleEndian),
        file=name,
        metadata=instance_metadata([seg])[0],
    )
    return seg_row


def store_mask_version(
    *,
    ct_series: ImageSeries,
    mask: np.ndarray,
    source: str,
    source_label: str = "",
    user=None,
    seg: Dataset | None = None,
    edited_from: MaskVersion | None = None,
    uncertainty: float | None = None,
    flags: list[str] | None = None,
    no_tumour_reason: str = NO_TUMOUR_FLAG,
    job: Job | None = None,
) -> MaskVersion:
    """Store ``mask`` (z, y, x; 0 background, 1 pancreas, 2 tumour, on the CT's grid) as the
    next version of ``ct_series``, "needs review". ``seg`` is the DICOM SEG as received (a
    reader's edit); without it the platform builds one from the mask. A mask without tumour is
    stored and flagged with ``no_tumour_reason``. ``job``: the segmentation job that predicted
    it, stored with the version in the same transaction."""
    grid = Grid.from_dict(ct_series.geometry)
    expected = tuple(reversed(grid.size))
    if mask.shape != expected:
        raise UserFacingError(
            f"The mask is {mask.shape} voxels (z, y, x); the CT is {expected}. Nothing stored."
        )
    mask = mask.astype(np.uint8)
    if not np.isin(mask, (0, 1, 2)).all():
        raise UserFacingError("A mask holds only 0, 1 (pancreas) and 2 (tumour). Nothing stored.")
    patient = ct_series.study.patient
    flags = list(flags or [])
    tumour_voxels = int((mask == 2).sum())
    if tumour_voxels == 0 and no_tumour_reason not in flags:
        flags.append(no_tumour_reason)
    if seg is None and mask.any():
        seg = build_segmentation(
            stored_sources(ct_series),
            mask,
            series_uid=pydicom.uid.generate_uid(),
            sop_uid=pydicom.uid.generate_uid(),
            content_date="",
        )
    written: list[str] = []
    try:
        with transaction.atomic():
            ImageSeries.objects.select_for_update().get(pk=ct_series.pk)
            number = max(ct_series.mask_versions.values_list("number", flat=True), default=0) + 1
            name = _save_nifti(
                mask,
                grid,
                f"{storage_folder(patient)}/{ct_series.series_instance_uid}/mask-v{number}.nii.gz",
            )
            written.append(name)
            version = MaskVersion.objects.create(
                patient=patient,
                ct_series=ct_series,
                number=number,
                source=source,
                source_label=source_label[:200],
                seg_series=None,
                edited_from=edited_from,
                file=name,
                content_hash=content_hash(mask, grid),
                geometry=grid.as_dict(),
                pancreas_voxels=int((mask == 1).sum()),
                tumour_voxels=tumour_voxels,
                uncertainty=uncertainty,
                flags=flags,
                produced_by=acting_user(user),
                produced_by_job=job,
            )
            if seg is not None:
                version.seg_series = _store_seg(
                    ct_series, seg, f"Masks v{number}: {version.provenance}"
                )
                written.append(version.seg_series.instances.get().file.name)
                version.save(update_fields=["seg_series"])
            audit(
                user,
                AuditAction.STORE_MASK_VERSION,
                patient=patient,
                label=str(version),
                mask_version=version.pk,
                number=number,
                source=source,
                source_label=source_label,
                flags=flags,
            )
    except BaseException:
        for stored in written:
            default_storage.delete(stored)
        raise
    return version


def approve(version: MaskVersion, user, *, note: str = "") -> MaskVersion:
    """Make ``version`` the CT's approved mask (the one PMPD reads); the previous approved
    version becomes superseded. Returns the version with the Dice of each automatic version
    of the CT against it (the correction effort, per label)."""
    with transaction.atomic():
        ImageSeries.objects.select_for_update().get(pk=version.ct_series_id)
        version = MaskVersion.objects.select_related("patient", "ct_series").get(pk=version.pk)
        if version.status == MaskVersion.Status.APPROVED:
            raise UserFacingError(f"Mask version {version.number} is already approved.")
        if version.tumour_voxels == 0:
            what_to_do = (
                "Its model segments the pancreas only: draw the tumour"
                if PANCREAS_ONLY_FLAG in version.flags
                else "Correct it"
            )
            raise UserFacingError(
                f"Mask version {version.number} has no tumour; PMPD needs one. {what_to_do} in "
                "the viewer and approve the edited version."
            )
        previous = version.ct_series.mask_versions.filter(status=MaskVersion.Status.APPROVED)
        superseded = list(previous.values_list("number", flat=True))
        previous.update(status=MaskVersion.Status.SUPERSEDED)
        approved_mask = read_mask(version)
        dice = {}
        automatic = version.ct_series.mask_versions.filter(source=MaskVersion.Source.AUTOMATIC)
        for other in automatic:
            dice[str(other.number)] = {
                "model": other.source_label,
                **dice_per_label(approved_mask, read_mask(other)),
            }
        version.status = MaskVersion.Status.APPROVED
        version.reviewed_by = user
        version.reviewed_at = timezone.now()
        version.review_note = note[:500]
        version.dice_vs_automatic = dice
        version.reviewing_by = None
        version.reviewing_since = None
        version.save()
        CanonicalVolume.objects.update_or_create(
            series=version.ct_series,
            kind=CanonicalVolume.Kind.MASK,
            defaults={
                "patient": version.patient,
                "file": version.file.name,
                "content_hash": version.content_hash,
                "geometry": version.geometry,
            },
        )
        audit(
            user,
            AuditAction.APPROVE_MASK_VERSION,
            patient=version.patient,
            label=str(version),
            mask_version=version.pk,
            number=version.number,
            superseded=superseded,
            content_hash=version.content_hash,
        )
    return version


def reject(version: MaskVersion, user, *, note: str = "") -> MaskVersion:
    """Mark a version that needs review as rejected (the approved one is kept)."""
    with transaction.atomic():
        version = (
            MaskVersion.objects.select_for_update().select_related("patient").get(pk=version.pk)
        )
        if version.status != MaskVersion.Status.NEEDS_REVIEW:
            raise UserFacingError(
                f"Mask version {version.number} is {version.get_status_display().lower()}; "
                "only a version that needs review can be rejected."
            )
        version.status = MaskVersion.Status.REJECTED
        version.reviewed_by = user
        version.reviewed_at = timezone.now()
        version.review_note = note[:500]
        version.reviewing_by = None
        version.reviewing_since = None
        version.save()
        audit(
            user,
            AuditAction.REJECT_MASK_VERSION,
            patient=version.patient,
            label=str(version),
            mask_version=version.pk,
            note=note[:500],
        )
    return version


def mark_reviewing(version: MaskVersion, user, *, reviewing: bool = True) -> None:
    """Say that ``user`` is reviewing ``version`` (the review queue shows the name and since
    when), or that they stopped; stopping leaves another reader's claim alone."""
    versions = MaskVersion.objects.filter(pk=version.pk)
    if reviewing:
        versions.update(reviewing_by=user, reviewing_since=timezone.now())
    else:
        versions.filter(reviewing_by=user).update(reviewing_by=None, reviewing_since=None)


def approved_mask_changed_at(patient) -> MaskVersion | None:
    """The approved version of the patient's selected CT when it is not the first mask the CT
    had: PMPD's cached inputs and earlier scores of this patient are then stale."""
    return (
        MaskVersion.objects.filter(
            patient=patient, ct_series__is_selected=True, status=MaskVersion.Status.APPROVED
        )
        .exclude(number=1)
        .select_related("reviewed_by")
        .first()
    )
