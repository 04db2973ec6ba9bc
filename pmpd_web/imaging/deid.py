"""De-identification of DICOM headers, following DICOM PS3.15 Annex E.

The profile is the Basic Application Level Confidentiality Profile (code 113100) with the
Retain Longitudinal Temporal Information with Modified Dates Option (113107):

* the attributes of Table E.1-1 that identify the patient, the people involved, the
  institution, the devices or the request are removed (X) or emptied (Z), or given a dummy
  value (D) where a value is required (``ACTIONS``); patient name and ID become the study ID
  (at any depth);
* every private attribute is removed, and so are curves (50xx) and overlays (60xx, which may
  carry burned-in text), and public attributes unknown to the data dictionary;
* as safety nets beyond the table, every person name (PN), free text (LT, ST, UT) and
  application entity title (AE), at any depth, is removed;
* every UID that is not a registered DICOM UID (SOP classes, transfer syntaxes, coding schemes
  stay) is remapped with a keyed hash: HMAC-SHA256 of the study ID and the UID under the site
  secret, written as ``2.25.<128-bit integer>``. The same UID of the same patient always maps to
  the same new UID (series, frame of reference and references between objects stay
  consistent), other patients' and other sites' mappings differ, and nobody without the secret
  can map back;
* dates (DA, DT, at any depth): ``date_mode="shift"`` moves every date of a patient back by the
  same keyed number of days (1..``date_shift_max_days``; intervals between a patient's studies
  are kept), ``"year"`` keeps the year only (1 January). Times of day are kept; time-zone
  offsets are removed. The patient's birth date is emptied in both modes;
* PatientIdentityRemoved is YES, DeidentificationMethod and DeidentificationMethodCodeSequence
  (113100, 113107) say how, LongitudinalTemporalInformationModified is MODIFIED.

Pixel data are not touched: series whose pixels carry burned-in annotation are refused by the
ingest before they get here. No Django import: this module is tested on its own.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

DATE_MODES = ("shift", "year")
# Roots of UIDs that name standards, not patients: DICOM's own (SOP classes, transfer syntaxes,
# well-known frames of reference) and HL7's coding systems (CodingSchemeUID).
REGISTERED_UID_ROOTS = ("1.2.840.10008.", "2.16.840.1.113883.")
METHOD = (
    "PS3.15 E Basic Application Confidentiality Profile",
    "Retain Longitudinal Temporal Info Modified Dates",
    "PMPD platform de-identification 1",
)
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
DUMMY = "DEIDENTIFIED"
# Dummy values (action D) that are valid in their VR; D on a VR absent here is handled by
# ``effective_action``.
_DUMMIES = {"AS": "000Y", "IS": "0", "DS": "0"}
_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "UC": 64, "PN": 64}
_TEXT_VRS = {"AE", "AS", "CS", "DS", "IS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
_STRING_VRS |= {"UR", "UT"}
TABLE_FILE = Path(__file__).with_name("data") / "ps3_15_table_e1_1.csv"


@dataclass(frozen=True)
class TableRow:
    """One attribute of PS3.15 Table E.1-1 (``TABLE_FILE``, whose header names its edition)."""

    tag: int
    keyword: str
    name: str
    basic_profile: str
    retain_long_modified_dates: str


def load_table(path: Path = TABLE_FILE) -> list[TableRow]:
    """The rows of Table E.1-1 with a single tag (the repeating curve and overlay groups are
    removed by group in ``_clean``)."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(line for line in handle if not line.startswith("#"))
        return [
            TableRow(
                tag=int(row["tag"], 16),
                keyword=row["keyword"],
                name=row["name"],
                basic_profile=row["basic_profile"],
                retain_long_modified_dates=row["retain_long_modified_dates"],
            )
            for row in reader
            if "x" not in row["tag"]
        ]


