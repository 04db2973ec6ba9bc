"""The pure pieces of the ingest (no database): sniffing, volumes and grids, DICOM series,
the pick rule, writing DICOM and SEG, and unpacking archives safely."""

from __future__ import annotations

import gzip
import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from imagemaker import (
    dicom_series,
    ohif_seg,
    rewrite_transfer_syntax,
    series_from_slice,
    small_patient,
    write_volume,
    zip_of,
)
from pydicom.data import get_testdata_file, get_testdata_files

from pmpd_web.imaging import deid
from pmpd_web.imaging import dicom_series as series_module
from pmpd_web.imaging.archives import ArchiveLimits, extract_zip
from pmpd_web.imaging.dicom_series import (
    Candidate,
    GeneratedUids,
    _rle_segment,
    assemble_ct,
    build_segmentation,
    ct_series_from_volume,
    decimal_string,
    drop_duplicate_instances,
    encode,
    encode_series,
    instance_metadata,
    pick_series,
    read_dicom,
    role_of,
    seg_to_canonical,
    with_native_pixels,
)
from pmpd_web.imaging.errors import IngestError
from pmpd_web.imaging.sniff import Kind, sniff
from pmpd_web.imaging.volumes import (
    Grid,
    Volume,
    align_to_grid,
    canonical_mask,
    content_hash,
    distinct_values,
    label_values,
    read_volume,
    voxel_counts,
    write_nifti,
)

LIMITS = ArchiveLimits(max_files=100, max_total_bytes=50 * 1024 * 1024, max_ratio=100)
# An oblique-free but non-identity direction: x flipped, y and z kept (exact in float32).
FLIPPED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def ct5n_files() -> list[str]:
    """pydicom's 5-slice CT series (16x16 pixels, 2.5 mm) from its DICOMDIR test set."""
    files = sorted(get_testdata_files("dicomdirtests/98892001/CT5N/*"))
    assert len(files) == 5
    return files


def read_all(paths) -> list:
    return [read_dicom(Path(p), label=Path(p).name) for p in paths]


# ----------------------------------------------------------------------------------------------
# Sniffing: content, never the name


def test_content_decides_never_the_extension(tmp_path):
    patient = small_patient()
    dicom = dicom_series(patient, tmp_path / "ct", private_tags=False)[0]
    cases = {
        "scan.txt": dicom.read_bytes(),
        "image.dcm": write_volume(patient.ct, patient, tmp_path / "v.nii.gz").read_bytes(),
        "plain.dcm": write_volume(patient.ct, patient, tmp_path / "v.nii").read_bytes(),
        "volume.bin": write_volume(patient.ct, patient, tmp_path / "v.nrrd").read_bytes(),
        "volume.dat": write_volume(patient.ct, patient, tmp_path / "v.mha").read_bytes(),
        "archive.nii": zip_of({"a/b.dcm": dicom}),
        "empty.dcm": b"PK\x05\x06" + b"\x00" * 18,
        "list.dcm": b"study_id,file\nP-1,a/b.dcm\n",
        "fake.dcm": b"this is not DICOM at all, just text that ends in .dcm\n" * 4,
        "gzip.nii.gz": __import__("gzip").compress(b"not a nifti" * 100),
    }
    expected = {
        "scan.txt": Kind.DICOM,
        "image.dcm": Kind.NIFTI_GZ,
        "plain.dcm": Kind.NIFTI,
        "volume.bin": Kind.NRRD,
        "volume.dat": Kind.METAIMAGE,
        "archive.nii": Kind.ZIP,
        "empty.dcm": Kind.ZIP,
        "list.dcm": Kind.MANIFEST,
        "fake.dcm": Kind.UNKNOWN,
        "gzip.nii.gz": Kind.UNKNOWN,
    }
    for name, data in cases.items():
        path = tmp_path / "sniff" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        assert sniff(path) == expected[name], name


# ----------------------------------------------------------------------------------------------
# Volumes and grids


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_volume_round_trips_keep_geometry_exactly(tmp_path, suffix):
    patient = small_patient()
    origin = (patient.origin[0] + 0.125, patient.origin[1] - 3.5, patient.origin[2])
    path = write_volume(
        patient.ct, patient, tmp_path / f"ct{suffix}", origin=origin, direction=FLIPPED
    )
    volume = read_volume(path, label=path.name)
    assert volume.grid.spacing == patient.spacing
    assert volume.grid.origin == origin
    assert volume.grid.direction == FLIPPED
    assert volume.grid.size == (64, 64, patient.ct.shape[0])
    np.testing.assert_array_equal(volume.array, patient.ct)
    # ... and so does the canonical NIfTI written from it.
    canonical = tmp_path / "canonical.nii.gz"
    write_nifti(volume.array, volume.grid, canonical, compression_level=1)
    again = read_volume(canonical, label="canonical")
    assert again.grid == volume.grid
    np.testing.assert_array_equal(again.array, patient.ct)


