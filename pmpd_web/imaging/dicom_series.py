"""DICOM in and out: what each file is, assembling and checking a CT series, the rule that
picks a patient's CT series, writing a CT series from a volume, DICOM SEG in and out, and the
DICOM JSON metadata of the stored instances.

Pure (pydicom, highdicom, numpy); the ingest (``pmpd_web.imaging.ingest`` package) is the Django shell.
Everything stored is explicit VR little endian, uncompressed: compressed input is decoded here.
"""

from __future__ import annotations

import functools
import io
import math
import mmap
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.charset import default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    SegmentationStorage,
)

from . import deid
from .errors import IngestError
from .volumes import CANONICAL_PANCREAS, CANONICAL_TUMOUR, Grid, StreamedHash, check_grid

ENHANCED_CT_CLASSES = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# Label Map Segmentation Storage: what OHIF writes by default; highdicom 0.28 does not read it.
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SECONDARY_CAPTURE_ROOT = "1.2.840.10008.5.1.4.1.1.7"
PIXEL_DATA = 0x7FE00010
SEG_SERIES_NUMBER = 900
# Fixed display colours of the SEG's segments (RecommendedDisplayCIELabValue), so that viewers
# show the pancreas and the tumour alike on every open instead of picking colours themselves.
PANCREAS_DISPLAY_RGB = (249, 180, 111)
TUMOUR_DISPLAY_RGB = (220, 40, 40)
GENERATED_SERIES_NUMBER = 800

# Phase of the contrast injection, from the words of the series description and protocol. The
# pick rule prefers the portal-venous phase, the one PMPD was trained on.
PHASE_WORDS = (
    (
        "non_contrast",
        r"non[- ]?contrast|unenhanced|native|plain|pre[- ]?contrast|sin contraste|\bnc\b",
    ),
    ("portal_venous", r"portal|venous|venos|veneu|\bpvp?\b|\bvp\b|\bven\b"),
    ("arterial", r"arter|\bart\b|\bap\b"),
    ("delayed", r"delay|excret|equilib|\blate\b|\btardi"),
)
PHASE_PREFERENCE = {
    "portal_venous": 4,
    "contrast": 3,
    "unknown": 2,
    "delayed": 1,
    "arterial": 0,
    "non_contrast": 0,
}
PHASE_LABELS = {
    "portal_venous": "portal venous",
    "contrast": "contrast (phase not named)",
    "unknown": "phase unknown",
    "delayed": "delayed",
    "arterial": "arterial",
    "non_contrast": "non-contrast",
}


# ----------------------------------------------------------------------------------------------
# Reading header values without decoding elements: pydicom's per-element conversion dominates
# when every slice of a series is read, and elements left undecoded are also written back and
# compared (metadata, encoding) by their bytes.

_BINARY_VRS = {"US": "<u2", "SS": "<i2", "UL": "<u4", "SL": "<i4", "FL": "<f4", "FD": "<f8"}


@functools.lru_cache(maxsize=512)
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def peek_list(ds: Dataset, keyword: str) -> list:
    """The values of ``keyword`` in ``ds`` (numbers for DS, IS and binary VRs, else text),
    [] when absent or empty. Explicit VR little endian elements are read from their bytes and
    left undecoded."""
    element = ds.get_item(_tag(keyword))
    if element is None:
        return []
    if (
        isinstance(element, RawDataElement)
        and element.VR
        and element.is_little_endian
        and not element.is_implicit_VR
    ):
        data = element.value or b""
        vr = element.VR
        if vr in _BINARY_VRS:
            return np.frombuffer(data, dtype=_BINARY_VRS[vr]).tolist()
        text = data.decode("latin-1").strip(" \x00")
        if not text:
            return []
        parts = [part.strip(" \x00") for part in text.split("\\")]
        if vr == "DS":
            return [float(part) for part in parts]
        if vr == "IS":
            return [int(float(part)) for part in parts]
        return parts
    # Converted by pydicom: its VR is the one to go by (an implicit VR raw element has none),
    # so that a slice read before and one read after conversion give the same numbers.
    converted = ds[_tag(keyword)]
    value, vr = converted.value, converted.VR
    if value is None or value == "":
        return []
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if vr == "DS":
        return [float(v) for v in values]
    if vr == "IS":
        return [int(v) for v in values]
    if vr in _BINARY_VRS or vr in ("US or SS", "US or OW", "US or SS or OW"):
        return [v for v in values]
    return [str(v) for v in values]