def effective_action(row: TableRow, vr: str | None) -> str:
    """What the platform does with an attribute of the table, as one code: X remove, Z empty,
    D dummy, U new UID, C clean (dates shifted: times of day are kept, the shift being whole
    days), K keep.

    The Retain Longitudinal Temporal Information with Modified Dates Option's C overrides the
    basic profile. Combinations take the choice that is valid in every IOD and carries nothing:
    X/Z, Z/D and X/Z/D empty the attribute (a Type 2 attribute must stay, empty); X/D removes
    it; X/Z/U* keeps the sequence with its UIDs replaced. D on a sequence empties it, on a UID
    replaces it, on a value that has no meaningful dummy (bytes, URLs, unknown VR) removes it.
    """
    if row.retain_long_modified_dates == "C" and vr in ("DA", "DT", "TM"):
        return "C"
    action = {"X/Z": "Z", "Z/D": "Z", "X/Z/D": "Z", "X/D": "X", "X/Z/U*": "U"}.get(
        row.basic_profile, row.basic_profile
    )
    if action == "D":
        if vr == "SQ":
            return "Z"
        if vr == "UI":
            return "U"
        if vr not in _TEXT_VRS:
            return "X"
    if action == "U" and vr == "SQ":
        return "K"  # its items are cleaned like any sequence's: their UIDs are replaced
    return action


TABLE = load_table()
_TABLE_BY_TAG = {row.tag: row for row in TABLE}
_PATIENT_NAME = tag_for_keyword("PatientName")
_PATIENT_ID = tag_for_keyword("PatientID")
_PATIENT_BIRTH_DATE = tag_for_keyword("PatientBirthDate")
_PIXEL_DATA = 0x7FE00010
# Safety nets for attributes the table does not name: person names and free text are removed.
_REMOVED_VRS = {"PN", "LT", "ST", "UT", "AE"}
# VRs whose explicit VR element header is 12 bytes (a 4-byte length), PS3.5 7.1.2.
_LONG_HEADER_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _digest(secret: str, message: str) -> bytes:
    if not secret:
        raise ValueError("a de-identification secret is required (settings.PMPD_DEID_SECRET)")
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()


@functools.lru_cache(maxsize=65536)
def _keyed_uid(secret: str, message: str) -> str:
    return "2.25." + str(int.from_bytes(_digest(secret, message)[:16], "big"))


def is_registered_uid(uid: str) -> bool:
    return uid.startswith(REGISTERED_UID_ROOTS)


def remap_uid(uid: str, *, study_id: str, secret: str) -> str:
    """The de-identified UID of ``uid`` for the patient ``study_id``; registered DICOM UIDs
    (SOP classes, transfer syntaxes, coding schemes) are returned unchanged."""
    uid = str(uid).strip().rstrip("\x00")
    if not uid or is_registered_uid(uid):
        return uid
    return _keyed_uid(secret, f"uid\x00{study_id}\x00{uid}")


def derived_uid(*parts: object, study_id: str, secret: str) -> str:
    """A UID for an object the platform creates (a series written from NIfTI, a SEG), derived
    from ``parts``: the same inputs give the same UID, so a repeated ingest changes nothing."""
    return _keyed_uid(secret, "derived\x00" + study_id + "\x00" + "\x00".join(map(str, parts)))


def date_shift_days(study_id: str, *, secret: str, max_days: int = 3650) -> int:
    """Days by which the patient's dates move back: 1..max_days, keyed by the site secret."""
    if max_days < 1:
        raise ValueError("max_days must be at least 1")
    number = int.from_bytes(_digest(secret, f"date-shift\x00{study_id}")[:8], "big")
    return 1 + number % max_days