def test_canonical_nifti_is_deterministic_and_multi_member_gzip_reads(tmp_path, monkeypatch):
    from pmpd_web.imaging import volumes

    patient = small_patient()
    grid = Grid((64, 64, patient.ct.shape[0]), patient.spacing, patient.origin, patient.direction)
    monkeypatch.setattr(volumes, "GZIP_BLOCK", 16 * 1024)  # several gzip members
    for name in ("a.nii.gz", "b.nii.gz"):
        write_nifti(patient.ct, grid, tmp_path / name, compression_level=1, threads=2)
    data = (tmp_path / "a.nii.gz").read_bytes()
    assert data == (tmp_path / "b.nii.gz").read_bytes()
    assert data.count(b"\x1f\x8b\x08") > 1
    image = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), patient.ct)


# A direction with the axes swapped and one flipped (a determinant of +1; FLIPPED has -1).
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("direction", [None, FLIPPED, ROTATED])
@pytest.mark.parametrize("volume", ["ct", "mask"])
def test_canonical_nifti_holds_the_bytes_simpleitk_writes(tmp_path, volume, direction):
    """The voxels are written from the array itself, under the header SimpleITK writes for a
    one-voxel image of the grid: the file is byte for byte SimpleITK's own."""
    patient = small_patient()
    array = patient.ct if volume == "ct" else patient.mask
    grid = Grid(
        (64, 64, patient.ct.shape[0]),
        patient.spacing,
        patient.origin,
        direction or patient.direction,
    )
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    sitk.WriteImage(image, str(tmp_path / "sitk.nii"), useCompression=False)
    expected = (tmp_path / "sitk.nii").read_bytes()
    write_nifti(array, grid, tmp_path / "ours.nii", compression_level=0)
    assert (tmp_path / "ours.nii").read_bytes() == expected
    write_nifti(array[:, ::-1, :], grid, tmp_path / "view.nii", compression_level=0)
    flipped = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "view.nii")))
    np.testing.assert_array_equal(flipped, array[:, ::-1, :])  # a view is written as it reads
    write_nifti(array, grid, tmp_path / "ours.nii.gz", compression_level=1)
    assert gzip.decompress((tmp_path / "ours.nii.gz").read_bytes()) == expected
    with pytest.raises(ValueError, match="is not on a grid of size"):
        write_nifti(array[1:], grid, tmp_path / "short.nii", compression_level=0)


def test_distinct_values_and_voxel_counts_block_by_block():
    """Blocks of few values (most of a mask) are settled by their extremes, others counted;
    the answer is the same whichever way each block goes."""
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 512, 512), dtype=np.uint8)  # 10 million voxels: three blocks
    mask[5, 100:140, 200:260] = 1
    mask[6, 110:120, 210:215] = 2
    mask[35, 0, 0] = 7
    assert distinct_values(mask, limit=16).tolist() == [0, 1, 2, 7]
    assert voxel_counts(mask, (1, 2, 7)) == [40 * 60, 50, 1]
    assert voxel_counts(mask, (0,)) == [mask.size - 40 * 60 - 50 - 1]
    signed = mask.astype(np.int16) * 100 - 50  # a span of 750 in one block, 0 in others
    assert distinct_values(signed, limit=16).tolist() == [-50, 50, 150, 650]
    assert distinct_values(signed, limit=3) is None
    wide = rng.integers(-1000, 1000, size=(40, 512, 512), dtype=np.int16)
    assert distinct_values(wide, limit=16) is None
    sparse = np.zeros((40, 512, 512), dtype=np.int16)
    sparse[0, 0, :20] = np.arange(20) * 1000  # few in the sample, 20 in the volume
    assert distinct_values(sparse, limit=16) is None
    as_float = mask.astype(np.float32) / 2
    assert distinct_values(as_float, limit=16).tolist() == [0.0, 0.5, 1.0, 3.5]