def peek(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """The first value of ``keyword`` (see ``peek_list``), or ``default``."""
    try:
        values = peek_list(ds, keyword)
    except (ValueError, UnicodeDecodeError):
        return default
    return values[0] if values else default


# ----------------------------------------------------------------------------------------------
# Reading and sorting out


@dataclass
class DicomFile:
    """A DICOM file of an upload: its label, where it lies, and its dataset."""

    label: str
    path: Path
    dataset: Dataset
    # Descriptive attributes read before de-identification removes them (for the pick rule).
    description: str = ""
    protocol: str = ""
    contrast_agent: str = ""
    # The source's identifiers, read before de-identification (to recognise the same scan
    # uploaded for another patient).
    source_patient_id: str = ""
    source_study_uid: str = ""


# Values larger than this stay in the file when a DICOM file is read (pydicom's deferred
# read): a CT slice's pixel data are read when the slice is converted to HU and again when its
# de-identified copy is written, each time into memory freed at once, instead of a whole
# series' pixels staying in memory for the whole ingest (300 slices of 512x512: 158 MB less,
# and on a machine where fresh memory is costly the pages no longer need to be found).
DEFERRED_BYTES = 64 * 1024


def read_dicom(path: Path, *, label: str) -> DicomFile:
    """Read a DICOM file (values over ``DEFERRED_BYTES``, the pixels mostly, left in the file
    until used); IngestError when it cannot be."""
    try:
        dataset = pydicom.dcmread(path, force=True, defer_size=DEFERRED_BYTES)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise IngestError(
            label, f"not a readable DICOM file ({type(exc).__name__}: {exc})"
        ) from None
    except Exception as exc:  # pydicom raises many kinds on a damaged file
        raise IngestError(label, f"not a readable DICOM file ({type(exc).__name__})") from None
    meta = getattr(dataset, "file_meta", None)
    stored_as = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if "SOPClassUID" not in dataset and stored_as != MEDIA_STORAGE_DIRECTORY:
        raise IngestError(
            label, "not a readable DICOM file: it is truncated or damaged (no SOP Class UID)"
        )
    if meta is not None and meta.get("TransferSyntaxUID") == ExplicitVRBigEndian:
        _to_little_endian(dataset, label=label)
    return DicomFile(
        label=label,
        path=path,
        dataset=dataset,
        description=" ".join(peek_list(dataset, "SeriesDescription")),
        protocol=" ".join(peek_list(dataset, "ProtocolName")),
        contrast_agent=" ".join(peek_list(dataset, "ContrastBolusAgent")),
        source_patient_id=" ".join(peek_list(dataset, "PatientID")),
        source_study_uid=" ".join(peek_list(dataset, "StudyInstanceUID")),
    )


def _to_little_endian(ds: Dataset, *, label: str) -> None:
    """Explicit VR big endian (retired from the standard, still found on old archives) turned
    into explicit VR little endian in memory: every element decoded, the pixels swapped."""
    try:
        pixels = ds.pixel_array if PIXEL_DATA in ds else None
        for _ in ds.iterall():
            pass  # decodes every element from its big-endian bytes
    except Exception as exc:
        raise IngestError(
            label, f"explicit VR big endian data that cannot be decoded ({type(exc).__name__})"
        ) from None
    if pixels is not None:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OB" if pixels.dtype.itemsize == 1 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True, ds.original_character_set)


def role_of(dicom: DicomFile) -> tuple[str, str]:
    """("ct" | "seg" | "skip", why): what the ingest does with this file. Image modalities
    other than CT raise IngestError (an MR series is a mistake, not clutter)."""
    ds = dicom.dataset
    meta = getattr(ds, "file_meta", None)
    stored_as = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    sop_class = str(peek(ds, "SOPClassUID", "") or stored_as)
    modality = str(peek(ds, "Modality", "")).upper()
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        return "skip", "a DICOMDIR index, not an image"
    if sop_class in (str(SegmentationStorage), LABEL_MAP_SEGMENTATION_STORAGE):
        return "seg", "DICOM SEG"
    if sop_class.startswith(SECONDARY_CAPTURE_ROOT):
        return "skip", "a secondary capture (screenshot or dose report), not a CT slice"
    if sop_class in ENHANCED_CT_CLASSES:
        raise IngestError(
            dicom.label,
            "an enhanced (multi-frame) CT object; export the series as classic CT slices "
            "(CT Image Storage)",
        )
    if sop_class == str(CTImageStorage):
        image_type = [str(v).upper() for v in peek_list(ds, "ImageType")]
        if "LOCALIZER" in image_type:
            return "skip", "a localizer (scout) image, not part of a CT volume"
        return "ct", "CT"
    if PIXEL_DATA not in ds:
        return "skip", f"a non-image DICOM object ({_sop_name(sop_class)})"
    raise IngestError(
        dicom.label,
        f"modality {modality or 'unknown'} ({_sop_name(sop_class)}): PMPD ingests CT series "
        "and their masks only",
    )


def _sop_name(sop_class: str) -> str:
    return pydicom.uid.UID(sop_class).name


# ----------------------------------------------------------------------------------------------
# CT series


@dataclass
class CtSeries:
    """A checked CT series: its slices sorted along the slice normal, volume and facts."""

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    files: list[DicomFile]
    hu: np.ndarray  # (z, y, x) int16
    grid: Grid
    manufacturer: str
    slice_thickness_mm: float
    pixel_spacing_mm: list[float]
    series_number: int | None
    description: str
    phase: str
    study_date: str
    labels: list[str] = field(default_factory=list)
    # The volume's content hash, computed while the volume was filled (``assemble_ct`` with
    # ``hash_while_filling``); None otherwise.
    streamed_hash: StreamedHash | None = None

    @property
    def datasets(self) -> list[Dataset]:
        return [f.dataset for f in self.files]


def _floats(ds: Dataset, keyword: str, count: int, *, what: str, label: str) -> np.ndarray:
    try:
        numbers = np.array(peek_list(ds, keyword), dtype=float)
    except (TypeError, ValueError):
        numbers = np.array([])
    if numbers.size != count or not np.all(np.isfinite(numbers)):
        raise IngestError(label, f"the {what} is missing or malformed")
    return numbers


def contrast_phase(*texts: str, contrast_agent: str = "") -> str:
    """The injection phase named by the descriptions (see ``PHASE_WORDS``)."""
    text = " ".join(texts).lower()
    for phase, pattern in PHASE_WORDS:
        if re.search(pattern, text):
            return phase
    return "contrast" if contrast_agent.strip() else "unknown"


def _deferred(element: Any) -> bool:
    """Whether ``element`` is a value pydicom left in the file (``DEFERRED_BYTES``)."""
    return (
        isinstance(element, RawDataElement)
        and element.value is None
        and element.length not in (0, 0xFFFFFFFF)
    )


def pixel_bytes(ds: Dataset) -> bytes | None:
    """The value of ``ds``'s pixel data: from memory when it was read, else from the file it
    was read from, without keeping it in ``ds``. Shorter than the element's length when the
    file is truncated; None when there is no pixel data."""
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if element is None:
        return None
    if not _deferred(element):
        return ds.get_item(PIXEL_DATA).value
    with open(ds.filename, "rb") as handle:
        handle.seek(element.value_tell)
        return handle.read(element.length)


def _pixel_bytes_available(ds: Dataset) -> int:
    """How many bytes of pixel data ``ds``'s file holds (its element's length, less what a
    truncated file lacks), without reading them."""
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if element is None:
        return 0
    if not _deferred(element):
        value = ds.get_item(PIXEL_DATA).value
        return len(value) if value else 0
    try:
        in_file = Path(ds.filename).stat().st_size - element.value_tell
    except OSError:
        return 0
    return max(0, min(element.length, in_file))


def load_deferred(ds: Dataset) -> Dataset:
    """Read every value pydicom left in the file into ``ds`` (for a dataset handed to code
    that does not know deferred values, such as highdicom's SEG reader)."""
    for tag in list(ds.keys()):
        if _deferred(ds.get_item(tag, keep_deferred=True)):
            ds.get_item(tag)  # reads the value and keeps it in ds
    return ds


def _native_pixels(dicom: DicomFile) -> np.ndarray:
    """The stored values of one slice (rows, columns); decodes compressed pixel data in place
    (pydicom's decoders, GDCM through SimpleITK as the fallback) so the stored file is native.
    """
    ds = dicom.dataset
    rows, columns = int(peek(ds, "Rows", 0)), int(peek(ds, "Columns", 0))
    bits = int(peek(ds, "BitsAllocated", 16))
    signed = int(peek(ds, "PixelRepresentation", 0)) == 1
    if int(peek(ds, "SamplesPerPixel", 1)) != 1:
        raise IngestError(dicom.label, "a colour image, not a CT slice")
    if bits not in (8, 16):
        raise IngestError(dicom.label, f"{bits}-bit pixels; CT slices have 8 or 16")
    dtype = np.dtype(f"{'<i' if signed else '<u'}{bits // 8}")
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if PIXEL_DATA not in ds:
        raise IngestError(dicom.label, "the file holds no pixel data (truncated?)")
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        _decompress(dicom, dtype=dtype)
    raw = pixel_bytes(ds)
    expected = rows * columns * dtype.itemsize
    if raw is None or len(raw) < expected:
        got = 0 if raw is None else len(raw)
        raise IngestError(
            dicom.label,
            f"the file is truncated: its pixel data hold {got} bytes, {expected} are needed",
        )
    return np.frombuffer(raw, dtype=dtype, count=rows * columns).reshape(rows, columns)


# Transfer syntaxes whose compression may lose information, with the method's code (PS3.3
# C.7.6.1.1.5.1): decoding one leaves pixels that differ from the acquired ones, so the stored
# slice says so (LossyImageCompression "01").
LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 (lossy or lossless)
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # HTJ2K (lossy or lossless)
}


