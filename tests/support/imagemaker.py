"""Builds image uploads for tests: small phantom patients written as DICOM, NIfTI, NRRD or
MetaImage, ZIPs, and uploads sent through the same chunked API code as a browser's."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from django.test import TestCase

from inference.pmpd.phantom import (
    PhantomConfig,
    PhantomPatient,
    generate_patient,
    write_dicom_series,
    write_nifti,
)
from pmpd_web.imaging.models import ImageUpload
from pmpd_web.imaging.uploads import (
    DeclaredFile,
    create_upload,
    declare_files,
    finish_upload,
    receive_chunk,
)

# Seed 3, patient 2: 16 slices of 64x64 at 2.5 mm; patient 5: the same thickness, another body.
SEED = 3
SMALL = PhantomConfig(size=64, z_extent_mm=40.0)


def small_patient(index: int = 2, *, study_id: str | None = None) -> PhantomPatient:
    patient = generate_patient(index, seed=SEED, config=SMALL)
    if study_id:
        patient.study_id = study_id
    return patient


def dicom_series(patient: PhantomPatient, folder: Path, *, private_tags: bool = True) -> list[Path]:
    """The phantom's CT series, with a few more identifying and private attributes than the
    phantom writes, for de-identification to remove."""
    paths = write_dicom_series(patient, folder)
    if private_tags:
        for path in paths:
            ds = pydicom.dcmread(path)
            block = ds.private_block(0x0009, "ACME SCANNER", create=True)
            block.add_new(0x01, "LO", f"serial for {patient.identifiers['patient_name']}")
            ds.OtherPatientIDs = "OTHER-" + patient.identifiers["patient_id"]
            ds.InstitutionAddress = "1 Hospital Road, Madrid"
            ds.PerformingPhysicianName = "DR^WHO"
            ds.OperatorsName = "OPERATOR^ONE"
            ds.PatientAddress = "2 Home Street"
            ds.StationName = "CT-ROOM-2"
            ds.DeviceSerialNumber = "SN-123456"
            ds.ImageComments = f"patient {patient.identifiers['patient_name']} breath hold"
            ds.save_as(path, enforce_file_format=True)
    return paths


def nifti_pair(patient: PhantomPatient, folder: Path) -> tuple[Path, Path]:
    return write_nifti(patient, folder)


def write_volume(array: np.ndarray, patient: PhantomPatient, path: Path, **geometry) -> Path:
    """``array`` with the patient's geometry (or overrides) in the format of ``path``'s suffix."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.get("spacing", patient.spacing))
    image.SetOrigin(geometry.get("origin", patient.origin))
    image.SetDirection(geometry.get("direction", patient.direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=path.suffix == ".gz")
    return path


def zip_of(files: dict[str, bytes | Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            archive.writestr(name, data)
    return buffer.getvalue()


def upload_files(
    cohort,
    user,
    files: dict[str, bytes | Path],
    *,
    patient=None,
    chunk_size: int = 64 * 1024,
    study_ids: dict[str, str] | None = None,
    **labels,
) -> ImageUpload:
    """An upload with ``files`` (name -> content) sent in chunks, not yet finished."""
    upload = create_upload(cohort=cohort, user=user, patient=patient, **labels)
    contents = {
        name: content.read_bytes() if isinstance(content, Path) else content
        for name, content in files.items()
    }
    declared = declare_files(
        upload,
        [
            DeclaredFile(name=name, size=len(data), study_id=(study_ids or {}).get(name, ""))
            for name, data in contents.items()
        ],
    )
    for upload_file, data in zip(declared, contents.values(), strict=True):
        for offset in range(0, len(data), chunk_size):
            block = data[offset : offset + chunk_size]
            receive_chunk(upload_file, offset=offset, length=len(block), stream=io.BytesIO(block))
    return upload


def ingest(cohort, user, files: dict[str, bytes | Path], **kwargs):
    """Upload ``files`` and run the ingest (eagerly in tests); returns (upload, job).

    The job is published when the transaction that started it commits; the test's never does,
    so its on-commit work runs when ``finish_upload`` returns (the helper behind pytest-django's
    ``django_capture_on_commit_callbacks``)."""
    upload = upload_files(cohort, user, files, **kwargs)
    with TestCase.captureOnCommitCallbacks(execute=True):
        job = finish_upload(upload, user)
    job.refresh_from_db()
    upload.refresh_from_db()
    return upload, job


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """Every file under ``folder`` by its relative path (with ``prefix``), as a dropped folder."""
    return {
        prefix + str(path.relative_to(folder)): path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def rewrite_transfer_syntax(paths: list[Path], transfer_syntax: str) -> None:
    """Rewrite DICOM files in ``transfer_syntax``: implicit or explicit VR, little or big endian
    (pixels byte-swapped as the standard stores them), deflated, or one of the compressed
    syntaxes pydicom can encode."""
    uid = pydicom.uid.UID(transfer_syntax)
    for path in paths:
        ds = pydicom.dcmread(path)
        if uid.is_compressed:
            ds.compress(uid, generate_instance_uid=False)
        else:
            if not uid.is_little_endian:
                pixels = ds.pixel_array
                ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
            ds.file_meta.TransferSyntaxUID = uid
        pydicom.dcmwrite(path, ds, enforce_file_format=True)


def series_from_slice(source: Path | str, folder: Path, *, slices: int = 3) -> list[Path]:
    """A CT series of ``slices`` copies of one real slice (its pixels and transfer syntax kept,
    encapsulated data included), stacked along its normal 2.5 mm apart with their own SOP
    instance UIDs, in one series: real single files become series the ingest accepts."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(source)
    orientation = np.array([float(v) for v in template.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([float(v) for v in template.ImagePositionPatient])
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[str(source), "series"])
    paths = []
    for index in range(slices):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(source), str(index)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + 2.5 * index * normal]
        ds.SliceThickness = "2.5"
        ds.InstanceNumber = index + 1
        path = folder / f"slice-{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ohif_seg(sources, mask, *, label_map: bool) -> pydicom.Dataset:
    """A SEG as OHIF 3.13 writes it (see the design notes): segments coded "Tissue" and named
    as typed, MANUAL "OHIF Brush". LABELMAP (its default): 8-bit label map, RLE Lossless, only
    the painted slices referenced, per-frame groups without FrameContentSequence. BINARY (its
    bitmap mode): every CT slice referenced, 1-bit frames RLE Lossless (``rle_bitmap``)."""
    import highdicom as hd

    tissue = hd.sr.CodedConcept("T-D0050", "SRT", "Tissue")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=tissue,
            segmented_property_type=tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="OHIF Brush", version="1", family=hd.sr.CodedConcept("T-D0050", "SRT", "x")
            ),
        )
        for number, name in ((1, "Pancreas"), (2, "Tumour"))
    ]
    painted = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)) if label_map else None
    chosen = [sources[i] for i in painted] if label_map else sources
    pixels = mask[painted] if label_map else np.stack([mask == 1, mask == 2], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=chosen,
        pixel_array=pixels.astype(np.uint8),
        segmentation_type=(
            hd.seg.SegmentationTypeValues.LABELMAP
            if label_map
            else hd.seg.SegmentationTypeValues.BINARY
        ),
        segment_descriptions=descriptions,
        series_instance_uid="2.25.31",
        series_number=3101,
        sop_instance_uid="2.25.32",
        instance_number=1,
        manufacturer="OHIF",
        manufacturer_model_name="OHIF Viewer",
        software_versions="3.13",
        device_serial_number="none",
        transfer_syntax_uid=(
            pydicom.uid.RLELossless if label_map else pydicom.uid.ExplicitVRLittleEndian
        ),
    )
    if not label_map:
        return rle_bitmap(seg)
    for group in seg.PerFrameFunctionalGroupsSequence:
        del group.FrameContentSequence
    return seg


def _packbits(data: bytes) -> bytes:
    """DICOM RLE (PackBits) of ``data``: runs of three or more equal bytes as replicate runs,
    the rest as literal runs, each at most 128 bytes."""
    out = bytearray()
    position, literal = 0, bytearray()
    while position < len(data):
        run = 1
        while position + run < len(data) and run < 128 and data[position + run] == data[position]:
            run += 1
        if run >= 3:
            if literal:
                out += bytes([len(literal) - 1]) + literal
                literal = bytearray()
            out += bytes([257 - run, data[position]])
            position += run
            continue
        literal.append(data[position])
        position += 1
        if len(literal) == 128:
            out += bytes([127]) + literal
            literal = bytearray()
    if literal:
        out += bytes([len(literal) - 1]) + literal
    return bytes(out)


def rle_bitmap(seg: pydicom.Dataset) -> pydicom.Dataset:
    """A BINARY SEG re-encoded as OHIF 3.13's bitmap mode writes it (seen in the browser test,
    tests/e2e/test_mask_correction.py): RLE Lossless with 1 bit allocated, each frame one RLE
    segment of its pixels packed eight to a byte, least significant bit first."""
    from pydicom.encaps import encapsulate

    frames = []
    for frame in seg.pixel_array.reshape(int(seg.NumberOfFrames), -1):
        packed = _packbits(np.packbits(frame.astype(np.uint8), bitorder="little").tobytes())
        packed += b"\0" * (len(packed) % 2)
        header = np.zeros(16, dtype="<u4")
        header[:2] = (1, 64)
        frames.append(header.tobytes() + packed)
    seg.PixelData = encapsulate(frames)
    seg["PixelData"].VR = "OB"
    seg["PixelData"].is_undefined_length = True
    seg.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    return seg


def ingest_phantom(cohort, user, folder: Path, *, index: int = 2, study_id: str | None = None):
    """A small phantom patient of ``cohort`` ingested from its DICOM CT and NIfTI mask (the
    mask becomes version 1, uploaded and approved). Returns the phantom."""
    from factories import make_patient

    case = small_patient(index, study_id=study_id)
    make_patient(cohort, case.study_id)
    dicom_series(case, folder / case.study_id / "ct", private_tags=False)
    write_volume(case.mask, case, folder / case.study_id / "mask.nii.gz")
    _, job = ingest(cohort, user, folder_files(folder))
    assert job.status == "succeeded", job.error
    return case