def test_masks_are_told_from_cts_by_their_voxels():
    patient = small_patient()
    grid = Grid((64, 64, patient.ct.shape[0]), patient.spacing, patient.origin, patient.direction)
    labels = {1, 2}
    assert label_values(Volume(patient.ct, grid), name="mask.nii.gz", labels=labels) is None
    assert list(label_values(Volume(patient.mask, grid), name="ct.nii", labels=labels)) == [0, 1, 2]
    as_float = patient.mask.astype(np.float32)
    assert label_values(Volume(as_float, grid), name="x", labels=labels) is not None
    other = (patient.mask * 3).astype(np.int16)  # 0, 3, 6: not this upload's labels
    assert label_values(Volume(other, grid), name="scan.nii", labels=labels) is None
    assert label_values(Volume(other, grid), name="liver_seg.nii", labels=labels) is not None


def test_label_conventions_are_remapped_and_checked():
    patient = small_patient()
    custom = np.where(patient.mask == 1, 3, np.where(patient.mask == 2, 7, 0)).astype(np.int16)
    canonical = canonical_mask(custom, label="m", label_pancreas=3, label_tumour=7)
    np.testing.assert_array_equal(canonical, patient.mask)
    assert canonical.dtype == np.uint8
    with pytest.raises(IngestError, match=r"no tumour voxels \(label 2\)"):
        canonical_mask(
            np.where(patient.mask == 2, 1, patient.mask),
            label="m",
            label_pancreas=1,
            label_tumour=2,
        )
    with pytest.raises(
        IngestError, match=r"labels \['5'\] that are not in this upload's label set"
    ):
        canonical_mask(
            np.where(patient.mask == 2, 5, patient.mask),
            label="m",
            label_pancreas=1,
            label_tumour=2,
        )


def test_a_flipped_mask_is_put_on_the_ct_grid_losslessly_and_another_grid_is_refused():
    patient = small_patient()
    n = patient.ct.shape[0]
    ct_grid = Grid((64, 64, n), patient.spacing, patient.origin, patient.direction)
    # The same voxels stored with x running the other way (origin at the other end).
    flipped_origin = (patient.origin[0] + 63 * patient.spacing[0], *patient.origin[1:])
    flipped = Volume(
        patient.mask[:, :, ::-1].copy(), Grid((64, 64, n), patient.spacing, flipped_origin, FLIPPED)
    )
    aligned = align_to_grid(
        flipped, ct_grid, label="m", tolerance_mm=0.01, direction_tolerance=1e-4
    )
    np.testing.assert_array_equal(aligned, patient.mask)
    shifted = Volume(
        patient.mask,
        Grid(
            (64, 64, n),
            patient.spacing,
            (patient.origin[0] + 5, *patient.origin[1:]),
            patient.direction,
        ),
    )
    with pytest.raises(IngestError, match="not on the CT's grid: origin"):
        align_to_grid(shifted, ct_grid, label="m", tolerance_mm=0.01, direction_tolerance=1e-4)
    smaller = Volume(
        patient.mask[1:], Grid((64, 64, n - 1), patient.spacing, patient.origin, patient.direction)
    )
    with pytest.raises(IngestError, match="size"):
        align_to_grid(smaller, ct_grid, label="m", tolerance_mm=0.01, direction_tolerance=1e-4)


# ----------------------------------------------------------------------------------------------
# DICOM series