def _mark_lossy(ds: Dataset, transfer_syntax: str, compressed_bytes: int) -> None:
    """LossyImageCompression 01 with the method and the ratio of this slice, added to what an
    earlier lossy step recorded."""
    method = LOSSY_METHODS.get(str(transfer_syntax))
    if method is None:
        return
    rows, columns = int(peek(ds, "Rows", 0)), int(peek(ds, "Columns", 0))
    size = rows * columns * int(peek(ds, "BitsAllocated", 16)) // 8
    ratios = [str(v) for v in peek_list(ds, "LossyImageCompressionRatio")]
    methods = [str(v) for v in peek_list(ds, "LossyImageCompressionMethod")]
    ds.LossyImageCompression = "01"
    # An encoder that recorded its ratio but not its method leaves one ratio more: that ratio
    # is this step's.
    if len(ratios) <= len(methods) and compressed_bytes:
        ratios.append(decimal_string(round(size / compressed_bytes, 2)))
        ds.LossyImageCompressionRatio = ratios
    ds.LossyImageCompressionMethod = [*methods, method]


def _decompress(dicom: DicomFile, *, dtype: np.dtype) -> None:
    ds = dicom.dataset
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    compressed = ds.get_item(PIXEL_DATA).value
    try:
        ds.decompress(generate_instance_uid=False)
        _mark_lossy(ds, transfer_syntax, len(compressed or b""))
        return
    except Exception as pydicom_error:  # no decoder for this transfer syntax, or bad data
        reason = f"{type(pydicom_error).__name__}"
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(dicom.path))
    try:
        image = reader.Execute()
    except RuntimeError:
        raise IngestError(
            dicom.label,
            f"compressed pixel data ({ds.file_meta.TransferSyntaxUID.name}) that cannot be "
            f"decoded ({reason})",
        ) from None
    values = sitk.GetArrayFromImage(image).reshape(int(ds.Rows), int(ds.Columns))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    stored = np.rint((values.astype(np.float64) - intercept) / slope).astype(dtype)
    ds.set_pixel_data(
        stored,
        str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        int(ds.get("BitsStored", dtype.itemsize * 8)),
        generate_instance_uid=False,
    )
    _mark_lossy(ds, transfer_syntax, len(compressed or b""))


def _complete(dicom: DicomFile) -> bool:
    """Whether the file holds all its pixel data (compressed data cannot be measured: a copy
    that holds some counts as complete, its decoding tells the rest)."""
    ds = dicom.dataset
    available = _pixel_bytes_available(ds)
    if not available:
        return False
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if transfer_syntax is not None and transfer_syntax.is_compressed:
        return True
    try:
        rows, columns = int(peek(ds, "Rows", 0)), int(peek(ds, "Columns", 0))
        size = rows * columns * int(peek(ds, "BitsAllocated", 16)) // 8
    except (TypeError, ValueError):
        return False
    return available >= size


def drop_duplicate_instances(
    files: list[DicomFile],
) -> tuple[list[DicomFile], list[tuple[DicomFile, str]]]:
    """One file per SOP instance, whatever the order of the copies: the first complete copy
    is kept (the first copy when none is complete, so that its problem is told); each other
    copy is returned with the note that says why it was left out."""
    copies: dict[str, list[DicomFile]] = {}
    for dicom in files:
        copies.setdefault(str(peek(dicom.dataset, "SOPInstanceUID", "")), []).append(dicom)
    kept, dropped = [], []
    for same in copies.values():
        keep = next((dicom for dicom in same if _complete(dicom)), same[0])
        kept.append(keep)
        for dicom in same:
            if dicom is not keep:
                state = "a complete" if _complete(dicom) else "an incomplete"
                dropped.append(
                    (dicom, f"{state} second copy of the SOP instance in {keep.label}: left out")
                )
    return kept, dropped


