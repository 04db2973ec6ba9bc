"""The real-file corpus: every CT, MR, enhanced CT and SEG file that pydicom and pydicom-data
ship, single slices assembled into series, in every transfer syntax pydicom can write or the
files carry, through the ingest's own steps (read, sort out, de-identify, assemble or place the
SEG), each with its expected outcome: accepted with exact or within-tolerance pixels, or
refused with a named reason; and a CD export with a DICOMDIR written by pydicom's FileSet
(through the whole ingest too in test_ingest.py). The table of outcomes is printed at the end
of the run (tests/imaging/conftest.py)."""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import corpus_outcomes
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from imagemaker import rewrite_transfer_syntax, series_from_slice
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.fileset import FileSet
from pydicom.pixels import apply_modality_lut

from pmpd_web.imaging import deid
from pmpd_web.imaging.dicom_series import assemble_ct, read_dicom, role_of, seg_to_canonical
from pmpd_web.imaging.errors import IngestError
from pmpd_web.imaging.intake import Item, skip_non_images, use_dicomdir
from pmpd_web.imaging.sniff import sniff

SECRET = "corpus-secret"
STUDY_ID = "P-CORPUS"
LOSSY_TOLERANCE_HU = 4  # JPEG-LS near-lossless written with an error bound of 3 stored values


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], list[Path]]  # writes the case's files under a folder
    expected: str  # "exact", "tolerance" or the refusal's reason (a regular expression)
    reference: str = ""  # pydicom-data file whose pixels the accepted series must hold


def data_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not shipped by pydicom or pydicom-data"
    return path


def as_series(name: str) -> Callable[[Path], list[Path]]:
    return lambda folder: series_from_slice(data_file(name), folder, slices=3)


def in_syntax(name: str, transfer_syntax: str) -> Callable[[Path], list[Path]]:
    def build(folder: Path) -> list[Path]:
        paths = series_from_slice(data_file(name), folder, slices=3)
        if transfer_syntax == pydicom.uid.JPEGLSNearLossless:
            for path in paths:
                ds = pydicom.dcmread(path)
                ds.compress(transfer_syntax, jls_error=3, generate_instance_uid=False)
                ds.save_as(path)
        else:
            rewrite_transfer_syntax(paths, transfer_syntax)
        return paths

    return build


def as_is(*names: str) -> Callable[[Path], list[Path]]:
    return lambda folder: [Path(data_file(name)) for name in names]


def ct5n(folder: Path) -> list[Path]:
    return [Path(p) for p in sorted(get_testdata_files("dicomdirtests/98892001/CT5N/*"))]


def cd_export(folder: Path) -> list[Path]:
    """CT5N written as a CD/DVD export by pydicom's FileSet (a DICOMDIR, files without
    extensions), with a README and a zero-byte marker beside it."""
    file_set = FileSet()
    for path in ct5n(folder):
        file_set.add(path)
    file_set.write(folder / "cd")
    (folder / "cd" / "README.TXT").write_text("Images of one study.\n")
    (folder / "cd" / "MARKER").write_bytes(b"")
    return sorted(p for p in (folder / "cd").rglob("*") if p.is_file())


MR_FILES = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "MR_truncated.dcm",
    "examples_overlay.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "MR2_J2KI.dcm",
    "MR2_J2KR.dcm",
    "MR2_UNCI.dcm",
    "MR2_UNCR.dcm",
]
ENHANCED_MR_FILES = [
    "emri_small.dcm",
    "emri_small_RLE.dcm",
    "emri_small_big_endian.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
]
SEG_FILES = ["liver.dcm", "liver_1frame.dcm", "liver_expb.dcm", "liver_expb_1frame.dcm"]
WRITABLE_SYNTAXES = [
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ExplicitVRBigEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
    pydicom.uid.RLELossless,
    pydicom.uid.JPEGLSLossless,
    pydicom.uid.JPEGLSNearLossless,
]