def test_pydicom_ct_series_is_assembled_like_simpleitk_reads_it():
    files = ct5n_files()
    series = assemble_ct(read_all(files), min_slices=3, tolerance_mm=0.01)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(Path(files[0]).parent)))
    image = reader.Execute()
    np.testing.assert_array_equal(series.hu, sitk.GetArrayFromImage(image).astype(np.int16))
    np.testing.assert_allclose(series.grid.spacing, image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(series.grid.origin, image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(series.grid.direction, image.GetDirection(), atol=1e-6)
    assert series.manufacturer == "GE MEDICAL SYSTEMS" and series.slice_thickness_mm == 2.5


def test_series_problems_name_the_file_and_the_reason(tmp_path):
    patient = small_patient()
    paths = dicom_series(patient, tmp_path / "ct", private_tags=False)
    files = read_all(paths)
    with pytest.raises(IngestError, match="1 slice: a CT needs at least 8"):
        assemble_ct(files[:1], min_slices=8, tolerance_mm=0.01)
    gap = files[:5] + files[6:]
    with pytest.raises(IngestError, match="uneven slice spacing.*missing slices"):
        assemble_ct(gap, min_slices=8, tolerance_mm=0.01)
    twice = read_all(paths)
    twice[3].dataset.SOPInstanceUID = "1.2.3.4"
    twice[3].dataset.ImagePositionPatient = files[2].dataset.ImagePositionPatient
    with pytest.raises(IngestError, match="two slices at the same position"):
        assemble_ct(twice, min_slices=8, tolerance_mm=0.01)
    burned = read_all(paths)
    burned[0].dataset.BurnedInAnnotation = "YES"
    with pytest.raises(IngestError, match="burned-in annotation"):
        assemble_ct(burned, min_slices=8, tolerance_mm=0.01)
    mr = read_dicom(Path(get_testdata_file("MR_small.dcm")), label="mr/1.dcm")
    with pytest.raises(IngestError, match="mr/1.dcm: modality MR .*CT series and their masks only"):
        role_of(mr)


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.ExplicitVRBigEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
    ],
    ids=lambda uid: uid.name,
)
def test_uncompressed_transfer_syntaxes_give_the_same_volume(tmp_path, transfer_syntax):
    """Implicit VR (the DICOM default) was refused with "Rows 64 differs from the series' 64";
    big endian ended in NotImplementedError."""
    patient = small_patient()
    paths = dicom_series(patient, tmp_path / "ct", private_tags=False)
    rewrite_transfer_syntax(paths, transfer_syntax)
    files = read_all(paths)
    series = assemble_ct(files, min_slices=8, tolerance_mm=0.01)
    np.testing.assert_array_equal(series.hu, patient.ct)
    stored = pydicom.dcmread(io.BytesIO(next(encode_series(series.datasets))))
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(stored.pixel_array.astype(np.int32) - 1024, patient.ct[0])
    assert (
        stored.Rows == 64 and stored.ImagePositionPatient == files[0].dataset.ImagePositionPatient
    )


@pytest.mark.parametrize("deferred_bytes", [64 * 1024, 64], ids=["pixels read", "pixels deferred"])
def test_duplicate_instances_keep_the_complete_copy_whatever_the_order(
    tmp_path, monkeypatch, deferred_bytes
):
    """A truncated copy is told from the complete one whether its pixels were read or left in
    the file (the file's size then says what it holds)."""
    monkeypatch.setattr(series_module, "DEFERRED_BYTES", deferred_bytes)
    patient = small_patient()
    paths = dicom_series(patient, tmp_path / "ct", private_tags=False)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(paths[3].read_bytes()[:-3000])
    for order in ([*paths, truncated], [truncated, *paths]):
        files = read_all(order)
        kept, dropped = drop_duplicate_instances(files)
        assert len(kept) == len(paths) and [d.label for d, _ in dropped] == ["truncated.dcm"]
        assert "an incomplete second copy of the SOP instance in CT0004.dcm" in dropped[0][1]
        series = assemble_ct(files, min_slices=8, tolerance_mm=0.01)
        np.testing.assert_array_equal(series.hu, patient.ct)


def test_pixels_left_in_the_file_are_read_when_used_and_never_kept(tmp_path, monkeypatch):
    """Issue 10 (ingest speed, memory): a slice's pixel data stay in its file until the HU
    volume and the stored copy need them, and are not kept in the dataset after; the volume,
    the stored files and their DICOM JSON are byte for byte those of a full read."""
    patient = small_patient()
    paths = dicom_series(patient, tmp_path / "ct", private_tags=False)

    def ingested(deferred_bytes):
        monkeypatch.setattr(series_module, "DEFERRED_BYTES", deferred_bytes)
        files = read_all(paths)
        series = assemble_ct(files, min_slices=8, tolerance_mm=0.01)
        return (
            files,
            series,
            list(encode_series(series.datasets)),
            instance_metadata(series.datasets),
        )

    def left_in_file(files):
        return [f.dataset.get_item(0x7FE00010, keep_deferred=True).value is None for f in files]

    files, series, encoded, metadata = ingested(64)
    assert all(left_in_file(files))  # after the HU volume, the stored copies and the JSON
    full_files, full_series, full_encoded, full_metadata = ingested(None)
    assert not any(left_in_file(full_files))
    np.testing.assert_array_equal(series.hu, patient.ct)
    np.testing.assert_array_equal(series.hu, full_series.hu)
    assert encoded == full_encoded and metadata == full_metadata
    stored = pydicom.dcmread(io.BytesIO(encoded[0]))
    assert stored.PixelData == full_files[0].dataset.PixelData


