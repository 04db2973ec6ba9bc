"""The ingest job: from an upload's received files to de-identified DICOM studies, series and
instances, a DICOM SEG per mask and the canonical volumes the engine reads (the contract is in
``models``). All or nothing: every patient of the upload is read, checked, de-identified and
written to storage first; the database rows change in one transaction at the end, and any
problem leaves every patient's images as they were (what was written is deleted again).
Idempotent: unchanged series and masks (same de-identified UID, same content hash) are left
alone, so a repeated upload of the same files changes nothing.

Steps: materialise each received file in a scratch folder (chunks joined, SHA-256 checked,
ZIPs unpacked safely), sniff its content, give it a study ID (the patient of a per-patient
upload; else the file's declared study ID, a manifest row, or the first folder of its path
that is a study ID of the cohort), then per patient: read, de-identify, check, convert and
store, and finally commit.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import tempfile
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Exists, OuterRef
from pydicom.dataset import Dataset

from pmpd_web.accounts.audit import record as audit
from pmpd_web.cohorts.models import Cohort, Patient
from pmpd_web.jobs.runner import TRANSIENT_ERRORS, ProgressCallback, UserFacingError

from . import deid
from .archives import ArchiveLimits, extract_zip, is_clutter
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
from .models import CanonicalVolume, DicomInstance, ImageSeries, ImageUpload, ImagingStudy
from .models import UploadFile as UploadFileModel
from .sniff import SUFFIX, Kind, describe_unknown, sniff
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

log = logging.getLogger(__name__)

AUDIT_ACTION = "ingest_images"
COPY_BLOCK = 4 * 1024 * 1024
VOLUME_KINDS = {Kind.NIFTI, Kind.NIFTI_GZ, Kind.NRRD, Kind.METAIMAGE}


@dataclass(frozen=True)
class IngestOptions:
    """The settings the ingest runs under (README "Images")."""

    secret: str
    date_mode: str
    date_shift_max_days: int
    min_slices: int
    tolerance_mm: float
    direction_tolerance: float
    gzip_level: int
    archive_limits: ArchiveLimits
    work_dir: str | None

    @classmethod
    def from_settings(cls) -> IngestOptions:
        return cls(
            secret=settings.PMPD_DEID_SECRET,
            date_mode=settings.PMPD_DEID_DATES,
            date_shift_max_days=settings.PMPD_DEID_DATE_SHIFT_MAX_DAYS,
            min_slices=settings.PMPD_INGEST_MIN_SLICES,
            tolerance_mm=settings.PMPD_GRID_TOLERANCE_MM,
            direction_tolerance=settings.PMPD_DIRECTION_TOLERANCE,
            gzip_level=settings.PMPD_CANONICAL_GZIP_LEVEL,
            archive_limits=ArchiveLimits(
                max_files=settings.PMPD_ARCHIVE_MAX_FILES,
                max_total_bytes=settings.PMPD_ARCHIVE_MAX_BYTES,
                max_ratio=settings.PMPD_ARCHIVE_MAX_RATIO,
            ),
            work_dir=settings.PMPD_INGEST_WORK_DIR,
        )


@dataclass(eq=False)
class Item:
    """One file to ingest: an uploaded file or an entry of an uploaded ZIP."""

    upload_file: UploadFileModel
    label: str
    parts: tuple[str, ...]
    path: Path
    kind: Kind
    study_id: str = ""
    skipped: str = ""
    role: str = ""


class Failures:
    """Problems found so far, by uploaded file; any of them fails the whole upload."""

    def __init__(self) -> None:
        self.by_file: dict[int, list[str]] = defaultdict(list)

    def add(self, upload_file: UploadFileModel, message: str) -> None:
        self.by_file[upload_file.pk].append(message)

    def __bool__(self) -> bool:
        return bool(self.by_file)

    def messages(self) -> list[str]:
        return [m for messages in self.by_file.values() for m in messages]


class Staging:
    """Storage names written by this ingest: deleted again when it fails."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def save(self, name: str, content: File) -> str:
        saved = default_storage.save(name, content)
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


# ----------------------------------------------------------------------------------------------
# Materialising, sniffing, study IDs


def _name_parts(name: str) -> tuple[str, ...]:
    return tuple(part for part in name.split("/") if part)


def _linked(path: Path, kind: Kind, scratch: Path, counter: list[int]) -> Path:
    """``path`` under a scratch name with the suffix its readers expect for ``kind``."""
    suffix = SUFFIX.get(kind)
    if suffix is None or path.name.endswith(suffix):
        return path
    counter[0] += 1
    link = scratch / f"link-{counter[0]:06d}{suffix}"
    link.symlink_to(path.resolve())
    return link