def assemble_ct(
    files: list[DicomFile],
    *,
    min_slices: int,
    tolerance_mm: float,
    hash_while_filling: bool = False,
) -> CtSeries:
    """Check one CT series and build its volume; IngestError names the series and the file.

    Slices are sorted along the normal of their orientation (like SimpleITK/GDCM): the origin
    is the first slice's position, the direction's columns are row, column and normal.
    Duplicate SOP instances count once (``drop_duplicate_instances``). With
    ``hash_while_filling`` the volume's content hash is computed while the volume is filled
    (``CtSeries.streamed_hash``).
    """
    files, _ = drop_duplicate_instances(files)
    first = files[0]
    series_label = f"CT series '{first.description or 'no description'}' ({first.label}...)"
    if len(files) < min_slices:
        raise IngestError(
            first.label if len(files) == 1 else series_label,
            f"{len(files)} slice{'s' if len(files) != 1 else ''}: a CT needs at least {min_slices}",
        )
    reference = first.dataset
    for dicom in files:
        ds = dicom.dataset
        for keyword in (
            "Rows",
            "Columns",
            "ImageOrientationPatient",
            "ImagePositionPatient",
            "PixelSpacing",
        ):
            if keyword not in ds:
                raise IngestError(
                    dicom.label, f"{keyword} is missing: the file is truncated or not a CT slice"
                )
        if str(peek(ds, "BurnedInAnnotation", "")).upper() == "YES":
            raise IngestError(
                dicom.label,
                "the pixels carry burned-in annotation (BurnedInAnnotation YES), which "
                "de-identification cannot remove: refused",
            )
        for keyword in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation"):
            if peek(ds, keyword) != peek(reference, keyword):
                raise IngestError(
                    dicom.label,
                    f"{keyword} {peek(ds, keyword)} differs from the series' "
                    f"{peek(reference, keyword)}",
                )
    orientation = _floats(
        reference, "ImageOrientationPatient", 6, what="image orientation", label=first.label
    )
    row, column = orientation[:3], orientation[3:]
    if not (
        math.isclose(np.linalg.norm(row), 1, abs_tol=1e-3)
        and math.isclose(np.linalg.norm(column), 1, abs_tol=1e-3)
        and abs(float(row @ column)) < 1e-3
    ):
        raise IngestError(first.label, "the image orientation is not orthonormal")
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal = np.cross(row, column)
    spacing = _floats(reference, "PixelSpacing", 2, what="pixel spacing", label=first.label)
    positions = np.empty((len(files), 3))
    for index, dicom in enumerate(files):
        ds = dicom.dataset
        if not np.allclose(
            _floats(ds, "ImageOrientationPatient", 6, what="image orientation", label=dicom.label),
            orientation,
            atol=1e-4,
        ):
            raise IngestError(dicom.label, "its orientation differs from the series' other slices")
        if not np.allclose(
            _floats(ds, "PixelSpacing", 2, what="pixel spacing", label=dicom.label),
            spacing,
            atol=tolerance_mm,
        ):
            raise IngestError(
                dicom.label, "its pixel spacing differs from the series' other slices"
            )
        positions[index] = _floats(
            ds, "ImagePositionPatient", 3, what="image position", label=dicom.label
        )
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    files = [files[i] for i in order]
    positions, along = positions[order], along[order]
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        at = int(np.argmax(steps < 1e-3))
        raise IngestError(
            files[at + 1].label,
            f"two slices at the same position ({along[at]:.2f} mm) in {series_label}: the series "
            "mixes several acquisitions or reconstructions",
        )
    step = float(np.median(steps))
    tolerance = max(tolerance_mm, 0.01 * step)
    if np.any(np.abs(steps - step) > tolerance):
        at = int(np.argmax(np.abs(steps - step) > tolerance))
        raise IngestError(
            series_label,
            f"uneven slice spacing: {steps[at]:.3f} mm between slices at {along[at]:.2f} and "
            f"{along[at + 1]:.2f} mm where the series has {step:.3f} mm (missing slices?)",
        )
    sideways = np.diff(positions, axis=0) - np.outer(steps, normal)
    if np.any(np.linalg.norm(sideways, axis=1) > tolerance):
        raise IngestError(
            series_label,
            "the slices are sheared (gantry tilt): reconstruct the series without tilt",
        )
    grid = Grid(
        size=(int(peek(reference, "Columns")), int(peek(reference, "Rows")), len(files)),
        spacing=(float(spacing[1]), float(spacing[0]), step),
        origin=tuple(float(v) for v in positions[0]),
        direction=tuple(np.column_stack([row, column, normal]).reshape(-1).tolist()),
    )
    check_grid(grid, label=series_label, min_slices=min_slices)
    rows, columns = int(peek(reference, "Rows")), int(peek(reference, "Columns"))
    hasher = (
        StreamedHash(np.dtype(np.int16), (len(files), rows, columns), grid)
        if hash_while_filling
        else None
    )
    try:
        hu = _hounsfield(files, hasher)
    except BaseException:
        if hasher is not None:
            hasher.cancel()
        raise
    ds0 = files[0].dataset
    thickness = peek(ds0, "SliceThickness")
    series_number = peek(ds0, "SeriesNumber")
    return CtSeries(
        series_uid=str(peek(ds0, "SeriesInstanceUID", "")),
        study_uid=str(peek(ds0, "StudyInstanceUID", "")),
        frame_of_reference_uid=str(peek(ds0, "FrameOfReferenceUID", "")),
        files=files,
        hu=hu,
        grid=grid,
        manufacturer=" ".join(peek_list(ds0, "Manufacturer"))[:64],
        slice_thickness_mm=float(thickness) if thickness is not None else step,
        pixel_spacing_mm=[float(spacing[0]), float(spacing[1])],
        series_number=int(series_number) if series_number is not None else None,
        description=files[0].description,
        phase=contrast_phase(
            files[0].description, files[0].protocol, contrast_agent=files[0].contrast_agent
        ),
        study_date=str(peek(ds0, "StudyDate", "")),
        labels=[f.label for f in files],
        streamed_hash=hasher,
    )


def _hounsfield(files: list[DicomFile], hasher: StreamedHash | None = None) -> np.ndarray:
    """The series' slices as int16 HU. The usual series (slope 1, one integer intercept) is
    converted slice by slice straight from each file's pixel bytes into the volume, while the
    slice is in the cache; any other is stacked and rescaled in floating point."""
    slopes = np.array([float(peek(f.dataset, "RescaleSlope", 1) or 1) for f in files])
    intercepts = np.array([float(peek(f.dataset, "RescaleIntercept", 0)) for f in files])
    first = _native_pixels(files[0])
    ds = files[0].dataset
    bits_allocated = first.dtype.itemsize * 8
    bits_stored = int(peek(ds, "BitsStored", bits_allocated) or bits_allocated)
    if (
        np.all(slopes == 1)
        and np.all(intercepts == intercepts[0])
        and intercepts[0] == np.rint(intercepts[0])
    ):
        hu = _shifted_slices(
            files, first, bits_stored=bits_stored, intercept=int(intercepts[0]), hasher=hasher
        )
        if hu is not None:
            return hu
        if hasher is not None:
            hasher.restart()
    stored = np.empty((len(files), *first.shape), dtype=first.dtype)
    stored[0] = first
    for index, dicom in enumerate(files[1:], start=1):
        stored[index] = _native_pixels(dicom)
    stored = _stored_bits(stored, bits_stored)
    values = np.rint(stored * slopes[:, None, None] + intercepts[:, None, None])
    if values.min() < -32768 or values.max() > 32767:
        raise IngestError(files[0].label, "the rescaled values do not fit 16-bit Hounsfield units")
    hu = values.astype(np.int16)
    if hasher is not None:
        hasher.add(hu)
    return hu