def _stored(files, stored: np.ndarray, *, slopes=None, intercepts=None, **attributes):
    """The read slices of ``files`` given the pixel values ``stored`` (one per slice), the
    header values ``attributes`` and per-slice rescale slopes and intercepts."""
    for index, dicom in enumerate(files):
        ds = dicom.dataset
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.RescaleSlope = str(slopes[index]) if slopes is not None else "1"
        ds.RescaleIntercept = str(intercepts[index]) if intercepts is not None else "0"
        ds.PixelData = np.ascontiguousarray(stored[index]).tobytes()
    return files


def _pixels(rng, shape, dtype, low, high):
    return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize(
    "case",
    [
        "unsigned 12 bits, high bits set on one slice",
        "signed 12 bits, two's complement in 12 bits on one slice",
        "an intercept per slice",
        "slope 0.5",
        "unsigned 16 bits above 32767",
        "unsigned 16 bits, above 32767 in the last slice only",
        "8-bit pixels",
    ],
)
def test_stored_values_become_hounsfield_units(tmp_path, monkeypatch, case):
    """The usual series is converted slice by slice; the answer is that of the whole series'
    stored values rescaled at once (the bits past BitsStored cleared or sign-extended). The
    content hash computed while the volume is filled (slabs of 2 slices here) is that of the
    finished volume, also when a late slice sends the series to the floating-point path."""
    monkeypatch.setattr(series_module, "HASH_SLAB", 2)
    rng = np.random.default_rng(11)
    patient = small_patient()
    files = read_all(dicom_series(patient, tmp_path / "ct", private_tags=False))
    shape = (len(files), 64, 64)
    n = len(files)
    intercepts, slopes = [-1024] * n, [1] * n
    header = {"BitsAllocated": 16, "BitsStored": 12, "HighBit": 11, "PixelRepresentation": 0}
    if case.startswith("unsigned 12"):
        stored = _pixels(rng, shape, np.uint16, 0, 4095)
        expected = stored.astype(np.int32) - 1024
        stored[3, :5] |= 0xF000  # what a scanner left in the unused bits
    elif case.startswith("signed 12"):
        header["PixelRepresentation"] = 1
        stored = _pixels(rng, shape, np.int16, -2048, 2047)
        intercepts = [0] * n
        expected = stored.astype(np.int32)
        stored[2] = (stored[2].view(np.uint16) & 0x0FFF).view(np.int16)
    elif case == "an intercept per slice":
        stored = _pixels(rng, shape, np.uint16, 0, 4095)
        intercepts = [-1024 + index for index in range(n)]
        expected = stored.astype(np.int32) + np.array(intercepts)[:, None, None]
    elif case == "slope 0.5":
        stored = _pixels(rng, shape, np.uint16, 0, 4095)
        slopes = [0.5] * n
        expected = np.rint(stored * 0.5 - 1024).astype(np.int32)
    elif case == "unsigned 16 bits, above 32767 in the last slice only":
        header.update(BitsStored=16, HighBit=15)
        stored = _pixels(rng, shape, np.uint16, 0, 4095)
        stored[-1, 0, 0] = 40000
        intercepts = [-32768] * n
        expected = stored.astype(np.int32) - 32768
    elif case.startswith("unsigned 16"):
        header.update(BitsStored=16, HighBit=15)
        stored = _pixels(rng, shape, np.uint16, 30000, 40000)
        intercepts = [-32768] * n
        expected = stored.astype(np.int32) - 32768
    else:
        header.update(BitsAllocated=8, BitsStored=8, HighBit=7)
        stored = _pixels(rng, shape, np.uint8, 0, 255)
        intercepts = [-100] * n
        expected = stored.astype(np.int32) - 100
    files = _stored(files, stored, slopes=slopes, intercepts=intercepts, **header)
    series = assemble_ct(files, min_slices=8, tolerance_mm=0.01, hash_while_filling=True)
    assert series.hu.dtype == np.int16
    np.testing.assert_array_equal(series.hu, expected)
    assert series.streamed_hash.hexdigest() == content_hash(series.hu, series.grid)


def test_hounsfield_units_that_do_not_fit_16_bits_are_refused(tmp_path):
    patient = small_patient()
    files = read_all(dicom_series(patient, tmp_path / "ct", private_tags=False))
    stored = np.full((len(files), 64, 64), 100, dtype=np.int16)
    stored[-1, 0, 0] = 32700
    files = _stored(
        files,
        stored,
        intercepts=[100] * len(files),
        PixelRepresentation=1,
        BitsStored=16,
        HighBit=15,
    )
    with pytest.raises(IngestError, match="do not fit 16-bit Hounsfield units"):
        assemble_ct(files, min_slices=8, tolerance_mm=0.01)


