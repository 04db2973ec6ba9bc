"""Put each uploaded mask (a volume or a DICOM SEG) on the CT series it belongs to: a CT of
the same upload first, then one already stored."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pmpd_web.cohorts.models import Patient

from ..dicom_series import DicomFile, referenced_series, seg_to_canonical
from ..errors import IngestError
from ..intake import IngestOptions, Item
from ..models import ImageSeries, ImageUpload
from ..volumes import Grid, align_to_grid, canonical_mask, content_hash
from .outputs import CtOutput, MaskOutput, stored_sources


def match_masks(
    patient: Patient,
    *,
    outputs: list[CtOutput],
    existing: dict[str, ImageSeries],
    mask_volumes: list,
    seg_files: list[tuple[Item, DicomFile]],
    upload: ImageUpload,
    options: IngestOptions,
    problems: list,
    pool: ThreadPoolExecutor,
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
            source_uids = [str(ds.SOPInstanceUID) for ds in stored_sources(target)]
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
        if isinstance(mask.target, ImageSeries):
            mask.content_hash = content_hash(mask.mask, mask.grid)
            stored = next((v for v in mask.target.volumes.all() if v.kind == "mask"), None)
            mask.unchanged = stored is not None and stored.content_hash == mask.content_hash
        elif mask.target.unchanged:
            mask.content_hash = content_hash(mask.mask, mask.grid)
            stored = next((v for v in mask.target.existing.volumes.all() if v.kind == "mask"), None)
            mask.unchanged = stored is not None and stored.content_hash == mask.content_hash
        else:
            # On a CT stored anew the mask is new too: its hash (for its SEG's UID and its
            # rows) is computed in the pool while the CT's instances are written.
            mask.hashing = pool.submit(content_hash, mask.mask, mask.grid)
    return masks
