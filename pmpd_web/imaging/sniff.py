"""What an uploaded file is, from its content: never from its name or extension.

Rules (README "Images"):

* DICOM: the ``DICM`` marker at byte 128 (Part 10 file), or, without the preamble, a first
  element of group 0002 or 0008 in little endian;
* NIfTI: a header of 348 bytes with the magic ``n+1`` (NIfTI-1) or of 540 bytes with ``n+2``
  (NIfTI-2), plain or gzip-compressed (the gzip stream is opened and its header checked);
  header/image pairs (``ni1``) are recognised only to be refused;
* NRRD: the ``NRRD000x`` magic; MetaImage (MHA/MHD): a text header starting with its keys
  (``ObjectType``, ``NDims``...);
* ZIP: a local file header or an empty archive's end record; TAR is recognised to be refused;
* manifest: UTF-8 text whose first line names the columns ``study_id`` and ``file``.

Anything else is ``UNKNOWN`` (a MetaImage header's separate data file is one, until the
header that names it claims it).
"""

from __future__ import annotations

import enum
import gzip
import re
import zlib
from pathlib import Path


class Kind(enum.StrEnum):
    DICOM = "dicom"
    NIFTI = "nifti"
    NIFTI_GZ = "nifti_gz"
    NIFTI_PAIR = "nifti_pair"
    NRRD = "nrrd"
    METAIMAGE = "metaimage"
    ZIP = "zip"
    TAR = "tar"
    MANIFEST = "manifest"
    UNKNOWN = "unknown"


# The extension given to a sniffed file's scratch copy, so that readers pick the right format.
SUFFIX = {
    Kind.DICOM: ".dcm",
    Kind.NIFTI: ".nii",
    Kind.NIFTI_GZ: ".nii.gz",
    Kind.NRRD: ".nrrd",
    Kind.METAIMAGE: ".mha",
    Kind.ZIP: ".zip",
}
MANIFEST_MAX_BYTES = 10 * 1024 * 1024
_METAIMAGE_START = re.compile(
    rb"^\s*(ObjectType|NDims|ObjectSubType|Comment|TransformType|DimSize)\s*=", re.IGNORECASE
)
_MANIFEST_FILE_COLUMNS = {"file", "path", "filename", "file_name"}


def _nifti_kind(head: bytes) -> Kind | None:
    if len(head) >= 348:
        for order in ("<", ">"):
            if int.from_bytes(head[0:4], "little" if order == "<" else "big") == 348:
                magic = head[344:348]
                if magic == b"n+1\x00":
                    return Kind.NIFTI
                if magic == b"ni1\x00":
                    return Kind.NIFTI_PAIR
    if len(head) >= 12:
        for byteorder in ("little", "big"):
            if int.from_bytes(head[0:4], byteorder) == 540 and head[4:8] == b"n+2\x00":
                return Kind.NIFTI
    return None


def _looks_like_dicom_without_preamble(head: bytes) -> bool:
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    # Explicit VR: two upper-case letters follow the tag; implicit VR: a 4-byte length.
    return (
        group in (0x0002, 0x0008)
        and element < 0x0100
        and (
            head[4:6].isalpha()
            and head[4:6].isupper()
            or int.from_bytes(head[4:8], "little") < 4096
        )
    )


def _is_manifest(path: Path, head: bytes) -> bool:
    if path.stat().st_size > MANIFEST_MAX_BYTES:
        return False
    first_line = head.split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf").strip()
    try:
        text = first_line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    columns = {c.strip().strip('"').lower() for c in re.split(r"[,;\t]", text)}
    return "study_id" in columns and bool(columns & _MANIFEST_FILE_COLUMNS)


def sniff(path: Path) -> Kind:
    """The kind of the file at ``path``, from its first bytes."""
    with path.open("rb") as handle:
        head = handle.read(1024)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return Kind.DICOM
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return Kind.ZIP
    if head.startswith(b"NRRD000"):
        return Kind.NRRD
    if len(head) >= 262 and head[257:262] == b"ustar":
        return Kind.TAR
    nifti = _nifti_kind(head)
    if nifti is not None:
        return nifti
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as handle:
                inner = handle.read(1024)
        except (OSError, EOFError, zlib.error):
            return Kind.UNKNOWN
        if _nifti_kind(inner) == Kind.NIFTI:
            return Kind.NIFTI_GZ
        if len(inner) >= 262 and inner[257:262] == b"ustar":
            return Kind.TAR
        return Kind.UNKNOWN
    if _METAIMAGE_START.match(head):
        return Kind.METAIMAGE
    if _looks_like_dicom_without_preamble(head):
        return Kind.DICOM
    if _is_manifest(path, head):
        return Kind.MANIFEST
    return Kind.UNKNOWN


def describe_unknown(path: Path) -> str:
    """Why an unknown file was not recognised, for the message to the coordinator."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if not head:
        return "the file is empty"
    if head[:2] == b"\x1f\x8b":
        return "a gzip-compressed file that is not a NIfTI image"
    return (
        "not a format PMPD reads (no DICOM 'DICM' marker, and not NIfTI, NRRD, MetaImage, "
        "ZIP or a manifest CSV)"
    )