def test_a_decoded_lossy_transfer_syntax_is_marked_lossy(tmp_path):
    paths = series_from_slice(get_testdata_file("693_J2KI.dcm"), tmp_path / "ct", slices=3)
    series = assemble_ct(read_all(paths), min_slices=3, tolerance_mm=0.01)
    stored = pydicom.dcmread(io.BytesIO(next(encode_series(series.datasets))))
    assert stored.LossyImageCompression == "01"
    assert stored.LossyImageCompressionMethod == "ISO_15444_1"
    assert float(stored.LossyImageCompressionRatio) > 1  # the encoder's, without its method
    uncompressed = series_from_slice(get_testdata_file("693_UNCI.dcm"), tmp_path / "u", slices=2)
    for path in uncompressed:
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.JPEGLSNearLossless, jls_error=3)
        ds.save_as(path)
    series = assemble_ct(read_all(uncompressed), min_slices=2, tolerance_mm=0.01)
    marked = series.datasets[0]  # 693_UNCI was decoded from JPEG 2000 and says so
    assert list(marked.LossyImageCompressionMethod) == ["ISO_15444_1", "ISO_14495_1"]
    assert len(marked.LossyImageCompressionRatio) == 2
    assert float(marked.LossyImageCompressionRatio[1]) > 2
    lossless = series_from_slice(get_testdata_file("693_J2KR.dcm"), tmp_path / "r", slices=3)
    series = assemble_ct(read_all(lossless), min_slices=3, tolerance_mm=0.01)
    assert "LossyImageCompressionMethod" not in series.datasets[0]


def test_compressed_slices_are_decoded_for_storage(tmp_path):
    patient = small_patient()
    paths = dicom_series(patient, tmp_path / "ct", private_tags=False)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(path)
    files = read_all(paths)
    series = assemble_ct(files, min_slices=8, tolerance_mm=0.01)
    np.testing.assert_array_equal(series.hu, patient.ct)
    again = pydicom.dcmread(io.BytesIO(encode(series.datasets[0])))
    assert again.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(again.pixel_array.astype(np.int32) - 1024, patient.ct[0])


def test_the_pick_rule():
    def candidate(key, **values):
        base = dict(
            has_mask=False,
            phase="unknown",
            slice_thickness_mm=2.0,
            rows=512,
            n_slices=100,
            series_number=3,
        )
        return Candidate(key=key, **{**base, **values})

    thin_arterial = candidate("thin arterial", phase="arterial", slice_thickness_mm=0.625)
    venous = candidate("venous", phase="portal_venous", slice_thickness_mm=2.5)
    venous_thin = candidate("venous thin", phase="portal_venous", slice_thickness_mm=1.0)
    masked = candidate("masked", slice_thickness_mm=5.0, has_mask=True)
    assert pick_series([thin_arterial, venous])[0] == "venous"
    key, reason = pick_series([thin_arterial, venous, venous_thin])
    assert key == "venous thin" and "portal venous" in reason and "1 mm" in reason
    assert pick_series([thin_arterial, venous, masked])[0] == "masked"
    assert pick_series([candidate("b", rows=256), candidate("a")])[0] == "a"


def test_decimal_strings_are_exact_when_they_can_be():
    assert decimal_string(0.7666015625) == "0.7666015625"
    assert decimal_string(-171.0) == "-171.0"
    assert len(decimal_string(1 / 3)) <= 16


def _uids(prefix: str) -> GeneratedUids:
    return GeneratedUids(
        study=deid.derived_uid(prefix, "study", study_id="P", secret="s"),
        series=deid.derived_uid(prefix, "series", study_id="P", secret="s"),
        frame_of_reference=deid.derived_uid(prefix, "frame", study_id="P", secret="s"),
        instance=lambda i: deid.derived_uid(prefix, "instance", i, study_id="P", secret="s"),
    )