def _volume_buffer(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An uninitialised array for a whole series, in anonymous memory of ordinary pages.
    NumPy asks the kernel for huge pages for large arrays, and on a busy machine the kernel
    then compacts memory to find them: up to a few tenths of a second for one CT, more than
    the conversion itself; ordinary pages cost a steady few hundredths."""
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1))
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def _stored_bits(stored: np.ndarray, bits_stored: int) -> np.ndarray:
    """The stored values with the bits past BitsStored dealt with: sign-extended for signed
    pixels, cleared for unsigned ones. Values already in range are left as they are, so a
    slice and the whole series give the same result."""
    bits_allocated = stored.dtype.itemsize * 8
    if bits_stored >= bits_allocated:
        return stored
    low, high = int(stored.min()), int(stored.max())
    if stored.dtype.kind == "i" and (
        low < -(1 << (bits_stored - 1)) or high >= 1 << (bits_stored - 1)
    ):
        shift = bits_allocated - bits_stored
        return (stored << shift) >> shift
    if stored.dtype.kind == "u" and high >= 1 << bits_stored:
        return stored & np.array((1 << bits_stored) - 1, dtype=stored.dtype)
    return stored


# Slices converted before they are handed to the hash thread together.
HASH_SLAB = 16


def _shifted_slices(
    files: list[DicomFile],
    first: np.ndarray,
    *,
    bits_stored: int,
    intercept: int,
    hasher: StreamedHash | None = None,
) -> np.ndarray | None:
    """HU = stored value + ``intercept``, written slice by slice into one int16 volume (one
    pass over the pixel bytes); None when a stored value does not fit int16 (the floating-point
    path decides then, and ``hasher`` starts again). Each finished slab of ``HASH_SLAB``
    slices goes to ``hasher``."""
    hu = _volume_buffer((len(files), *first.shape), np.int16)
    offset = np.int16(intercept) if -32768 <= intercept <= 32767 else None
    hashed = 0
    for index, dicom in enumerate(files):
        stored = _stored_bits(first if index == 0 else _native_pixels(dicom), bits_stored)
        low, high = int(stored.min()), int(stored.max())
        if high > 32767 or offset is None:
            return None
        if low + intercept < -32768 or high + intercept > 32767:
            raise IngestError(
                files[0].label, "the rescaled values do not fit 16-bit Hounsfield units"
            )
        if stored.dtype == np.uint16:
            stored = stored.view(np.int16)  # every value is below 32768: the same numbers
        np.add(stored, offset, out=hu[index], casting="unsafe")
        if hasher is not None and index + 1 - hashed >= HASH_SLAB:
            hasher.add(hu[hashed : index + 1])
            hashed = index + 1
    if hasher is not None and hashed < len(files):
        hasher.add(hu[hashed:])
    return hu


# ----------------------------------------------------------------------------------------------
# The pick


@dataclass(frozen=True)
class Candidate:
    """What the pick rule looks at in one CT series (``key`` identifies it to the caller)."""

    key: Any
    has_mask: bool
    phase: str
    slice_thickness_mm: float
    rows: int
    n_slices: int
    series_number: int | None


def pick_series(candidates: Iterable[Candidate]) -> tuple[Any, str]:
    """The CT series PMPD uses, and why. The rule, in order: a series with a mask on its grid;
    then the portal-venous phase (then contrast of unnamed phase, unknown, delayed, arterial or
    non-contrast); then the thinnest slices; then the most rows; then the most slices; then the
    lowest series number and key (so the pick is deterministic)."""
    ranked = sorted(
        candidates,
        key=lambda c: (
            not c.has_mask,
            -PHASE_PREFERENCE.get(c.phase, 0),
            round(c.slice_thickness_mm, 3),
            -c.rows,
            -c.n_slices,
            c.series_number if c.series_number is not None else math.inf,
            str(c.key),
        ),
    )
    if not ranked:
        raise ValueError("no CT series to pick from")
    best = ranked[0]
    reasons = []
    if best.has_mask:
        reasons.append("has the mask")
    reasons.append(PHASE_LABELS.get(best.phase, best.phase))
    reasons.append(f"{best.slice_thickness_mm:g} mm slices")
    if len(ranked) > 1:
        reasons.append(f"best of {len(ranked)} CT series by the pick rule")
    return best.key, "; ".join(reasons)


# ----------------------------------------------------------------------------------------------
# Writing


def decimal_string(value: float) -> str:
    """A DICOM decimal string (16 characters at most), exact when the value allows."""
    text = repr(float(value))
    if len(text) <= 16:
        return text
    for digits in range(15, 0, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} cannot be written as a DICOM decimal string")


def encode(ds: Dataset) -> bytes:
    """A Part 10 file of ``ds`` in explicit VR little endian."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def _cacheable(ds: Dataset) -> bool:
    """Whether pydicom would write ``ds``'s elements as they are (explicit VR little endian
    read or built in memory, character set unchanged, no ambiguous VR): then each element's
    encoding can be reused across the slices of a series."""
    if ds.original_encoding not in ((False, True), (None, None)):
        return False
    if ds.original_encoding == (False, True) and ds.original_character_set != ds._character_set:
        return False
    return all(
        element.VR and len(element.VR) == 2
        for element in (ds.get_item(t, keep_deferred=True) for t in list(ds.keys()))
    )


def encode_series(datasets: list[Dataset]) -> Iterator[bytes]:
    """Part 10 files of a series' datasets (explicit VR little endian), like ``encode`` but
    encoding each distinct element once: the slices of a series share most of their header,
    and pydicom's per-element writing dominates the cost of storing a series."""
    cache: dict[int, tuple[Any, bytes]] = {}
    meta_cache: dict[int, tuple[Any, bytes]] = {}
    charset: Any = None
    for ds in datasets:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        encodings = ds.get("SpecificCharacterSet", default_encoding)
        if not _cacheable(ds):
            yield encode(ds)
            continue
        if charset is not None and encodings != charset:
            cache.clear()
        charset = encodings
        meta = b"".join(
            _cached_element(ds.file_meta, tag, meta_cache, default_encoding)
            for tag in sorted(ds.file_meta.keys())
            if tag.element != 0
        )
        parts = [
            b"\x00" * 128 + b"DICM",
            b"\x02\x00\x00\x00UL\x04\x00" + len(meta).to_bytes(4, "little") + meta,
        ]
        for tag, element in sorted(_elements(ds)):
            if tag.element == 0 and tag.group > 6:
                continue
            if tag == PIXEL_DATA:
                parts += _pixel_data_element(ds)
            else:
                parts.append(_cached_element(ds, tag, cache, encodings, element))
        # One copy of the pixel bytes, into the file's bytes.
        yield b"".join(parts)


def _pixel_data_element(ds: Dataset) -> list[bytes]:
    """Native pixel data as its element header and its value bytes as they are (not copied
    through pydicom's writer); anything else (odd length, encapsulated) encoded by pydicom."""
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    # Read from the file when it was left there: the bytes live as long as this file's.
    value, vr = pixel_bytes(ds), element.VR
    undefined = (
        element.length == 0xFFFFFFFF
        if isinstance(element, RawDataElement)
        else element.is_undefined_length
    )
    if isinstance(value, bytes) and vr in ("OB", "OW") and len(value) % 2 == 0 and not undefined:
        header = b"\xe0\x7f\x10\x00" + vr.encode() + b"\x00\x00" + len(value).to_bytes(4, "little")
        return [header, value]
    return [_cached_element(ds, PIXEL_DATA, {}, default_encoding)]


def _elements(ds: Dataset) -> list[tuple[Any, Any]]:
    """(tag, element) of ``ds``'s top level as ``Dataset.get_item`` gives them (raw while
    unread), in the dataset's order, without a tag lookup per element."""
    return [
        (
            tag,
            ds.get_item(tag)
            if isinstance(element, RawDataElement) and element.value is None and tag != PIXEL_DATA
            else element,
        )
        for tag, element in ds.items()
    ]


def _cached_element(
    ds: Dataset,
    tag: int,
    cache: dict[int, tuple[Any, bytes]],
    encodings: Any,
    element: Any = None,
) -> bytes:
    """The explicit VR little endian encoding of ``ds``'s element ``tag`` (``element`` when
    the caller has it), reused from ``cache`` when the element equals the one encoded before
    (pixel data is never cached)."""
    if element is None:
        element = ds.get_item(tag)
    cached = cache.get(tag)
    if cached is not None and _same(element, cached[0]):
        return cached[1]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, element, encodings)
    data = buffer.getvalue()
    if tag != PIXEL_DATA:
        cache[tag] = (element, data)
    return data