def _local_file(upload_file: UploadFileModel, scratch: Path) -> Path:
    """The received file on local disk: its one chunk where the storage is local and no
    checksum is to be verified, else the chunks joined (and hashed) into the scratch folder."""
    import hashlib

    chunks = sorted(upload_file.chunks)
    expected = 0
    for offset, length, _ in chunks:
        if offset != expected:
            raise IngestError(upload_file.client_name, "the received chunks have a gap")
        expected += length
    if expected != upload_file.size_bytes:
        raise IngestError(
            upload_file.client_name,
            f"{expected} of {upload_file.size_bytes} bytes were received",
        )
    if len(chunks) == 1 and not upload_file.sha256:
        try:
            return Path(default_storage.path(chunks[0][2]))
        except NotImplementedError:
            pass
    target = scratch / f"file-{upload_file.pk}"
    digest = hashlib.sha256()
    with target.open("wb") as sink:
        for _, _, name in chunks:
            with default_storage.open(name, "rb") as source:
                while block := source.read(COPY_BLOCK):
                    digest.update(block)
                    sink.write(block)
    if upload_file.sha256 and digest.hexdigest() != upload_file.sha256.lower():
        raise IngestError(
            upload_file.client_name,
            "its SHA-256 does not match the one declared: the file changed or was damaged in "
            "transit; upload it again",
        )
    return target


def materialise(
    upload: ImageUpload, scratch: Path, options: IngestOptions, failures: Failures
) -> list[Item]:
    """Every received file (and ZIP entry) as an Item with its sniffed kind."""
    items: list[Item] = []
    counter = [0]
    for upload_file in upload.files.order_by("id"):
        label = upload_file.client_name
        parts = _name_parts(label)
        if is_clutter(label):
            items.append(
                Item(upload_file, label, parts, Path(), Kind.UNKNOWN, skipped="system clutter")
            )
            continue
        try:
            path = _local_file(upload_file, scratch)
            kind = sniff(path)
            if kind == Kind.ZIP:
                folder = scratch / f"zip-{upload_file.pk}"
                folder.mkdir()
                entries = extract_zip(path, folder, label=label, limits=options.archive_limits)
                for entry in entries:
                    entry_label = f"{label} › {entry.name}"
                    entry_kind = sniff(entry.path)
                    if entry_kind in (Kind.ZIP, Kind.TAR):
                        raise IngestError(entry_label, "an archive inside the archive: refused")
                    items.append(
                        Item(
                            upload_file,
                            entry_label,
                            (*parts[:-1], *_name_parts(entry.name)),
                            _linked(entry.path, entry_kind, scratch, counter),
                            entry_kind,
                        )
                    )
                continue
            if kind == Kind.TAR:
                raise IngestError(label, "a TAR archive: upload a ZIP archive or the folder itself")
            if kind == Kind.NIFTI_PAIR:
                raise IngestError(
                    label, "a NIfTI header/image pair (.hdr/.img): convert it to one .nii.gz file"
                )
            items.append(
                Item(upload_file, label, parts, _linked(path, kind, scratch, counter), kind)
            )
        except IngestError as exc:
            failures.add(upload_file, str(exc))
    return items


_METAIMAGE_DATA_FILE = re.compile(rb"^(\s*ElementDataFile\s*=\s*)(.*?)\s*$", re.MULTILINE)


def link_metaimage_data(items: list[Item], scratch: Path, failures: Failures) -> None:
    """Pair each MetaImage header that keeps its voxels in a separate file (MHD) with that file
    from the same folder of the upload, under scratch names (the header's reference is a
    label, never followed as a path)."""
    unknown = {
        (item.parts[:-1], item.parts[-1].lower()): item
        for item in items
        if item.kind == Kind.UNKNOWN and not item.skipped and item.parts
    }
    for index, item in enumerate(i for i in items if i.kind == Kind.METAIMAGE):
        header = item.path.read_bytes()[: 64 * 1024]
        match = _METAIMAGE_DATA_FILE.search(header)
        if match is None:
            failures.add(
                item.upload_file, f"{item.label}: a MetaImage header without ElementDataFile"
            )
            continue
        reference = match.group(2).decode("latin-1").strip()
        if reference.upper() == "LOCAL":
            continue
        if reference.upper().startswith("LIST") or "%" in reference:
            failures.add(
                item.upload_file,
                f"{item.label}: MetaImage data split over several files is not accepted; save "
                "it as one .mha file",
            )
            continue
        base = reference.replace("\\", "/").split("/")[-1].lower()
        data = unknown.get((item.parts[:-1], base))
        if data is None:
            failures.add(
                item.upload_file,
                f"{item.label}: its data file {base!r} is not in the upload beside it",
            )
            continue
        folder = scratch / f"mhd-{index}"
        folder.mkdir()
        (folder / "volume.raw").symlink_to(data.path.resolve())
        rewritten = _METAIMAGE_DATA_FILE.sub(
            lambda m: m.group(1) + b"volume.raw", item.path.read_bytes()
        )
        (folder / "volume.mhd").write_bytes(rewritten)
        item.path = folder / "volume.mhd"
        data.skipped = f"voxel data of {item.label}"