def test_a_volume_becomes_a_dicom_series_that_reads_back_the_same(tmp_path):
    patient = small_patient()
    grid = Grid((64, 64, patient.ct.shape[0]), patient.spacing, patient.origin, patient.direction)
    datasets = ct_series_from_volume(
        patient.ct, grid, study_id="P", uids=_uids("v"), description="CT"
    )
    folder = tmp_path / "out"
    folder.mkdir()
    for index, data in enumerate(encode_series(datasets)):
        (folder / f"{index:04d}.dcm").write_bytes(data)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), patient.ct)
    assert image.GetSpacing() == patient.spacing and image.GetOrigin() == patient.origin
    first = pydicom.dcmread(folder / "0000.dcm")
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.PatientName == "P" and first.PatientIdentityRemoved == "YES"


def test_series_encoding_and_metadata_equal_pydicoms_own(tmp_path):
    patient = small_patient()
    files = read_all(dicom_series(patient, tmp_path / "ct"))
    for dicom in files:
        deid.deidentify(dicom.dataset, study_id="P", secret="s")
    datasets = [f.dataset for f in files]
    assert list(encode_series(datasets)) == [encode(ds) for ds in datasets]
    grid = Grid((64, 64, patient.ct.shape[0]), patient.spacing, patient.origin, patient.direction)
    built = ct_series_from_volume(patient.ct, grid, study_id="P", uids=_uids("e"), description="")
    assert list(encode_series(built)) == [encode(ds) for ds in built]
    odd = built[:2]  # 8-bit pixels of odd count: the writer pads them
    for ds in odd:
        ds.Rows, ds.Columns = 3, 3
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = bytes(range(9))
        ds["PixelData"].VR = "OB"
    assert list(encode_series(odd)) == [encode(ds) for ds in odd]
    metadata = instance_metadata(datasets)
    for ds, meta in zip(datasets, metadata, strict=True):
        expected = {k: v for k, v in ds.to_json_dict().items() if k != "7FE00010"}
        assert meta == expected
        assert "7FE00010" not in meta


