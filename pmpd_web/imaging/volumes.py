"""Volumes and their grids: reading NIfTI, NRRD and MetaImage, telling masks from CTs, putting a
mask on its CT's grid, and writing the canonical NIfTI volumes the engine reads.

``Volume`` and ``Grid`` are the engine's (``inference.pmpd.volume``: the one definition that
the engine, the nnU-Net core and this app share; its docstring gives the axis conventions).
The canonical CT is int16 Hounsfield units, the canonical mask uint8 with 0 background,
1 pancreas, 2 tumour.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from inference.pmpd.volume import Grid, Volume, format_values

from .errors import IngestError

# A non-DICOM volume is a label map (mask) when its voxels are integers with at most this many
# distinct values; a CT has hundreds.
MAX_MASK_LABELS = 16
MASK_NAME_HINTS = ("mask", "seg", "label", "annot", "roi")
GZIP_BLOCK = 8 * 1024 * 1024
CANONICAL_PANCREAS = 1
CANONICAL_TUMOUR = 2


def _hash_header(dtype: np.dtype, shape: tuple[int, ...], grid: Grid) -> bytes:
    return json.dumps([str(dtype), list(shape), grid.as_dict()]).encode()


def content_hash(array: np.ndarray, grid: Grid) -> str:
    """SHA-256 of a volume's voxels (with their type and shape) and its grid."""
    digest = hashlib.sha256(_hash_header(array.dtype, array.shape, grid))
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


class StreamedHash:
    """``content_hash`` of a volume that is filled slab by slab: each finished slab (in order,
    C-contiguous) is hashed by a thread of its own (hashlib releases the GIL for large
    buffers) while the caller fills the next, so the hash is ready about when the volume is
    rather than a whole pass over it later. ``hexdigest`` gives the same value as
    ``content_hash`` of the whole volume."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...], grid: Grid) -> None:
        self._header = _hash_header(np.dtype(dtype), tuple(shape), grid)
        self._digest = hashlib.sha256(self._header)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volume-hash")
        self._pending: list = []

    def add(self, slab: np.ndarray) -> None:
        """Hash ``slab`` next (the caller leaves it unchanged from now on)."""
        self._pending.append(self._thread.submit(self._update, np.ascontiguousarray(slab)))

    def restart(self) -> None:
        """Forget the slabs given so far (the volume is being filled again)."""
        self._pending.append(self._thread.submit(self._reset))

    def _update(self, slab: np.ndarray) -> None:
        self._digest.update(slab.data)

    def _reset(self) -> None:
        self._digest = hashlib.sha256(self._header)

    def hexdigest(self) -> str:
        self._thread.shutdown(wait=True)
        for future in self._pending:
            future.result()
        return self._digest.hexdigest()

    def cancel(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def check_grid(grid: Grid, *, label: str, min_slices: int) -> None:
    """Sane geometry: enough slices, positive plausible spacing, an orthonormal direction."""
    if min(grid.size[:2]) < 8:
        raise IngestError(
            label, f"the image is only {format_values(grid.size[:2])} pixels in-plane"
        )
    if grid.size[2] < min_slices:
        raise IngestError(
            label,
            f"{grid.size[2]} slice{'s' if grid.size[2] != 1 else ''}: a CT needs at least "
            f"{min_slices}",
        )
    if not all(0.01 <= s <= 50.0 for s in grid.spacing):
        raise IngestError(label, f"implausible voxel spacing {format_values(grid.spacing)} mm")
    matrix = grid.matrix
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-3):
        raise IngestError(label, "the direction matrix is not orthonormal (sheared geometry)")


def read_volume(path: Path, *, label: str) -> Volume:
    """A NIfTI, NRRD or MetaImage volume; the format comes from the (generated) suffix."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise IngestError(label, f"cannot be read as an image ({reason[:200]})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise IngestError(label, "a colour or vector image, not a CT or a label map")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise IngestError(label, f"a {image.GetDimension()}D image; a 3D volume is needed")
    return Volume.from_image(image)