def _read_manifest(item: Item) -> list[tuple[tuple[str, ...], str]]:
    text = item.path.read_bytes().decode("utf-8-sig", errors="replace")
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample.splitlines()[0], delimiters=",;\t")
    except (csv.Error, IndexError):
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    file_column = next(
        columns[c] for c in ("file", "path", "filename", "file_name") if c in columns
    )
    rows = []
    for row in reader:
        path = (row.get(file_column) or "").strip()
        study_id = (row.get(columns["study_id"]) or "").strip()
        if path and study_id:
            rows.append((_name_parts(path.replace("\\", "/")), study_id))
    return rows


def _manifest_study_id(parts: tuple[str, ...], rows: list[tuple[tuple[str, ...], str]]) -> str:
    """The study ID of the longest manifest path that names this file (its trailing path) or
    one of its folders."""
    best, best_length = "", 0
    folders = parts[:-1]
    for row_parts, study_id in rows:
        n = len(row_parts)
        if not n or n > len(parts) or n <= best_length:
            continue
        if parts[-n:] == row_parts or any(
            folders[i : i + n] == row_parts for i in range(len(folders) - n + 1)
        ):
            best, best_length = study_id, n
    return best


def assign_study_ids(upload: ImageUpload, items: list[Item], failures: Failures) -> None:
    """Per-patient upload: its patient. Bulk: the declared study ID, else a manifest row, else
    the first folder of the path named after a patient's study ID."""
    study_ids = set(
        Patient.objects.filter(cohort_id=upload.cohort_id).values_list("study_id", flat=True)
    )
    by_lower = defaultdict(list)
    for study_id in study_ids:
        by_lower[study_id.lower()].append(study_id)
    rows: list[tuple[tuple[str, ...], str]] = []
    for item in items:
        if item.kind == Kind.MANIFEST:
            item.skipped = "manifest"
            if upload.patient_id is None:
                rows.extend(_read_manifest(item))
    for item in items:
        if item.skipped:
            continue
        if upload.patient_id is not None:
            item.study_id = upload.patient.study_id
            continue
        study_id = item.upload_file.study_id or _manifest_study_id(item.parts, rows)
        if not study_id:
            for folder in item.parts[:-1]:
                if folder in study_ids:
                    study_id = folder
                    break
                if len(by_lower.get(folder.lower(), [])) == 1:
                    study_id = by_lower[folder.lower()][0]
                    break
        if not study_id:
            failures.add(
                item.upload_file,
                f"{item.label}: no study ID: put it in a folder named after the patient's study "
                "ID, list it in a manifest CSV (columns file, study_id), or upload it from the "
                "patient's page",
            )
        elif study_id not in study_ids:
            failures.add(
                item.upload_file,
                f"{item.label}: study ID {study_id!r} is not a patient of this cohort (import the "
                "clinical table first)",
            )
        else:
            item.study_id = study_id


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
    hu: np.ndarray
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
    mask: np.ndarray
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
    _write_outputs(
        patient, outputs, masks, options=options, staging=staging, pool=pool, scratch=scratch
    )
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
    pool: ThreadPoolExecutor,
    scratch: Path,
) -> None:
    """Store the new de-identified instances, SEGs and canonical volumes. The NIfTI volumes are
    compressed in worker threads (zlib releases the GIL) while the DICOM files are encoded."""
    folder = _storage_folder(patient)
    pending: list[tuple[Future, str, Any, str]] = []

    def nifti(array: np.ndarray, grid: Grid, target: Path) -> Path:
        write_nifti(array, grid, target, compression_level=options.gzip_level)
        return target

    def submit(array: np.ndarray, grid: Grid, name: str, owner: Any) -> None:
        scratch_path = scratch / f"out-{patient.pk}-{len(pending)}.nii.gz"
        future = pool.submit(nifti, array, grid, scratch_path)
        pending.append((future, name, owner, "volume_name"))

    for output in outputs:
        if output.unchanged:
            continue
        series_folder = f"{folder}/{output.series_uid}"
        submit(output.hu, output.grid, f"{series_folder}/ct.nii.gz", output)
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
        submit(mask.mask, mask.grid, f"{series_folder}/mask.nii.gz", mask)
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
    for future, name, owner, attribute in pending:
        path = future.result()
        with _ScratchFile(open(path, "rb"), name=str(path)) as content:
            setattr(owner, attribute, staging.save(name, content))


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
    UploadFileModel.objects.bulk_update(
        updates, ["status", "error", "detected_kind"], batch_size=500
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
    staging = Staging()
    failures = Failures()
    items: list[Item] = []
    transient = False
    try:
        with (
            tempfile.TemporaryDirectory(dir=options.work_dir, prefix="pmpd-ingest-") as folder,
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
            summary = _commit(upload, plans, items)
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


def _commit(upload: ImageUpload, plans: list[PatientPlan], items: list[Item]) -> dict[str, Any]:
    totals: dict[str, int] = defaultdict(int)
    per_patient = {}
    with transaction.atomic():
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