def test_segmentation_out_and_in(tmp_path):
    patient = small_patient()
    files = read_all(dicom_series(patient, tmp_path / "ct", private_tags=False))
    series = assemble_ct(files, min_slices=8, tolerance_mm=0.01)
    seg = build_segmentation(
        series.datasets,
        patient.mask,
        series_uid="2.25.1",
        sop_uid="2.25.2",
        content_date="20200101",
    )
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Pancreas", "Tumour"]
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    referenced = {
        i.ReferencedSOPInstanceUID
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced <= {str(ds.SOPInstanceUID) for ds in series.datasets}
    path = tmp_path / "seg.dcm"
    path.write_bytes(encode(seg))
    back = seg_to_canonical(
        read_dicom(path, label="seg.dcm"),
        [str(ds.SOPInstanceUID) for ds in series.datasets],
        label_pancreas=1,
        label_tumour=2,
    )
    np.testing.assert_array_equal(back, patient.mask)


def _partly_labelled(patient) -> np.ndarray:
    """The phantom's mask with its first and last slices empty."""
    mask = patient.mask.copy()
    mask[:4] = 0
    mask[-3:] = 0
    assert mask.any() and (mask == 2).any()
    return mask


def test_a_seg_that_references_only_its_labelled_slices(tmp_path):
    """The platform's own SEG (only the labelled slices referenced) was refused on upload:
    "KeyError: SOP Instance UID(s) [...] do not match any referenced source instances"."""
    patient = small_patient()
    series = assemble_ct(
        read_all(dicom_series(patient, tmp_path / "ct", private_tags=False)),
        min_slices=8,
        tolerance_mm=0.01,
    )
    mask = _partly_labelled(patient)
    seg = build_segmentation(
        series.datasets, mask, series_uid="2.25.1", sop_uid="2.25.2", content_date=""
    )
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert len(referenced) < len(series.datasets)
    path = tmp_path / "seg.dcm"
    path.write_bytes(encode(seg))
    back = seg_to_canonical(
        read_dicom(path, label="seg.dcm"),
        [str(ds.SOPInstanceUID) for ds in series.datasets],
        label_pancreas=1,
        label_tumour=2,
    )
    np.testing.assert_array_equal(back, mask)


def test_dicom_rle_segments_decode_as_packbits():
    """Apple's PackBits example (literal runs, replicate runs, a no-op byte)."""
    encoded = bytes.fromhex("FEAA 0280002A FDAA 0380002A22 F7AA 80")
    expected = bytes.fromhex("AAAAAA80002AAAAAAAAA80002A22" + "AA" * 10)
    assert bytes(_rle_segment(encoded)) == expected
    assert len(_rle_segment(bytes([129, 7]) * 1000, limit=300)) < 300 + 128


@pytest.mark.slow
@pytest.mark.parametrize("label_map", [True, False], ids=["LABELMAP", "BINARY"])
def test_segs_as_ohif_writes_them(tmp_path, label_map):
    import highdicom as hd

    patient = small_patient()
    series = assemble_ct(
        read_all(dicom_series(patient, tmp_path / "ct", private_tags=False)),
        min_slices=8,
        tolerance_mm=0.01,
    )
    mask = _partly_labelled(patient)
    seg = ohif_seg(series.datasets, mask, label_map=label_map)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    dicom = read_dicom(path, label="seg.dcm")
    assert role_of(dicom) == ("seg", "DICOM SEG")
    if label_map:
        assert dicom.dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
        # Why the label map is read here: highdicom 0.28 wants a FrameContentSequence.
        with pytest.raises(AttributeError, match="FrameContentSequence"):
            hd.seg.Segmentation.from_dataset(pydicom.dcmread(path))
    back = seg_to_canonical(
        dicom,
        [str(ds.SOPInstanceUID) for ds in series.datasets],
        label_pancreas=1,
        label_tumour=2,
    )
    np.testing.assert_array_equal(back, mask)


# ----------------------------------------------------------------------------------------------
# Archives


def _zip(tmp_path, name: str, build) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        build(archive)
    return path


def test_archive_entries_get_generated_names_and_clutter_is_left_out(tmp_path):
    path = _zip(
        tmp_path,
        "ok.zip",
        lambda z: [
            z.writestr("P-1/ct/1.dcm", b"x"),
            z.writestr("__MACOSX/._1.dcm", b"y"),
            z.writestr("P-1/.DS_Store", b"z"),
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    entries = extract_zip(path, out, label="ok.zip", limits=LIMITS)
    assert [e.name for e in entries] == ["P-1/ct/1.dcm"]
    assert entries[0].path == out / "000001" and entries[0].path.read_bytes() == b"x"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "build", "message"),
    [
        ("slip.zip", lambda z: z.writestr("../../evil.dcm", b"x"), "outside the archive's folder"),
        (
            "absolute.zip",
            lambda z: z.writestr("/etc/cron.d/x", b"x"),
            "outside the archive's folder",
        ),
        (
            "drive.zip",
            lambda z: z.writestr("C:\\Windows\\x.dcm", b"x"),
            "outside the archive's folder",
        ),
        ("empty.zip", lambda z: None, "the ZIP archive is empty"),
        (
            "many.zip",
            lambda z: [z.writestr(f"f{i}", b"x") for i in range(101)],
            "holds 101 files, more than the limit of 100",
        ),
        (
            "bomb.zip",
            lambda z: z.writestr("zeros.raw", b"\0" * (20 * 1024 * 1024)),
            "refused as a zip bomb",
        ),
        (
            "big.zip",
            lambda z: [
                z.writestr(f"r{i}.raw", np.random.default_rng(i).bytes(9 * 1024 * 1024))
                for i in range(6)
            ],
            "expands to .* bytes, more than the limit",
        ),
    ],
)
def test_unsafe_archives_are_refused(tmp_path, name, build, message):
    path = _zip(tmp_path, name, build)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IngestError, match=message):
        extract_zip(path, out, label=name, limits=LIMITS)
    assert not any(out.iterdir())


def test_symbolic_links_in_archives_are_refused(tmp_path):
    def build(archive):
        info = zipfile.ZipInfo("P-1/link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")

    path = _zip(tmp_path, "link.zip", build)
    with pytest.raises(IngestError, match="symbolic link: refused"):
        extract_zip(path, tmp_path, label="link.zip", limits=LIMITS)


def test_an_archive_that_lies_about_its_sizes_is_stopped(tmp_path):
    path = _zip(tmp_path, "liar.zip", lambda z: z.writestr("a.raw", b"\0" * 4_000_000))
    data = bytearray(path.read_bytes())
    # Shrink the declared uncompressed size in the central directory and the local header.
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        at = data.find(signature)
        data[at + offset : at + offset + 4] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(IngestError, match="(inflates beyond its declared size|cannot be read)"):
        extract_zip(path, tmp_path, label="liar.zip", limits=LIMITS)


def test_a_seg_without_file_meta_or_compression_is_left_as_it_is():
    seg = pydicom.Dataset()
    seg.PixelData = b"\x01\x00"
    assert with_native_pixels(seg, label="seg.dcm") is seg and seg.PixelData == b"\x01\x00"