CASES = [
    Case("CT_small as a series", as_series("CT_small.dcm"), "exact", "CT_small.dcm"),
    *[
        Case(
            f"CT_small in {uid.name}",
            in_syntax("CT_small.dcm", uid),
            "tolerance" if uid == pydicom.uid.JPEGLSNearLossless else "exact",
            "CT_small.dcm",
        )
        for uid in WRITABLE_SYNTAXES
    ],
    Case("693_UNCR (uncompressed)", as_series("693_UNCR.dcm"), "exact", "693_UNCR.dcm"),
    Case("693_UNCI (uncompressed)", as_series("693_UNCI.dcm"), "exact", "693_UNCI.dcm"),
    Case("693_J2KR (JPEG 2000 lossless)", as_series("693_J2KR.dcm"), "exact", "693_UNCR.dcm"),
    Case("693_J2KI (JPEG 2000 lossy)", as_series("693_J2KI.dcm"), "exact", "693_UNCI.dcm"),
    Case(
        "TCIA Pancreas-CT slice, UN-encoded attributes (JPEG 2000 lossless)",
        as_series("explicit_VR-UN.dcm"),
        "exact",
        "explicit_VR-UN.dcm",
    ),
    Case(
        "J2K_pixelrep_mismatch (JPEG 2000, signedness differs from the header)",
        as_series("J2K_pixelrep_mismatch.dcm"),
        "exact",
        "J2K_pixelrep_mismatch.dcm",
    ),
    Case(
        "bad_sequence (JPEG lossless, a damaged sequence)",
        as_series("bad_sequence.dcm"),
        "exact",
        "bad_sequence.dcm",
    ),
    Case("CT5N: pydicom's 5-slice CT series", ct5n, "exact", "CT5N"),
    Case("CT5N as a CD export (FileSet DICOMDIR, README, marker)", cd_export, "exact", "CT5N"),
    Case(
        "eCT_Supplemental (enhanced CT)",
        as_is("eCT_Supplemental.dcm"),
        "an enhanced \\(multi-frame\\) CT object",
    ),
    *[
        Case(f"{name} (MR)", as_is(name), "modality MR .*CT series and their masks only")
        for name in MR_FILES
    ],
    *[
        Case(f"{name} (enhanced MR)", as_is(name), "modality MR .*CT series and their masks only")
        for name in ENHANCED_MR_FILES
    ],
    Case(
        "emri_small_jpeg_2k_lossless_too_short (enhanced MR, truncated)",
        as_is("emri_small_jpeg_2k_lossless_too_short.dcm"),
        "not a readable DICOM file: it is truncated or damaged",
    ),
    # Their CT is not shipped: segment 1 passes as pancreas by the upload's label numbers.
    *[
        Case(
            f"{name} (SEG of a liver, without its CT)",
            as_is(name),
            "the SEG does not reference the slices of this patient's CT",
        )
        for name in SEG_FILES
    ],
]


def run_ingest_steps(paths: list[Path]) -> tuple[np.ndarray | None, str]:
    """The ingest's steps on ``paths`` (as ``ingest.planning`` runs them for one patient):
    the HU volume of the one CT series, or the first refusal's reason."""
    items = [Item(None, path.name, path.parts[-4:], path, sniff(path)) for path in paths]
    use_dicomdir(items)
    skip_non_images(items)
    series: dict[str, list] = defaultdict(list)
    segs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on the damaged test files
        try:
            for path in (item.path for item in items if not item.skipped):
                dicom = read_dicom(path, label=path.name)
                role, _ = role_of(dicom)
                if role == "skip":
                    continue
                original_series = str(dicom.dataset.get("SeriesInstanceUID", ""))
                deid.deidentify(dicom.dataset, study_id=STUDY_ID, secret=SECRET)
                (segs if role == "seg" else series[original_series]).append(dicom)
            for seg in segs:
                seg_to_canonical(seg, [], label_pancreas=1, label_tumour=2)
            (files,) = series.values()
            ct = assemble_ct(files, min_slices=3, tolerance_mm=0.01)
        except IngestError as exc:
            return None, str(exc)
    return ct.hu, "accepted"


def reference_hu(name: str) -> np.ndarray:
    """The file's HU as pydicom decodes them, else as SimpleITK (GDCM) does: JPEG lossless
    has no pydicom decoder here."""
    if name == "CT5N":  # the series as SimpleITK reads it
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct5n(Path())[0].parent)))
        return sitk.GetArrayFromImage(reader.Execute()).astype(np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(data_file(name))
        try:
            return np.rint(apply_modality_lut(ds.pixel_array, ds)).astype(np.int16)
        except RuntimeError:
            return sitk.GetArrayFromImage(sitk.ReadImage(data_file(name)))[0].astype(np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_corpus(case, tmp_path):
    hu, outcome = run_ingest_steps(case.build(tmp_path))
    if case.expected in ("exact", "tolerance"):
        assert hu is not None, f"{case.name}: refused: {outcome}"
        detail = f"accepted, {hu.shape[0]} slices of {hu.shape[2]}x{hu.shape[1]}"
        if case.reference:
            reference = reference_hu(case.reference)
            difference = int(np.abs(hu.astype(np.int32) - reference).max())
            limit = LOSSY_TOLERANCE_HU if case.expected == "tolerance" else 0
            assert difference <= limit, f"{case.name}: pixels differ by {difference} HU"
            detail += ", pixels exact" if difference == 0 else f", within {difference} HU"
    else:
        assert hu is None, f"{case.name}: accepted, but it should be refused"
        assert re.search(case.expected, outcome), outcome
        detail = "refused: " + outcome.split(": ", 1)[-1]
    corpus_outcomes.record(case.name, detail)