@dataclass(frozen=True)
class GeneratedUids:
    study: str
    series: str
    frame_of_reference: str
    instance: Callable[[int], str]


def ct_series_from_volume(
    hu: np.ndarray,
    grid: Grid,
    *,
    study_id: str,
    uids: GeneratedUids,
    description: str,
) -> list[Dataset]:
    """A CT Image Storage series (one dataset per slice, int16 HU) holding ``hu`` on ``grid``,
    for the viewer, when the CT arrived as NIfTI, NRRD or MetaImage. Its headers carry no
    identity: patient name and ID are the study ID, dates are empty."""
    matrix = grid.matrix
    row, column, normal = matrix[:, 0], matrix[:, 1], matrix[:, 2]
    origin = np.asarray(grid.origin, dtype=float)
    orientation = [decimal_string(v) for v in (*row, *column)]
    pixel_spacing = [decimal_string(grid.spacing[1]), decimal_string(grid.spacing[0])]
    thickness = decimal_string(grid.spacing[2])
    datasets = []
    for index in range(hu.shape[0]):
        position = origin + index * grid.spacing[2] * normal
        ds = Dataset()
        sop_uid = uids.instance(index)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.file_meta = deid.new_file_meta(ds, transfer_syntax=ExplicitVRLittleEndian)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = ""
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = description[:64]
        ds.PatientName = ds.PatientID = study_id
        ds.PatientBirthDate = ds.PatientSex = ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = list(deid.METHOD)
        ds.StudyInstanceUID = uids.study
        ds.SeriesInstanceUID = uids.series
        ds.StudyID = ""
        ds.SeriesNumber = GENERATED_SERIES_NUMBER
        ds.InstanceNumber = index + 1
        ds.FrameOfReferenceUID = uids.frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [decimal_string(v) for v in position]
        ds.ImageOrientationPatient = orientation
        ds.PixelSpacing = pixel_spacing
        ds.SliceThickness = thickness
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.BurnedInAnnotation = "NO"
        ds.KVP = ""
        ds.AcquisitionNumber = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(hu[index], dtype="<i2").tobytes()
        ds["PixelData"].VR = "OW"
        datasets.append(ds)
    return datasets


_TEMPORAL_FORMATS = {"DA": "%Y%m%d", "DT": "%Y%m%d%H%M%S.%f", "TM": "%H%M%S.%f"}


def _json_safe(entry: dict) -> dict:
    """Dates and times as DICOM strings: highdicom sets them as date objects, which pydicom's
    JSON keeps as they are."""
    vr = entry.get("vr")
    values = entry.get("Value")
    if values and vr in _TEMPORAL_FORMATS:
        entry["Value"] = [
            value
            if isinstance(value, str)
            else getattr(value, "original_string", None) or value.strftime(_TEMPORAL_FORMATS[vr])
            for value in values
        ]
    elif values and vr == "SQ":
        for item in values:
            for element in item.values():
                _json_safe(element)
    return entry


def _json_element(ds: Dataset, tag: int) -> dict:
    entry = ds[tag].to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1024)
    return _json_safe(entry) if entry.get("vr") in ("DA", "DT", "TM", "SQ") else entry


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, RawDataElement) and isinstance(b, RawDataElement):
        return a.VR == b.VR and a.value == b.value
    if isinstance(a, RawDataElement) or isinstance(b, RawDataElement):
        return False
    return a.VR == b.VR and a.value == b.value