def _modify_date(value: str, *, vr: str, date_mode: str, shift_days: int) -> str:
    """One DA or DT value under the date policy; unreadable dates become empty."""
    text = value.strip()
    if not text:
        return ""
    core = text.split("+")[0].split("-")[0] if vr == "DT" else text
    if len(core) < 4 or not core[:4].isdigit():
        return ""
    if date_mode == "year" or len(core) < 8:
        return core[:4] if vr == "DT" else core[:4] + "0101"
    try:
        day = dt.datetime.strptime(core[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    try:
        shifted = (day - dt.timedelta(days=shift_days)).strftime("%Y%m%d")
    except OverflowError:
        return ""
    return shifted + core[8:] if vr == "DT" else shifted


class _Context:
    """One patient's de-identification: the keys, and a memo of rewritten raw elements (the
    slices of a series repeat most values, so each distinct value is rewritten once)."""

    def __init__(
        self, *, study_id: str, uid_scope: str, secret: str, date_mode: str, shift_days: int
    ) -> None:
        self.study_id = study_id
        self.uid_scope = uid_scope
        self.secret = secret
        self.date_mode = date_mode
        self.shift_days = shift_days
        self.memo: dict[tuple, RawDataElement] = {}

    def uid(self, value: str) -> str:
        return remap_uid(value, study_id=self.uid_scope, secret=self.secret)

    def date(self, value: str, vr: str) -> str:
        return _modify_date(value, vr=vr, date_mode=self.date_mode, shift_days=self.shift_days)

    def new_value(self, kind: str, vr: str, value: Any) -> Any:
        """The replacement of a decoded value (str or a list of str)."""
        if kind == "identity":
            return self.study_id
        if kind == "empty":
            return [] if vr == "SQ" else ("" if vr in _STRING_VRS else None)
        if kind == "dummy":
            return _DUMMIES.get(vr, DUMMY)[: _MAX_LENGTH.get(vr, 64)]
        if kind == "uid":
            return _map_values(value, self.uid)
        return _map_values(value, lambda v: self.date(v, vr)) if value else value

    @functools.cached_property
    def additions(self) -> list[RawDataElement]:
        """``_add_marks``'s attributes as explicit VR little endian raw elements, encoded once."""
        marks = Dataset()
        _add_marks(marks, self.study_id)
        elements = []
        for tag in sorted(marks.keys()):
            buffer = DicomBytesIO()
            buffer.is_little_endian, buffer.is_implicit_VR = True, False
            write_data_element(buffer, marks[tag])
            data = buffer.getvalue()
            vr = data[4:6].decode()
            header = 12 if vr in _LONG_HEADER_VRS else 8
            value = data[header:]
            length = data[8:12] if header == 12 else data[6:8]
            if int.from_bytes(length, "little") != len(value):
                raise RuntimeError(f"cannot encode {tag} as a raw element")
            elements.append(RawDataElement(tag, vr, len(value), value, 0, False, True, True, False))
        return elements

    def new_raw(self, kind: str, raw: RawDataElement) -> RawDataElement:
        """The replacement of an undecoded explicit-VR little-endian element, as raw bytes."""
        key = (raw.tag, raw.VR, kind, raw.value)
        cached = self.memo.get(key)
        if cached is not None:
            return cached
        old = (raw.value or b"").decode("latin-1").rstrip("\x00 ")
        values = old.split("\\") if old else []
        if kind in ("uid", "date"):
            new = self.new_value(kind, raw.VR, values)
            text = "\\".join(new)
        else:
            text = self.new_value(kind, raw.VR, old) or ""
        data = text.encode("latin-1")
        if len(data) % 2:
            data += b"\x00" if raw.VR == "UI" else b" "
        element = RawDataElement(
            raw.tag, raw.VR, len(data), data, raw.value_tell, False, True, True, False
        )
        self.memo[key] = element
        return element


def _map_values(value, function):
    if isinstance(value, MultiValue | list | tuple):
        return [function(v) for v in value]
    return function(value)


def _dictionary_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _resolve_un(ds: Dataset, tag: BaseTag, element: Any) -> Any:
    """An element stored with VR UN (unknown, common after a conversion): decoded with its
    dictionary VR, sequences parsed (their items are implicit VR little endian), so that the
    rules below see what it really is."""
    vr = _dictionary_vr(tag)
    if vr is None or " or " in vr:
        return element
    if vr != "SQ" and isinstance(element, RawDataElement) and element.is_little_endian:
        resolved = RawDataElement(
            tag, vr, element.length, element.value, element.value_tell, False, True, True, False
        )
        ds[tag] = resolved
        return resolved
    try:
        decoded = ds[tag]
    except Exception:  # a damaged value: the caller treats it as unknown
        return element
    if decoded.VR == "UN":  # pydicom leaves it when it cannot be read as its dictionary VR
        return element
    return decoded


def _action(tag: BaseTag, vr: str | None) -> str:
    """The one action for this attribute: the table's (``effective_action``), else the safety
    nets by VR; K keeps it (what the engine and the viewer need)."""
    if tag in (_PATIENT_NAME, _PATIENT_ID):
        return "identity"
    if tag == _PATIENT_BIRTH_DATE:
        return "Z"  # emptied in every date mode, not shifted
    row = _TABLE_BY_TAG.get(tag)
    if row is not None:
        return effective_action(row, vr)
    if vr is None or vr == "UN" or vr in _REMOVED_VRS:
        return "X"  # unknown to the dictionary, still unknown, or free text and names
    if vr == "UI":
        return "U"
    if vr in ("DA", "DT"):
        return "C"
    return "K"


_KINDS = {"Z": "empty", "D": "dummy", "U": "uid", "identity": "identity"}


def _clean(ds: Dataset, context: _Context) -> None:
    for tag in list(ds.keys()):
        if tag == _PIXEL_DATA:
            continue
        group = tag.group
        if tag.is_private or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            del ds[tag]
            continue
        element = ds.get_item(tag)
        if element.VR == "UN":
            element = _resolve_un(ds, tag, element)
        vr = element.VR or _dictionary_vr(tag)
        action = _action(tag, vr)
        if action == "X":
            del ds[tag]
            continue
        if vr == "SQ" and action in ("K", "C", "U"):
            for item in ds[tag].value:
                _clean(item, context)
            continue
        if action == "C":
            if vr not in ("DA", "DT"):
                continue  # times of day are kept: the shift is whole days
            kind = "date"
        elif action == "U" and vr != "UI":
            kind = "empty"
        elif action == "K":
            continue
        else:
            kind = _KINDS[action]
        if (
            isinstance(element, RawDataElement)
            and vr == element.VR
            and vr != "SQ"
            and element.is_little_endian
            and not element.is_implicit_VR
        ):
            ds[tag] = context.new_raw(kind, element)
        else:
            decoded = ds[tag]
            decoded.value = context.new_value(kind, vr, decoded.value)


def deidentify(
    ds: Dataset,
    *,
    study_id: str,
    secret: str,
    date_mode: str = "shift",
    date_shift_max_days: int = 3650,
    uid_scope: str = "",
) -> Dataset:
    """De-identify ``ds`` in place (see the module docstring) and return it. UIDs are remapped
    within ``uid_scope`` (default: the study ID; the ingest names the cohort too, so the same
    scan under the same study ID in two cohorts gets different UIDs).

    The file meta information, when present, is rebuilt: only the SOP class, the new SOP
    instance UID and the transfer syntax are kept.
    """
    if date_mode not in DATE_MODES:
        raise ValueError(f"date_mode must be one of {DATE_MODES}, not {date_mode!r}")
    if not study_id:
        raise ValueError("a study ID is required")
    context = _context(
        study_id,
        uid_scope or study_id,
        secret,
        date_mode,
        date_shift_days(study_id, secret=secret, max_days=date_shift_max_days),
    )
    _clean(ds, context)
    if hasattr(ds, "preamble"):
        ds.preamble = None  # a preamble may carry anything: the writer puts zeros
    if ds.original_encoding == (False, True):
        for element in context.additions:
            ds[element.tag] = element
    else:
        _add_marks(ds, study_id)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        transfer_syntax = meta.get("TransferSyntaxUID")
        ds.file_meta = new_file_meta(ds, transfer_syntax=transfer_syntax)
    return ds


def _add_marks(ds: Dataset, study_id: str) -> None:
    """The attributes every de-identified dataset carries (Annex E: identity removed, how)."""
    ds.PatientName = study_id
    ds.PatientID = study_id
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = list(METHOD)
    ds.DeidentificationMethodCodeSequence = method_code_sequence()
    ds.LongitudinalTemporalInformationModified = "MODIFIED"


@functools.lru_cache(maxsize=16)
def _context(
    study_id: str, uid_scope: str, secret: str, date_mode: str, shift_days: int
) -> _Context:
    """One context per patient and policy, so its memo serves every slice of the patient."""
    return _Context(
        study_id=study_id,
        uid_scope=uid_scope,
        secret=secret,
        date_mode=date_mode,
        shift_days=shift_days,
    )


def source_key(kind: str, value: str, *, scope: str, secret: str) -> str:
    """A keyed hash of an original identifier (the source PatientID, StudyInstanceUID) within
    ``scope`` (a cohort): stored to recognise the same source again, never to read it back."""
    value = str(value).strip().rstrip("\x00")
    if not value:
        return ""
    return _digest(secret, f"source\x00{kind}\x00{scope}\x00{value}").hex()


def method_code_sequence() -> Sequence:
    """DeidentificationMethodCodeSequence: the profile and option codes of ``METHOD_CODES``."""
    items = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    return Sequence(items)


def new_file_meta(ds: Dataset, *, transfer_syntax: str | None) -> FileMetaDataset:
    """File meta information for ``ds`` naming nothing but its SOP class and instance."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if transfer_syntax:
        meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PMPD_1"
    return meta