def _sample(array: np.ndarray, n: int = 1_000_000) -> np.ndarray:
    flat = array.reshape(-1)
    return flat[:: max(1, flat.size // n)]


def _blocks(array: np.ndarray, elements: int = 4_000_000):
    """``array`` in contiguous blocks of whole rows of about ``elements`` values (a mask or a
    CT is walked in pieces that stay in the cache, without a temporary of its own size)."""
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    step = max(1, elements // max(rows.shape[1], 1))
    for start in range(0, rows.shape[0], step):
        yield np.ascontiguousarray(rows[start : start + step])


def distinct_values(array: np.ndarray, *, limit: int) -> np.ndarray | None:
    """The sorted distinct values of ``array``, or None when there are more than ``limit``.

    Counted block by block, so a 512x512x300 mask needs no copy of itself. An integer block
    whose values span few numbers (a label map's: mostly background) is settled by its minimum
    and maximum and a comparison per number in between; others by bincount (8- and 16-bit
    integers) or sorting.
    """
    if np.unique(_sample(array)).size > limit:
        return None
    small_int = array.dtype.kind in "iu" and array.dtype.itemsize <= 2
    unsigned = np.dtype(f"u{array.dtype.itemsize}") if small_int else None
    found: set = set()
    for block in _blocks(array):
        if array.dtype.kind in "iu":
            low, high = int(block.min()), int(block.max())
            if high - low <= limit:
                found.update(
                    v for v in range(low, high + 1) if v in (low, high) or (block == v).any()
                )
                if len(found) > limit:
                    return None
                continue
        if small_int:
            counts = np.bincount(block.view(unsigned).reshape(-1))
            present = np.flatnonzero(counts).astype(unsigned).view(array.dtype)
        else:
            present = np.unique(block)
        found.update(present.tolist())
        if len(found) > limit:
            return None
    return np.array(sorted(found), dtype=array.dtype)


def voxel_counts(mask: np.ndarray, labels: tuple[int, ...]) -> list[int]:
    """How many voxels of ``mask`` hold each of ``labels``, counted block by block (all-zero
    blocks, most of a mask, are skipped when 0 is not asked for)."""
    counts = [0] * len(labels)
    for block in _blocks(mask):
        if 0 not in labels and not block.any():
            continue
        for index, label in enumerate(labels):
            counts[index] += int(np.count_nonzero(block == label))
    return counts


def label_values(volume: Volume, *, name: str, labels: set[int]) -> np.ndarray | None:
    """The distinct values of a mask, or None for a CT, as the README says: a mask has integer
    voxels with few distinct values, all in the label set; a name hinting at a mask tips
    volumes with few integer values that are not all labels (they then fail as a mask)."""
    values = distinct_values(volume.array, limit=MAX_MASK_LABELS)
    if values is None or not np.all(values == np.round(values)):
        return None
    if {float(v) for v in values} <= labels | {0}:
        return values
    lowered = name.lower()
    return values if any(hint in lowered for hint in MASK_NAME_HINTS) else None


def to_hounsfield(volume: Volume, *, label: str) -> np.ndarray:
    """The CT as int16 HU (rounded), refusing values that do not fit."""
    array = volume.array
    if array.dtype == np.int16:
        return array
    low, high = float(array.min()), float(array.max())
    if low < -32768 or high > 32767:
        raise IngestError(label, f"CT values {low:g}..{high:g} do not fit 16-bit Hounsfield units")
    if array.dtype.kind == "f":
        array = np.rint(array)
    return array.astype(np.int16)


def check_ct_values(hu: np.ndarray, *, label: str) -> None:
    if np.unique(_sample(hu)).size <= MAX_MASK_LABELS:
        raise IngestError(
            label,
            f"this volume has at most {MAX_MASK_LABELS} distinct values: it looks like a label "
            "map, not a CT, but its labels are not those set for this upload",
        )


def canonical_mask(
    array: np.ndarray,
    *,
    label: str,
    label_pancreas: int,
    label_tumour: int,
    values: np.ndarray | None = None,
) -> np.ndarray:
    """Labels remapped to 0/1/2; refuses other labels and masks without pancreas or tumour.
    ``values``: the array's distinct values when already known."""
    found = values if values is not None else distinct_values(array, limit=MAX_MASK_LABELS)
    if found is None:
        raise IngestError(label, f"not a label map: more than {MAX_MASK_LABELS} distinct values")
    values = {float(v) for v in found}
    unknown = sorted(values - {0, label_pancreas, label_tumour})
    if unknown:
        raise IngestError(
            label,
            f"the mask holds labels {[f'{v:g}' for v in unknown]} that are not in this upload's "
            f"label set (0 background, {label_pancreas} pancreas, {label_tumour} tumour)",
        )
    if label_tumour not in values:
        raise IngestError(
            label,
            f"the mask has no tumour voxels (label {label_tumour}): PMPD needs the tumour "
            "segmented (check the label meaning set for this upload)",
        )
    if label_pancreas not in values:
        raise IngestError(
            label,
            f"the mask has no pancreas voxels (label {label_pancreas}): PMPD crops to the "
            "pancreas and needs it segmented (check the label meaning set for this upload)",
        )
    if (
        array.dtype == np.uint8
        and label_pancreas == CANONICAL_PANCREAS
        and label_tumour == CANONICAL_TUMOUR
    ):
        return array
    out = np.zeros(array.shape, dtype=np.uint8)
    out[array == label_pancreas] = CANONICAL_PANCREAS
    out[array == label_tumour] = CANONICAL_TUMOUR
    return out


def align_to_grid(
    volume: Volume,
    grid: Grid,
    *,
    label: str,
    tolerance_mm: float,
    direction_tolerance: float,
) -> np.ndarray:
    """The volume's array on ``grid``: as it is when the grids agree, or reoriented when it
    holds the same voxels with its axes permuted or flipped (lossless); IngestError otherwise.
    """
    mismatch = grid.mismatch(
        volume.grid, tolerance_mm=tolerance_mm, direction_tolerance=direction_tolerance
    )
    if mismatch is None:
        return volume.array
    own = volume.grid.matrix
    cosines = grid.matrix.T @ own  # [target axis, own axis]
    axes = np.argmax(np.abs(cosines), axis=0)
    if sorted(axes.tolist()) == [0, 1, 2] and np.allclose(
        np.abs(cosines).max(axis=0), 1.0, atol=direction_tolerance
    ):
        signs = np.sign(cosines[axes, [0, 1, 2]])
        xyz = volume.array.transpose(2, 1, 0)
        origin = np.asarray(volume.grid.origin, dtype=float)
        for own_axis in range(3):
            if signs[own_axis] < 0:
                xyz = np.flip(xyz, axis=own_axis)
                origin = (
                    origin
                    + (volume.grid.size[own_axis] - 1)
                    * volume.grid.spacing[own_axis]
                    * own[:, own_axis]
                )
        order = [int(np.flatnonzero(axes == target)[0]) for target in range(3)]
        xyz = xyz.transpose(order)
        moved = Grid(
            size=tuple(int(volume.grid.size[j]) for j in order),
            spacing=tuple(float(volume.grid.spacing[j]) for j in order),
            origin=tuple(float(v) for v in origin),
            direction=tuple((own[:, order] * signs[order]).reshape(-1).tolist()),
        )
        if (
            grid.mismatch(moved, tolerance_mm=tolerance_mm, direction_tolerance=direction_tolerance)
            is None
        ):
            return np.ascontiguousarray(xyz.transpose(2, 1, 0))
    raise IngestError(label, f"the mask is not on the CT's grid: {mismatch}")


def _gzip_member(data: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip member, mtime 0
    return compressor.compress(data) + compressor.flush()


def nifti_header(dtype: np.dtype, grid: Grid, scratch: Path) -> bytes:
    """The NIfTI-1 header (with its 4 extension bytes) SimpleITK writes for a volume of
    ``dtype`` on ``grid``: that of a one-voxel image with the grid's geometry, its dimensions
    set to the grid's size (the rest of ITK's header does not depend on the size)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.zeros((1, 1, 1), dtype=dtype))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        path = Path(folder) / "header.nii"
        sitk.WriteImage(image, str(path), useCompression=False)
        data = path.read_bytes()
    vox_offset = int(np.frombuffer(data, dtype="<f4", count=1, offset=108)[0])
    header = bytearray(data[:vox_offset])
    header[40:48] = np.array([3, *grid.size], dtype="<i2").tobytes()  # dim[0..3]
    return bytes(header)


def write_nifti(
    array: np.ndarray,
    grid: Grid,
    target: Path,
    *,
    compression_level: int,
    threads: int = 2,
) -> None:
    """Write ``target`` (.nii.gz): SimpleITK's NIfTI header (``nifti_header``) and the voxels
    from ``array`` itself (no copy into an ITK image), gzip-compressed in blocks by
    ``threads`` threads (zlib releases the GIL), each block a gzip member; readers (zlib's
    gzread, so ITK and nibabel; Python's gzip) read the members as one stream. The same volume
    always gives the same bytes. ``compression_level`` 0 writes a plain .nii."""
    voxels = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    if voxels.shape != (grid.size[2], grid.size[1], grid.size[0]):
        raise ValueError(f"an array of shape {voxels.shape} is not on a grid of size {grid.size}")
    header = nifti_header(voxels.dtype, grid, target.parent)
    data = memoryview(voxels).cast("B")
    if compression_level == 0:
        with target.open("wb") as sink:
            sink.write(header)
            sink.write(data)
        return
    size = len(header) + len(data)
    block = max(GZIP_BLOCK, -(-size // max(threads, 1)))
    # The stream header + voxels cut in blocks: the first holds the header, the others are
    # views of the array.
    first = block - len(header)
    blocks = [
        header + data[:first],
        *(data[at : at + block] for at in range(first, len(data), block)),
    ]
    with target.open("wb") as sink:
        if threads > 1 and size > block:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for member in pool.map(
                    lambda piece: _gzip_member(piece, compression_level), blocks
                ):
                    sink.write(member)
        else:
            for piece in blocks:
                sink.write(_gzip_member(piece, compression_level))


def dice_per_label(reference: np.ndarray, other: np.ndarray) -> dict[str, float | None]:
    """Dice of pancreas (1) and tumour (2) between two canonical masks on the same grid; None
    for a label absent from both (no overlap to measure)."""
    result: dict[str, float | None] = {}
    for name, value in (("pancreas", 1), ("tumour", 2)):
        a, b = reference == value, other == value
        total = int(a.sum()) + int(b.sum())
        result[name] = None if total == 0 else round(2.0 * int((a & b).sum()) / total, 4)
    return result
