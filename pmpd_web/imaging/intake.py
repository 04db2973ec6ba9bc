"""What an upload holds, before any patient's images are read: each received file on local
disk (chunks joined and checked, ZIPs unpacked safely), its kind sniffed from its content, and
its study ID (the patient of a per-patient upload; else a study ID declared with the file, a
manifest row, or the first folder of its path that is a study ID of the cohort).

Problems are collected per uploaded file (``Failures``); the ingest fails the upload on any.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom
from django.conf import settings
from django.core.files.storage import default_storage

from pmpd_web.cohorts.models import Patient

from .archives import ArchiveLimits, extract_zip, is_clutter
from .errors import IngestError
from .models import ImageUpload
from .models import UploadFile as UploadFileModel
from .sniff import SUFFIX, Kind, describe_unknown, sniff

COPY_BLOCK = 4 * 1024 * 1024


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
        if message not in self.by_file[upload_file.pk]:  # each reason told once
            self.by_file[upload_file.pk].append(message)

    def __bool__(self) -> bool:
        return bool(self.by_file)

    def messages(self) -> list[str]:
        return [m for messages in self.by_file.values() for m in messages]


# ----------------------------------------------------------------------------------------------
# Materialising, sniffing, study IDs


def _name_parts(name: str) -> tuple[str, ...]:
    return tuple(part for part in name.split("/") if part)


def _linked(path: Path, kind: Kind, scratch: Path, counter: list[int]) -> Path:
    """``path`` under a scratch name with the suffix its readers expect for ``kind``. A DICOM
    file is read where it lies: pydicom, and GDCM (chosen explicitly), read any name, and a
    link per slice cost a create and a delete for each of a series' hundreds of files."""
    suffix = SUFFIX.get(kind)
    if kind == Kind.DICOM or suffix is None or path.name.endswith(suffix):
        return path
    counter[0] += 1
    link = scratch / f"link-{counter[0]:06d}{suffix}"
    link.symlink_to(path.resolve())
    return link


def _local_file(upload_file: UploadFileModel, scratch: Path) -> Path:
    """The received file on local disk: its one chunk where the storage is local and no
    checksum is to be verified, else the chunks joined (and hashed) into the scratch folder."""

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


# Names that claim an image: a file so named whose content is not one fails the upload.
IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha")
IMAGE_SUFFIXES += (".mhd",)


def use_dicomdir(items: list[Item]) -> None:
    """A CD/DVD export's DICOMDIR is the index of its files: every file it lists is DICOM (read
    as such even without the Part 10 preamble), and the DICOMDIR itself is skipped with a note
    saying what it lists and what of that is missing from the upload."""
    by_parts = {
        tuple(part.upper() for part in item.parts): item
        for item in items
        if item.parts and not item.skipped
    }
    for item in items:
        if item.kind != Kind.DICOM or item.skipped or not item.parts:
            continue
        if item.parts[-1].upper() != "DICOMDIR":
            continue
        try:
            index = pydicom.dcmread(item.path, force=True)
            file_ids = [
                record.ReferencedFileID
                for record in index.DirectoryRecordSequence
                if "ReferencedFileID" in record
            ]
        except Exception as exc:  # pydicom raises many kinds on a damaged index
            item.skipped = (
                f"a DICOMDIR index that cannot be read ({type(exc).__name__}); its files are "
                "read one by one"
            )
            continue
        folder = tuple(part.upper() for part in item.parts[:-1])
        missing = 0
        for file_id in file_ids:
            names = [file_id] if isinstance(file_id, str) else list(file_id)
            listed = by_parts.get(folder + tuple(str(name).upper() for name in names))
            if listed is None:
                missing += 1
            elif listed.kind == Kind.UNKNOWN:
                listed.kind = Kind.DICOM
        note = f"the DICOMDIR index of a CD/DVD export ({len(file_ids)} files listed"
        note += f", {missing} of them not in the upload)" if missing else ")"
        item.skipped = note


def skip_non_images(items: list[Item]) -> None:
    """Files that are not images at all (a README, an autorun.inf, a zero-byte marker) are
    skipped with a note; an unreadable file whose name claims an image stays, to fail."""
    for item in items:
        if item.kind != Kind.UNKNOWN or item.skipped:
            continue
        name = item.parts[-1].lower() if item.parts else ""
        if item.path.stat().st_size == 0:
            item.skipped = "an empty file (a marker?), not an image"
        elif not name.endswith(IMAGE_SUFFIXES):
            item.skipped = f"not an image: {describe_unknown(item.path)}"


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
