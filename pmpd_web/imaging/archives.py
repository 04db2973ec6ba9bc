"""Unpacking uploaded ZIP archives without trusting them.

Refused, with the entry named: entries whose path escapes the archive's folder (absolute
paths, drive letters, ``..``: "zip slip"), symbolic links, encrypted entries, more entries than
``max_files``, a total uncompressed size over ``max_total_bytes`` or an entry whose compression
ratio is over ``max_ratio`` (zip bombs), and an archive with no file at all. The sizes the
archive declares are checked first and the bytes actually inflated are counted again while
unpacking, so an archive that lies about its sizes is stopped too. Entries are written under
generated names (``000001``...); an entry's path is only ever a label (and the place the ingest
looks for a study ID). Operating-system clutter (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``,
``desktop.ini``) is left out.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import IngestError

CLUTTER_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
COPY_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int
    max_total_bytes: int
    max_ratio: float


@dataclass(frozen=True)
class Entry:
    """A file unpacked from an archive: ``name`` is its path inside the archive."""

    name: str
    path: Path


def is_clutter(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].lower() in CLUTTER_NAMES)


def safe_entry_name(name: str, *, archive: str) -> str:
    """The entry's path as a clean relative label, or IngestError if it would escape."""
    text = name.replace("\\", "/")
    path = PurePosixPath(text)
    if (
        text.startswith("/")
        or (len(text) > 1 and text[1] == ":")
        or any(part == ".." for part in path.parts)
        or "\x00" in text
    ):
        raise IngestError(
            archive,
            f"the entry {name!r} points outside the archive's folder (zip slip): refused",
        )
    return "/".join(part for part in path.parts if part not in ("", "."))


def extract_zip(path: Path, folder: Path, *, label: str, limits: ArchiveLimits) -> list[Entry]:
    """Unpack the ZIP at ``path`` into ``folder`` under generated names; see the module
    docstring for what is refused."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(label, f"not a readable ZIP archive ({exc})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not is_clutter(m.filename)]
        if not members:
            raise IngestError(label, "the ZIP archive is empty: it holds no file")
        if len(members) > limits.max_files:
            raise IngestError(
                label,
                f"the ZIP archive holds {len(members)} files, more than the limit of "
                f"{limits.max_files}: refused",
            )
        declared = 0
        for member in members:
            name = safe_entry_name(member.filename, archive=label)
            mode = member.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise IngestError(label, f"the entry {name!r} is a symbolic link: refused")
            if member.flag_bits & 0x1:
                raise IngestError(label, f"the entry {name!r} is encrypted: refused")
            ratio = member.file_size / max(member.compress_size, 1)
            if member.file_size > COPY_BLOCK and ratio > limits.max_ratio:
                raise IngestError(
                    label,
                    f"the entry {name!r} expands {ratio:.0f} times (limit {limits.max_ratio:.0f}):"
                    " refused as a zip bomb",
                )
            declared += member.file_size
        if declared > limits.max_total_bytes:
            raise IngestError(
                label,
                f"the ZIP archive expands to {declared} bytes, more than the limit of "
                f"{limits.max_total_bytes}: refused as a zip bomb",
            )
        entries = []
        total = 0
        for index, member in enumerate(members, start=1):
            name = safe_entry_name(member.filename, archive=label)
            target = folder / f"{index:06d}"
            written = 0
            try:
                with archive.open(member) as source, target.open("wb") as sink:
                    while block := source.read(COPY_BLOCK):
                        written += len(block)
                        total += len(block)
                        if written > member.file_size or total > limits.max_total_bytes:
                            raise IngestError(
                                label,
                                f"the entry {name!r} inflates beyond its declared size: "
                                "refused as a zip bomb",
                            )
                        sink.write(block)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise IngestError(label, f"the entry {name!r} cannot be read ({exc})") from None
            entries.append(Entry(name=name, path=target))
        return entries