def instance_metadata(datasets: list[Dataset]) -> list[dict]:
    """Each dataset's DICOM JSON (PS3.18 F.2) without the pixel data.

    The slices of a series share most of their header, so an element equal to the first
    slice's (compared before decoding) reuses its JSON: far faster than converting every
    element of every slice.
    """
    out: list[dict] = []
    template: dict[int, Any] | None = None
    template_json: dict[str, dict] = {}
    for ds in datasets:
        elements = _elements(ds)
        if template is None:
            template = dict(elements)
            template_json = {
                f"{tag:08X}": _json_element(ds, tag) for tag, _ in elements if tag != PIXEL_DATA
            }
            out.append(template_json)
            continue
        entry = {}
        for tag, element in elements:
            if tag == PIXEL_DATA:
                continue
            key = f"{tag:08X}"
            if key in template_json and _same(element, template.get(tag)):
                entry[key] = template_json[key]
            else:
                entry[key] = _json_element(ds, tag)
        out.append(entry)
    return out


# ----------------------------------------------------------------------------------------------
# DICOM SEG


PANCREAS_CODES = {"15776009"}
TUMOUR_CODES = {"108369006", "4147007", "363418001", "372142002", "86049000", "94459006"}
_PANCREAS_WORDS = re.compile(r"pancrea", re.IGNORECASE)
_TUMOUR_WORDS = re.compile(
    r"tumou?r|lesion|mass|neoplas|cancer|carcinom|pdac|malignan", re.IGNORECASE
)


def segment_class(segment: Dataset, *, label_pancreas: int, label_tumour: int) -> int | None:
    """Canonical class (1 pancreas, 2 tumour) of a SEG segment: by its coded property type,
    then by the words of its label, then by its number under the upload's label convention."""
    codes = {
        str(item.get("CodeValue", ""))
        for item in segment.get("SegmentedPropertyTypeCodeSequence", [])
    }
    if codes & PANCREAS_CODES:
        return CANONICAL_PANCREAS
    if codes & TUMOUR_CODES:
        return CANONICAL_TUMOUR
    text = str(segment.get("SegmentLabel", "") or "")
    if _TUMOUR_WORDS.search(text):
        return CANONICAL_TUMOUR
    if _PANCREAS_WORDS.search(text):
        return CANONICAL_PANCREAS
    number = int(segment.SegmentNumber)
    if number == label_tumour:
        return CANONICAL_TUMOUR
    if number == label_pancreas:
        return CANONICAL_PANCREAS
    return None


def referenced_series(seg: Dataset) -> set[str]:
    """The series a SEG says it segments (ReferencedSeriesSequence)."""
    return {
        str(item.SeriesInstanceUID)
        for item in seg.get("ReferencedSeriesSequence", [])
        if "SeriesInstanceUID" in item
    }


def _segment_classes(seg: Dataset, *, label: str, label_pancreas: int, label_tumour: int):
    classes: dict[int, int] = {}
    for segment in seg.get("SegmentSequence", []):
        if int(segment.SegmentNumber) == 0:
            continue  # a label map's background
        kind = segment_class(segment, label_pancreas=label_pancreas, label_tumour=label_tumour)
        if kind is None:
            raise IngestError(
                label,
                f"segment {segment.SegmentNumber} '{segment.get('SegmentLabel', '')}' is neither "
                "pancreas nor tumour (by its code, label or this upload's label numbers)",
            )
        classes[int(segment.SegmentNumber)] = kind
    if not classes:
        raise IngestError(label, "not a valid DICOM SEG: it has no SegmentSequence")
    return classes


def _binary_frames(seg_file: DicomFile, numbers: list[int], referenced: list[str]) -> np.ndarray:
    """(slices, rows, columns, segments) of a BINARY or FRACTIONAL SEG, read by highdicom, for
    the ``referenced`` source slices."""
    import highdicom as hd

    label = seg_file.label
    try:
        seg = hd.seg.Segmentation.from_dataset(seg_file.dataset, copy=False)
    except Exception as exc:
        raise IngestError(label, f"not a valid DICOM SEG ({type(exc).__name__}: {exc})") from None
    try:
        return seg.get_pixels_by_source_instance(
            source_sop_instance_uids=referenced,
            segment_numbers=numbers,
            combine_segments=False,
            ignore_spatial_locations=True,
            skip_overlap_checks=True,
        )
    except Exception as exc:
        raise IngestError(
            label, f"its frames cannot be placed on the CT's slices ({type(exc).__name__}: {exc})"
        ) from None


def _label_map_frames(seg_file: DicomFile, numbers: list[int], referenced: list[str]) -> np.ndarray:
    """The same for a LABELMAP SEG (a frame's value is its segment number): each frame is put
    on the slice its DerivationImageSequence names."""
    ds, label = seg_file.dataset, seg_file.label
    try:
        frames = ds.pixel_array
    except Exception as exc:
        raise IngestError(
            label, f"the label map's pixel data cannot be decoded ({type(exc).__name__})"
        ) from None
    frames = frames.reshape(-1, *frames.shape[-2:])
    groups = ds.get("PerFrameFunctionalGroupsSequence", [])
    if len(groups) != frames.shape[0]:
        raise IngestError(label, "the label map has not one per-frame group for each frame")
    index = {uid: position for position, uid in enumerate(referenced)}
    pixels = np.zeros((len(referenced), *frames.shape[1:], len(numbers)), dtype=np.uint8)
    for number, (group, frame) in enumerate(zip(groups, frames, strict=True), start=1):
        try:
            source = group.DerivationImageSequence[0].SourceImageSequence[0]
            uid = str(source.ReferencedSOPInstanceUID)
        except (AttributeError, IndexError):
            raise IngestError(
                label,
                f"frame {number} of the label map names no CT slice (DerivationImageSequence)",
            ) from None
        if uid not in index:
            continue  # a slice of another series, or not referenced: not on this CT
        for segment, value in enumerate(numbers):
            pixels[index[uid], ..., segment] |= frame == value
    return pixels


def _rle_segment(data: bytes, *, limit: int | None = None) -> bytearray:
    """One segment of DICOM RLE (PS3.5 G.3.1, PackBits): a header byte n then n + 1 literal
    bytes (n 0..127) or one byte repeated 1 - n times (n -1..-127); -128 is nothing. Decoding
    stops past ``limit`` bytes (a frame's size: runs cannot inflate a request without end)."""
    out = bytearray()
    position, end = 0, len(data)
    while position < end and (limit is None or len(out) < limit):
        header = data[position]
        position += 1
        if header < 128:
            out += data[position : position + header + 1]
            position += header + 1
        elif header > 128:
            out += data[position : position + 1] * (257 - header)
            position += 1
    return out


