"""DICOMweb as a protocol, without Django: QIDO-RS query parameters and matching (PS3.18 8.3.4,
PS3.4 C.2.2.2), content negotiation of WADO-RS answers (PS3.18 8.7), multipart/related bodies,
and where an instance's frames lie in its file (PS3.5 A.4 and 8.2: native and encapsulated pixel
data). The views in ``dicomweb`` load rows, check permissions and call these.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO, NamedTuple

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.encaps import get_frame
from pydicom.uid import UID

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
APPLICATION_DICOM = "application/dicom"
PIXEL_DATA = "7FE00010"
RETRIEVE_URL = "00081190"
PIXEL_DATA_TAGS = frozenset({(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)})
NUMERIC_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"})

# The media type of each compressed transfer syntax (PS3.18 table 8.7.3-2), and the transfer
# syntax a media type means when the client names none.
MEDIA_TYPE_OF_TRANSFER_SYNTAX = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}
DEFAULT_TRANSFER_SYNTAX = {
    OCTET_STREAM: EXPLICIT_VR_LITTLE_ENDIAN,
    APPLICATION_DICOM: EXPLICIT_VR_LITTLE_ENDIAN,
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jphc": "1.2.840.10008.1.2.4.201",
}


class DicomWebError(Exception):
    """A refusal with its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------------------------
# QIDO-RS


@dataclass
class Query:
    filters: dict[str, str]
    include: set[str]
    include_all: bool
    limit: int
    offset: int
    limit_capped: bool = False  # the client asked for more than the server answers at once
    fuzzy_asked: bool = False  # fuzzymatching=true, which is not offered

    def wanted(self) -> set[str]:
        """Attributes to answer beside the defaults: included ones and the matched ones."""
        return self.include | set(self.filters)


def tag_key(name: str) -> str:
    """The DICOM JSON key ("00100020") of a keyword or a tag written in hexadecimal."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise DicomWebError(400, f"Unknown attribute {name!r}.")
    return f"{tag:08X}"


def _whole_number(params: Mapping[str, Sequence[str]], name: str, default: int) -> int:
    raw = (params.get(name) or [""])[-1]
    if raw == "":
        return default
    if not raw.isdigit():
        raise DicomWebError(400, f"{name} must be a whole number.")
    return int(raw)


def parse_query(params: Mapping[str, Sequence[str]], *, max_limit: int) -> Query:
    """Filters by keyword or tag (``PatientID=...``, ``00100020=...``), ``includefield``
    (comma-separated or repeated, ``all``), ``limit`` (at most ``max_limit``), ``offset``.
    ``fuzzymatching`` is not offered (asking for it gets a warning); an empty filter matches
    everything."""
    filters: dict[str, str] = {}
    include: set[str] = set()
    include_all = False
    for name, values in params.items():
        if name in ("limit", "offset", "fuzzymatching") or name.startswith("_"):
            continue
        if name == "includefield":
            for value in values:
                for item in filter(None, (part.strip() for part in value.split(","))):
                    if item == "all":
                        include_all = True
                    else:
                        include.add(tag_key(item))
            continue
        if "." in name:
            raise DicomWebError(400, "Matching on attributes inside sequences is not supported.")
        if values and values[-1] != "":
            filters[tag_key(name)] = values[-1]
    asked = _whole_number(params, "limit", max_limit)
    return Query(
        filters=filters,
        include=include,
        include_all=include_all,
        limit=min(asked, max_limit),
        offset=_whole_number(params, "offset", 0),
        limit_capped=asked > max_limit,
        fuzzy_asked=(params.get("fuzzymatching") or ["false"])[-1].lower() == "true",
    )


def search_warnings(query: Query, *, truncated: bool, service: str) -> list[str]:
    """The Warning header values of a search answer (PS3.18 8.3.4.5 and 8.3.4.6): results cut
    at the server's maximum, and fuzzy matching asked for but not done."""
    warnings = []
    if query.limit_capped or truncated:
        warnings.append(
            f'299 {service}: "The number of results exceeded the maximum supported by the '
            f'server ({query.limit}). Additional results can be requested."'
        )
    if query.fuzzy_asked:
        warnings.append(
            f'299 {service}: "The fuzzymatching parameter is not supported. Only literal '
            'matching has been performed."'
        )
    return warnings


def vr_of(key: str, element: dict | None = None) -> str | None:
    if element and "vr" in element:
        return element["vr"]
    try:
        return dictionary_VR(int(key, 16))
    except KeyError:
        return None


def _wildcard(pattern: str) -> str:
    return "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )


def uid_list(value: str) -> list[str]:
    """UIDs as a query gives several: joined by backslashes (OHIF) or commas."""
    return [uid for uid in re.split(r"[\\,]", value) if uid]


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def matches(dataset: dict, key: str, query: str) -> bool:
    """Whether the DICOM JSON ``dataset`` matches ``query`` on attribute ``key``: UID lists,
    date and time ranges, wildcards (case-insensitive for person names), numbers, and
    backslash-separated alternatives."""
    found = dataset.get(key)
    vr = vr_of(key, found)
    raw_values = (found or {}).get("Value", [])
    if vr == "PN":
        values = [v.get("Alphabetic", "") if isinstance(v, dict) else str(v) for v in raw_values]
    else:
        values = ["" if v is None else str(v) for v in raw_values]
    if vr == "UI":
        wanted = set(uid_list(query))
        return any(value in wanted for value in values)
    if vr in ("DA", "TM", "DT") and "-" in query:
        low, high = query.split("-", 1)
        return any((not low or v >= low) and (not high or v[: len(high)] <= high) for v in values)
    alternatives = query.split("\\")
    if vr in NUMERIC_VRS:
        try:
            numbers = {float(alternative) for alternative in alternatives}
            return any(float(value) in numbers for value in values)
        except ValueError:
            return False
    flags = re.IGNORECASE if vr == "PN" else 0
    patterns = [re.compile(_wildcard(alternative), flags) for alternative in alternatives]
    return any(pattern.fullmatch(value) for pattern in patterns for value in values)


def element(vr: str, value=None) -> dict:
    """A DICOM JSON element; an empty one for a missing value."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": value if isinstance(value, list) else [value]}


def complete(dataset: dict, headers: dict, keys: Iterable[str]) -> None:
    """Add ``keys`` to ``dataset`` from the stored ``headers``; absent there, empty."""
    for key in keys:
        if key in dataset:
            continue
        if key in headers:
            dataset[key] = headers[key]
        elif vr := vr_of(key):
            dataset[key] = {"vr": vr}


# ----------------------------------------------------------------------------------------------
# WADO-RS: content negotiation and multipart/related


class Offer(NamedTuple):
    """One way to send something: part media type, transfer syntax, whether pydicom decodes."""

    media: str
    transfer_syntax: str
    decode: bool = False


class Accepted(NamedTuple):
    """One entry of an Accept header: the media type of the body or of its parts, the
    transfer syntax asked for (None: the media type's default), and whether it asks for a
    single-part body (``application/octet-stream``) rather than ``multipart/related``."""

    media: str
    transfer_syntax: str | None
    single_part: bool = False


JSON_MEDIA_TYPES = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})


def accepted_types(header: str) -> list[Accepted]:
    """The entries of an Accept header; ``multipart/related; type=...`` gives its part type.
    No header accepts anything, as multipart."""
    entries = []
    for entry in filter(None, (part.strip() for part in header.split(","))):
        media, *parameters = (item.strip() for item in entry.split(";"))
        values = {}
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            values[name.strip().lower()] = value.strip().strip('"')
        if values.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        media = media.lower()
        single_part = media != "multipart/related" and media != "*/*"
        if media == "multipart/related":
            media = values.get("type", "*/*").lower()
        entries.append(Accepted(media, values.get("transfer-syntax"), single_part))
    return entries or [Accepted("*/*", None)]


def accepts_json(header: str) -> bool:
    """Whether an Accept header takes DICOM JSON (searches and metadata answer nothing else)."""
    return any(
        entry.single_part or entry.media == "*/*"
        for entry in accepted_types(header)
        if entry.media in JSON_MEDIA_TYPES
    )


def acceptable(accepted: list[Accepted], media: str, transfer_syntax: str) -> bool:
    """Whether parts of ``media`` in ``transfer_syntax`` suit one of the ``accepted`` entries;
    an entry without a transfer syntax means its media type's default (PS3.18 8.7.3.5)."""
    return any(_suits(entry, media, transfer_syntax) for entry in accepted)


def _suits(entry: Accepted, media: str, transfer_syntax: str) -> bool:
    family = entry.media.endswith("/*") and media.startswith(entry.media[:-1])
    if entry.media not in ("*/*", media) and not family:
        return False
    if entry.transfer_syntax in ("*", transfer_syntax):
        return True
    return entry.transfer_syntax is None and (
        entry.media == "*/*" or DEFAULT_TRANSFER_SYNTAX.get(media) == transfer_syntax
    )


def choose(accepted: list[Accepted], offers: Iterable[Offer]) -> Offer | None:
    """The first of ``offers`` (the server's order of preference) that the client accepts
    as parts of a multipart/related body."""
    multipart_entries = [entry for entry in accepted if not entry.single_part]
    return next(
        (o for o in offers if acceptable(multipart_entries, o.media, o.transfer_syntax)), None
    )


def choose_single_part(accepted: list[Accepted], offers: Iterable[Offer]) -> Offer | None:
    """The first of ``offers`` that the client accepts as a single-part body."""
    single_entries = [entry for entry in accepted if entry.single_part]
    return next((o for o in offers if acceptable(single_entries, o.media, o.transfer_syntax)), None)


def multipart(boundary: str, parts: Iterable[tuple[str, bytes | Iterable[bytes]]]):
    """The chunks of a multipart/related body; each part is (its Content-Type, its bytes or
    chunks). Part headers are what OHIF's parser looks for: ``--boundary``, one
    ``Content-Type:`` line, a blank line."""
    for position, (content_type, body) in enumerate(parts):
        separator = "\r\n" if position else ""
        yield f"{separator}--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        if isinstance(body, bytes):
            yield body
        else:
            yield from body
    yield f"\r\n--{boundary}--\r\n".encode()


# ----------------------------------------------------------------------------------------------
# Frames in a file


@dataclass(frozen=True)
class PixelLayout:
    """Where an instance's pixel data lies in its file and how its frames are laid out.

    ``value_offset`` is None where the file must be decoded whole (deflated or big endian).
    """

    transfer_syntax: str
    value_offset: int | None
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    number_of_frames: int
    extended_offsets: tuple[bytes, bytes] | None = None

    @property
    def encapsulated(self) -> bool:
        return UID(self.transfer_syntax).is_encapsulated

    @property
    def frame_bits(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated

    @property
    def native_bytes(self) -> int:
        """The length of all native pixel data (single-bit frames are packed end to end)."""
        return (self.number_of_frames * self.frame_bits + 7) // 8

    def offers(self) -> list[Offer]:
        """How its frames can be sent, in the server's order of preference: as stored, then
        decoded to native pixels (explicit VR little endian) for clients that need that."""
        if self.value_offset is None:
            return [Offer(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, decode=True)]
        if not self.encapsulated:
            return [Offer(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)]
        stored = self.transfer_syntax
        offers = [Offer(OCTET_STREAM, stored), Offer(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, True)]
        if media := MEDIA_TYPE_OF_TRANSFER_SYNTAX.get(stored):
            offers.insert(0, Offer(media, stored))
        return offers


def read_pixel_layout(handle: BinaryIO) -> PixelLayout | None:
    """The layout of the DICOM file open in ``handle``; None when it has no pixel data.

    Reads the headers only: pydicom stops right before the pixel data element, whose own
    header (tag, VR, length) gives where its value starts."""
    ds = pydicom.dcmread(handle, stop_before_pixels=True)
    if "Rows" not in ds:
        return None
    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    value_offset = None
    if transfer_syntax.is_little_endian and not transfer_syntax.is_deflated:
        start = handle.tell()
        header = handle.read(12)
        if len(header) < 8 or struct.unpack("<HH", header[:4]) not in PIXEL_DATA_TAGS:
            return None
        # Implicit VR: tag and 4-byte length. Explicit VR (OB, OW, OF, OD): tag, VR, 2 reserved
        # bytes, 4-byte length.
        value_offset = start + (8 if transfer_syntax.is_implicit_VR else 12)
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths))
    return PixelLayout(
        transfer_syntax=str(transfer_syntax),
        value_offset=value_offset,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
        bits_allocated=int(ds.BitsAllocated),
        number_of_frames=int(ds.get("NumberOfFrames") or 1),
        extended_offsets=extended,
    )