def _packed_bit_frames(ds: Dataset, *, label: str) -> np.ndarray:
    """The frames of a 1-bit RLE Lossless SEG as (frames, rows x columns) zeros and ones:
    each frame one RLE segment of the frame's pixels packed eight to a byte."""
    from pydicom.encaps import generate_frames

    size = int(ds.Rows) * int(ds.Columns)
    count = int(ds.get("NumberOfFrames") or 1)
    frames = []
    for number, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=count), 1):
        if len(frame) < 64:
            raise IngestError(label, f"frame {number}'s RLE header is cut short")
        header = np.frombuffer(frame[:64], dtype="<u4")
        if header[0] != 1:
            raise IngestError(
                label, f"frame {number} has {header[0]} RLE segments; 1-bit pixels have one"
            )
        packed = _rle_segment(frame[header[1] :], limit=(size + 7) // 8)
        if len(packed) * 8 < size:
            raise IngestError(label, f"frame {number} holds fewer pixels than Rows x Columns")
        frames.append(np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")[:size])
    return np.stack(frames)


def with_native_pixels(ds: Dataset, *, label: str) -> Dataset:
    """``ds`` with its pixel data decompressed in place (explicit VR little endian), as the
    platform stores and serves objects. OHIF's BINARY SEGs come RLE Lossless with 1 bit
    allocated (each frame's packed bits run-length encoded), which pydicom's RLE decoder
    refuses: those are decoded here; other compressed pixel data by pydicom."""
    meta = getattr(ds, "file_meta", None)
    syntax = pydicom.uid.UID(str(meta.get("TransferSyntaxUID", ""))) if meta else None
    if "PixelData" not in ds or not syntax or not syntax.is_compressed:
        return ds
    try:
        if syntax == RLELossless and int(ds.BitsAllocated) == 1:
            bits = _packed_bit_frames(ds, label=label).ravel()
            packed = np.packbits(bits, bitorder="little").tobytes()
            ds.PixelData = packed + b"\0" * (len(packed) % 2)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = False
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            ds.decompress()
    except IngestError:
        raise
    except Exception as exc:
        raise IngestError(
            label, f"its pixel data cannot be decoded ({type(exc).__name__}: {exc})"
        ) from None
    return ds


def seg_to_canonical(
    seg_file: DicomFile,
    source_uids: list[str],
    *,
    label_pancreas: int,
    label_tumour: int,
    refuse_overlap: bool = False,
) -> np.ndarray:
    """The SEG's segments as a canonical mask (z, y, x) on the CT whose slices have
    ``source_uids`` (in slice order); a voxel in both is tumour, unless ``refuse_overlap``
    (a reader's edit must say which one a voxel is). Slices the SEG does not
    reference are empty (a SEG may reference only the slices it labels). BINARY and FRACTIONAL
    SEGs are read by highdicom, LABELMAP SEGs (OHIF's default) here."""
    label = seg_file.label
    ds = with_native_pixels(seg_file.dataset, label=label)
    classes = _segment_classes(
        ds, label=label, label_pancreas=label_pancreas, label_tumour=label_tumour
    )
    listed = {
        str(item.ReferencedSOPInstanceUID)
        for series in ds.get("ReferencedSeriesSequence", [])
        for item in series.get("ReferencedInstanceSequence", [])
    }
    referenced = [uid for uid in source_uids if uid in listed]
    if not referenced:
        raise IngestError(label, "the SEG does not reference the slices of this patient's CT")
    numbers = sorted(classes)
    if str(peek(ds, "SOPClassUID", "")) == LABEL_MAP_SEGMENTATION_STORAGE:
        pixels = _label_map_frames(seg_file, numbers, referenced)
    else:
        pixels = _binary_frames(seg_file, numbers, referenced)
    if refuse_overlap and ((pixels > 0).sum(axis=-1) > 1).any():
        raise IngestError(label, "its segments overlap: a voxel is either pancreas or tumour")
    rows = {uid: position for position, uid in enumerate(source_uids)}
    mask = np.zeros((len(source_uids), *pixels.shape[1:3]), dtype=np.uint8)
    for kind in (CANONICAL_PANCREAS, CANONICAL_TUMOUR):
        for index, number in enumerate(numbers):
            if classes[number] == kind:
                for position, uid in enumerate(referenced):
                    mask[rows[uid]][pixels[position, ..., index] > 0] = kind
    present = set(np.unique(mask).tolist())
    if CANONICAL_TUMOUR not in present:
        raise IngestError(label, "the SEG has no tumour voxels on this CT: PMPD needs the tumour")
    if CANONICAL_PANCREAS not in present:
        raise IngestError(
            label, "the SEG has no pancreas voxels on this CT: PMPD needs the pancreas"
        )
    return mask


def build_segmentation(
    sources: list[Dataset],
    mask: np.ndarray,
    *,
    series_uid: str,
    sop_uid: str,
    content_date: str,
) -> Dataset:
    """A DICOM SEG (binary, segments 1 pancreas and 2 tumour) of the canonical ``mask`` (z, y,
    x) on the CT slices ``sources`` (in slice order), referencing them."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=CANONICAL_PANCREAS,
            segment_label="Pancreas",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Pancreas,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            display_color=hd.color.CIELabColor.from_rgb(*PANCREAS_DISPLAY_RGB),
        ),
        hd.seg.SegmentDescription(
            segment_number=CANONICAL_TUMOUR,
            segment_label="Tumour",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            display_color=hd.color.CIELabColor.from_rgb(*TUMOUR_DISPLAY_RGB),
        ),
    ]
    # Only the slices that hold a label are the SEG's sources: its frames and references are
    # the same as with every slice, and highdicom's per-source checks dominate its time.
    labelled = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if labelled.size == 0:
        raise ValueError("an empty mask has no segmentation")
    with warnings.catch_warnings():
        # Patient names are study IDs: one component, by design.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        seg = hd.seg.Segmentation(
            source_images=[sources[i] for i in labelled],
            pixel_array=mask[labelled],
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer="PMPD platform",
            manufacturer_model_name="PMPD ingest",
            software_versions="1",
            device_serial_number="none",
            content_label="PMPD_MASKS",
            content_description="Pancreas and tumour",
        )
    seg.SeriesDescription = "Masks: pancreas, tumour"
    seg.ContentDate = seg.SeriesDate = content_date
    seg.ContentTime = seg.SeriesTime = "000000" if content_date else ""
    seg.PatientIdentityRemoved = "YES"
    seg.DeidentificationMethod = list(deid.METHOD)
    seg.DeidentificationMethodCodeSequence = deid.method_code_sequence()
    return seg