def native_frame(handle: BinaryIO, layout: PixelLayout, index: int) -> bytes:
    """Frame ``index`` (0-based) of native pixel data: one seek and one read. Single-bit frames
    (binary SEG) that do not start on a byte boundary are shifted onto one."""
    bits = layout.frame_bits
    first_byte, shift = divmod(index * bits, 8)
    handle.seek(layout.value_offset + first_byte)
    if shift == 0:
        return handle.read((bits + 7) // 8)
    chunk = np.frombuffer(handle.read((shift + bits + 7) // 8), dtype=np.uint8)
    frame_bits = np.unpackbits(chunk, bitorder="little")[shift : shift + bits]
    return np.packbits(frame_bits, bitorder="little").tobytes()


def stored_frames(handle: BinaryIO, layout: PixelLayout, indices: Iterable[int]) -> Iterator[bytes]:
    """Frames as stored: native bytes, or the fragments of an encapsulated frame."""
    for index in indices:
        if layout.encapsulated:
            handle.seek(layout.value_offset)
            yield get_frame(
                handle,
                index,
                number_of_frames=layout.number_of_frames,
                extended_offsets=layout.extended_offsets,
            )
        else:
            yield native_frame(handle, layout, index)


def _native_bytes(frame: np.ndarray, bits_allocated: int) -> bytes:
    if bits_allocated == 1:
        return np.packbits(frame.astype(np.uint8).ravel(), bitorder="little").tobytes()
    return frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes()


def decoded_frames(handle: BinaryIO, layout: PixelLayout, indices: Iterable[int]) -> list[bytes]:
    """Frames decoded by pydicom into native little endian bytes: for deflated or big endian
    files, and for compressed frames a client cannot take as they are."""
    ds = pydicom.dcmread(handle)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom has no decoder installed for this transfer syntax
        raise DicomWebError(
            406, f"Frames in {layout.transfer_syntax} cannot be decoded here: {exc}"
        ) from exc
    if layout.number_of_frames == 1:
        pixels = pixels[np.newaxis]
    return [_native_bytes(pixels[index], layout.bits_allocated) for index in indices]


def as_explicit_little_endian(handle: BinaryIO) -> bytes:
    """The DICOM file open in ``handle`` in explicit VR little endian, decompressed if it is
    compressed: for clients that cannot take it as stored."""
    ds = pydicom.dcmread(handle)
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # pydicom has no decoder installed for this transfer syntax
        raise DicomWebError(406, f"This instance cannot be decompressed here: {exc}") from exc
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    buffer = BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()
