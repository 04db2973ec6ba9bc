"""PMPD pre-processing: from a CT volume and its pancreas/tumour mask to two-channel patches.

Each step of the method (PMPD_METHOD.md, "Pre-processing") is one small function with its
parameters named after the paper, tested on tiny arrays whose answer is known by hand.
``preprocess_patient`` composes them; training and inference both call it, so the patches a
model was trained on and the patches it scores are made by the same code.

Array convention: numpy arrays are indexed (z, y, x) as SimpleITK's ``GetArrayFromImage``
returns them; spacing, origin and direction are in SimpleITK's (x, y, z) order, direction as the
row-major 3x3 matrix whose columns are the world directions of the x, y and z index axes.

SimpleITK is imported inside the functions that need it (reading files, reorienting), so that
training and inference on a GPU host without SimpleITK can still import this module.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .volume import IDENTITY_DIRECTION, Grid, Volume


class PreprocessError(ValueError):
    """The inputs cannot be pre-processed; the message says why in words a coordinator can act on."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Every parameter of the pre-processing, with the paper's value or the documented choice.

    Attributes:
        slice_thickness_mm: target z spacing (paper: 2 mm). Only z is resampled; in-plane
            spacing is kept.
        window_level: window centre in HU (paper: 75).
        window_width: window width in HU (paper: 250), i.e. clip to [-50, 200] HU.
        pancreas_label: mask value of the pancreas (paper's default 1; configurable per upload).
        tumour_label: mask value of the tumour (default 2).
        opening_structure_xyz: box structuring element of the label-noise opening (erosion then
            dilation), in voxels along x, y, z. Open point: the paper names the operation, not
            its size. (3, 3, 1) removes in-plane specks narrower than 3 voxels without eating
            across the thick (2 mm) slices.
        margin_structure_xyz: box structuring element of the border expansion. The paper's
            "3x3x1" is read as a 3x3 box in-plane and 1 voxel in z: every label voxel grows by
            one voxel towards its 8 in-plane neighbours and not at all into the adjacent slices,
            keeping a ~1 voxel (0.6-0.9 mm) peritumoural rim.
        n_slices: number of axial slices with the largest tumour area kept (paper: 4).
        input_size: side of the square network input in pixels (open: 224 is ResNet50's size).
        crop_scope: "slice" crops each slice to the pancreas bounding box in that slice;
            "volume" uses the in-plane bounding box of the pancreas over the whole volume, the
            same for every slice. Open point; "slice" follows the paper's wording.
        crop_padding_fraction: margin added on each side of the bounding box, as a fraction of
            its longer side, before it is made square.
        min_crop_side_mm: floor on the square's side, so that a thin pancreas cross-section is
            not blown up into a few giant pixels.
        antialias: Gaussian pre-filter (sigma = (zoom - 1) / 2 pixels, as scikit-image does)
            before a crop is shrunk to the input size, so that noise does not alias.
        mask_channel: how channel 1 encodes the expanded mask: "labels" gives pancreas 0.5 and
            tumour 1.0 (both structures visible), "union" gives 1.0 for either, "tumour" only
            the tumour. Open point: the paper says "the mask".
        rotation_angles_deg: in-plane rotations of the training augmentation; with 4 slices,
            the default 6 angles give the paper's 24 patches per patient (open: the paper gives
            the count, not the angles). The first angle must be 0: the un-rotated patches are
            the ones scored at inference.
        max_axis_deviation: largest allowed |sin| of the angle between an image axis and the
            nearest patient axis (0.01 = 0.57 degrees); beyond it the volume is oblique and
            refused rather than silently resampled.
    """

    slice_thickness_mm: float = 2.0
    window_level: float = 75.0
    window_width: float = 250.0
    pancreas_label: int = 1
    tumour_label: int = 2
    opening_structure_xyz: tuple[int, int, int] = (3, 3, 1)
    margin_structure_xyz: tuple[int, int, int] = (3, 3, 1)
    n_slices: int = 4
    input_size: int = 224
    crop_scope: str = "slice"
    crop_padding_fraction: float = 0.1
    min_crop_side_mm: float = 40.0
    antialias: bool = True
    mask_channel: str = "labels"
    rotation_angles_deg: tuple[float, ...] = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)
    max_axis_deviation: float = 0.01

    def __post_init__(self) -> None:
        if self.pancreas_label == self.tumour_label:
            raise ValueError("pancreas_label and tumour_label must differ")
        if self.crop_scope not in {"slice", "volume"}:
            raise ValueError(f"crop_scope must be 'slice' or 'volume', not {self.crop_scope!r}")
        if self.mask_channel not in {"labels", "union", "tumour"}:
            raise ValueError(
                f"mask_channel must be 'labels', 'union' or 'tumour', not {self.mask_channel!r}"
            )
        if not self.rotation_angles_deg or self.rotation_angles_deg[0] != 0.0:
            raise ValueError("rotation_angles_deg must start with 0 (the un-rotated view)")
        if self.n_slices < 1 or self.input_size < 8 or self.slice_thickness_mm <= 0:
            raise ValueError("n_slices >= 1, input_size >= 8 and slice_thickness_mm > 0 required")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, stored in model cards and hashed into the input hash."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Inverse of ``to_dict`` (JSON turns tuples into lists)."""
        converted: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value for key, value in values.items()
        }
        return cls(**converted)


@dataclass(frozen=True)
class PreprocessedPatient:
    """What one patient becomes: the network's patches and where they came from.

    Attributes:
        patches: float32 [n, 2, input_size, input_size]; channel 0 windowed CT in [0, 1],
            channel 1 the expanded mask (see ``PreprocessConfig.mask_channel``).
        slice_indices: for each patch, its slice index in the 2 mm resampled volume.
        angles_deg: for each patch, its rotation (0 for the patches scored at inference).
        selected_slices: the distinct chosen slices (ascending), in the 2 mm volume.
        slice_positions_mm: world z (mm) of each selected slice, for the viewer.
        tumour_areas_mm2: tumour area of each selected slice after the opening.
        n_tumour_slices: how many 2 mm slices contain tumour at all.
        fewer_than_4_tumour_slices: the patient had fewer tumour slices than
            ``config.n_slices`` (4 in the paper) and is scored with what it has; results must
            say so (the paper reports such cases separately).
        input_hash: SHA-256 of the raw CT, mask, geometry and configuration: the content hash
            every stored prediction records.
        warnings: non-fatal remarks (e.g. the opening would have erased a tiny tumour).
    """

    patches: np.ndarray
    slice_indices: np.ndarray
    angles_deg: np.ndarray
    selected_slices: tuple[int, ...]
    slice_positions_mm: tuple[float, ...]
    tumour_areas_mm2: tuple[float, ...]
    n_tumour_slices: int
    fewer_than_4_tumour_slices: bool
    input_hash: str
    config: PreprocessConfig
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def inference_patches(self) -> np.ndarray:
        """The un-rotated patches (one per selected slice): what inference scores."""
        return self.patches[self.angles_deg == 0.0]


# ----------------------------------------------------------------------------------------------
# Reading and orientation


def load_volume(path: str | Path) -> Volume:
    """Read a DICOM series folder or a NIfTI/NRRD/MHA file with SimpleITK.

    A folder with several series yields the one with the most slices: for one acquisition that
    is the thinnest reconstruction, the method's preference ("prefer the thinner one").

    The imaging app's ``read_volume`` reads uploads into the same ``Volume`` but is a different
    reader on purpose: it names the uploaded file in an ``IngestError``, accepts single-frame
    4D NIfTI and refuses colour images, where this one reads what the platform (or a notebook)
    already holds, DICOM folders included, and says what is wrong in a ``PreprocessError``.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series_ids = reader.GetGDCMSeriesIDs(str(path))
        if not series_ids:
            raise PreprocessError(f"no DICOM series found in folder {path}")
        files_per_series = [reader.GetGDCMSeriesFileNames(str(path), sid) for sid in series_ids]
        reader.SetFileNames(max(files_per_series, key=len))
        image = reader.Execute()
    elif path.is_file():
        image = sitk.ReadImage(str(path))
    else:
        raise PreprocessError(f"{path} is neither a DICOM folder nor an image file")
    if image.GetDimension() != 3:
        raise PreprocessError(
            f"{path} holds a {image.GetDimension()}D image, a 3D volume is needed"
        )
    return Volume.from_image(image)


def check_axial(direction: Sequence[float], *, max_axis_deviation: float = 0.01) -> bool:
    """Return whether ``direction`` is already canonical (identity); refuse non-axial volumes.

    The image axes must each lie along a patient axis (within ``max_axis_deviation``) and the
    slice axis along head-foot. Axial volumes that are merely flipped or have x and y swapped
    are fine (``reorient_to_canonical`` fixes them); oblique or sagittal/coronal stacks raise
    ``PreprocessError``, because resampling them would invent the 2 mm axial slices the model
    expects from data that was not acquired that way.
    """
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    columns = np.abs(matrix)
    for axis in range(3):
        column = columns[:, axis]
        dominant = int(np.argmax(column))
        off_axis = float(np.sqrt(np.sum(np.delete(column, dominant) ** 2)))
        if off_axis > max_axis_deviation:
            raise PreprocessError(
                f"oblique volume: image axis {'xyz'[axis]} deviates "
                f"{math.degrees(math.asin(min(off_axis, 1.0))):.1f} degrees from the patient axes; "
                "PMPD needs axial slices, reconstruct the series axially first"
            )
    if int(np.argmax(columns[:, 2])) != 2:
        raise PreprocessError(
            "non-axial volume: the slices are not stacked along the head-foot axis "
            "(sagittal or coronal acquisition); PMPD needs axial slices"
        )
    return bool(np.allclose(matrix, np.eye(3), atol=max_axis_deviation))


def reorient_to_canonical(
    ct: np.ndarray,
    mask: np.ndarray,
    *,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """Flip/permute an axial volume to LPS (identity direction) with SimpleITK's DICOMOrient.

    Returns the reoriented CT and mask with their new spacing and origin. Only axis flips and
    permutations happen, so voxel values are copied, never interpolated.
    """
    import SimpleITK as sitk

    def orient(array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(tuple(float(v) for v in spacing))
        image.SetOrigin(tuple(float(v) for v in origin))
        image.SetDirection(tuple(float(v) for v in direction))
        return sitk.DICOMOrient(image, "LPS")

    ct_image = orient(ct)
    mask_image = orient(mask)
    grid = Grid.from_image(ct_image)
    return (
        sitk.GetArrayFromImage(ct_image),
        sitk.GetArrayFromImage(mask_image),
        grid.spacing,
        grid.origin,
    )


# ----------------------------------------------------------------------------------------------
# The method's steps


def resampled_slice_positions(
    n_slices: int, *, source_thickness_mm: float, slice_thickness_mm: float = 2.0
) -> np.ndarray:
    """Positions (in source slice-index units) of the slices of the resampled grid.

    The new grid starts at the first source slice and steps ``slice_thickness_mm`` while it
    stays inside the source extent: 3 slices 4 mm apart give 5 slices 2 mm apart.
    """
    extent_mm = (n_slices - 1) * source_thickness_mm
    n_new = int(math.floor(extent_mm / slice_thickness_mm + 1e-6)) + 1
    return np.arange(n_new) * (slice_thickness_mm / source_thickness_mm)


def _sample_z(volume: np.ndarray, positions: np.ndarray, *, order: int) -> np.ndarray:
    """Sample whole slices at fractional z positions: linear (order 1) or nearest (order 0)."""
    last = volume.shape[0] - 1
    if order == 0:
        # Ties (a new slice exactly midway) take the upper neighbour: floor(p + 0.5).
        index = np.clip(np.floor(positions + 0.5).astype(np.int64), 0, last)
        return volume[index]
    lower = np.clip(np.floor(positions).astype(np.int64), 0, last)
    upper = np.minimum(lower + 1, last)
    weight = (positions - lower).astype(np.float32)[:, None, None]
    low = volume[lower].astype(np.float32)
    return low + (volume[upper].astype(np.float32) - low) * weight


def resample_slices(
    volume: np.ndarray,
    *,
    source_thickness_mm: float,
    slice_thickness_mm: float = 2.0,
    order: int = 1,
) -> np.ndarray:
    """Resample along z only to ``slice_thickness_mm`` (paper: 2 mm); in-plane is untouched.

    ``order=1`` (linear) is for the CT and returns float32; ``order=0`` (nearest neighbour) is
    for label masks and keeps their dtype and values. Thin slices are sampled, not averaged, as
    an image resampler with a linear interpolator does.
    """
    positions = resampled_slice_positions(
        volume.shape[0],
        source_thickness_mm=source_thickness_mm,
        slice_thickness_mm=slice_thickness_mm,
    )
    return _sample_z(volume, positions, order=order)


def apply_window(
    hu: np.ndarray, *, window_level: float = 75.0, window_width: float = 250.0
) -> np.ndarray:
    """Window to [level - width/2, level + width/2] HU and scale to [0, 1] (float32).

    With the paper's W250/L75: -50 HU -> 0, 75 HU -> 0.5, 200 HU -> 1.
    """
    low = window_level - window_width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(window_width)
    return np.clip(scaled, 0.0, 1.0)


def _box(structure_xyz: Sequence[int]) -> np.ndarray:
    sx, sy, sz = (int(v) for v in structure_xyz)
    return np.ones((sz, sy, sx), dtype=bool)


def open_mask(binary: np.ndarray, *, structure_xyz: Sequence[int] = (3, 3, 1)) -> np.ndarray:
    """Morphological opening (erosion then dilation) with a box element: removes label specks
    and spurs narrower than the element while leaving larger shapes as they were."""
    return ndimage.binary_opening(np.asarray(binary, dtype=bool), structure=_box(structure_xyz))


def dilate_margin(binary: np.ndarray, *, structure_xyz: Sequence[int] = (3, 3, 1)) -> np.ndarray:
    """Expand a mask by the paper's 3x3x1 box (see ``PreprocessConfig.margin_structure_xyz``):
    one voxel becomes the 3x3 square around it, in its own slice only."""
    return ndimage.binary_dilation(np.asarray(binary, dtype=bool), structure=_box(structure_xyz))


def select_tumour_slices(tumour: np.ndarray, *, n_slices: int = 4) -> np.ndarray:
    """Indices (ascending) of the ``n_slices`` axial slices with the largest tumour area.

    Ties in area go to the lower slice index, so the choice is reproducible. Fewer indices come
    back when fewer slices contain tumour.
    """
    areas = np.asarray(tumour, dtype=bool).reshape(tumour.shape[0], -1).sum(axis=1)
    candidates = np.flatnonzero(areas)
    order = np.lexsort((candidates, -areas[candidates]))
    return np.sort(candidates[order][:n_slices])


@dataclass(frozen=True)
class CropBox:
    """A square crop in one slice: centre in (fractional) voxel indices, side in mm."""

    center_y: float
    center_x: float
    side_mm: float


def square_bounding_box(
    region: np.ndarray,
    *,
    spacing_yx: Sequence[float],
    padding_fraction: float = 0.1,
    min_side_mm: float = 40.0,
) -> CropBox:
    """The square (in mm) around the bounding box of a 2D ``region``, padded on every side by
    ``padding_fraction`` of its longer side and at least ``min_side_mm`` wide."""
    rows = np.flatnonzero(np.asarray(region, dtype=bool).any(axis=1))
    cols = np.flatnonzero(np.asarray(region, dtype=bool).any(axis=0))
    if rows.size == 0:
        raise PreprocessError("cannot crop: the pancreas is absent from this slice")
    sy, sx = (float(v) for v in spacing_yx)
    height_mm = (rows[-1] - rows[0] + 1) * sy
    width_mm = (cols[-1] - cols[0] + 1) * sx
    longer = max(height_mm, width_mm)
    side = max(longer * (1.0 + 2.0 * padding_fraction), min_side_mm)
    return CropBox(
        center_y=(rows[0] + rows[-1]) / 2.0, center_x=(cols[0] + cols[-1]) / 2.0, side_mm=side
    )


def antialias_filter(
    image: np.ndarray, box: CropBox, *, spacing_yx: Sequence[float], input_size: int
) -> np.ndarray:
    """Gaussian pre-filter for shrinking ``box`` to ``input_size`` pixels: sigma = (zoom - 1)/2
    source pixels per axis, as scikit-image's resize does; unchanged when enlarging."""
    step_mm = box.side_mm / input_size
    sigma = tuple(max(step_mm / float(s) - 1.0, 0.0) / 2.0 for s in spacing_yx)
    source = np.asarray(image, dtype=np.float32)
    if max(sigma) == 0.0:
        return source
    return ndimage.gaussian_filter(source, sigma=sigma, mode="nearest")


def extract_patch(
    image: np.ndarray,
    box: CropBox,
    *,
    spacing_yx: Sequence[float],
    input_size: int,
    angle_deg: float = 0.0,
    order: int = 1,
    antialias: bool = True,
    fill_value: float = 0.0,
) -> np.ndarray:
    """Crop ``box`` from a 2D slice, rotate it by ``angle_deg`` and resize it to
    ``input_size`` pixels square, in one interpolation.

    Output pixel (i, j) samples the slice at box centre + R(angle) . offset, where offset is the
    pixel centre's distance from the patch centre in mm; so crop, rotation and resize never
    interpolate twice, and rotated patches take real image content at their corners instead of
    padding. Positive angles turn the content counter-clockwise as displayed (row 0 at top):
    ``angle_deg=90`` equals ``np.rot90`` of the un-rotated patch. Outside the slice the patch
    takes ``fill_value``. ``order`` 1 is for images, 0 (nearest) for masks.
    """
    sy, sx = (float(v) for v in spacing_yx)
    step_mm = box.side_mm / input_size
    offsets = (np.arange(input_size, dtype=np.float64) + 0.5 - input_size / 2.0) * step_mm
    off_y, off_x = np.meshgrid(offsets, offsets, indexing="ij")
    theta = math.radians(angle_deg)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    # Rotating the content counter-clockwise means sampling the source rotated clockwise.
    src_y = box.center_y + (cos_t * off_y + sin_t * off_x) / sy
    src_x = box.center_x + (cos_t * off_x - sin_t * off_y) / sx
    source = np.asarray(image, dtype=np.float32)
    if order > 0 and antialias:
        source = antialias_filter(source, box, spacing_yx=spacing_yx, input_size=input_size)
    patch = ndimage.map_coordinates(
        source, [src_y, src_x], order=order, mode="constant", cval=fill_value, prefilter=False
    )
    return patch.astype(np.float32)


def encode_mask_channel(
    labels: np.ndarray, *, pancreas_label: int, tumour_label: int, mode: str = "labels"
) -> np.ndarray:
    """Channel 1 of the input from a label map (see ``PreprocessConfig.mask_channel``)."""
    labels = np.asarray(labels)
    tumour = labels == tumour_label
    pancreas = labels == pancreas_label
    if mode == "labels":
        return np.where(tumour, 1.0, np.where(pancreas, 0.5, 0.0)).astype(np.float32)
    if mode == "union":
        return (tumour | pancreas).astype(np.float32)
    if mode == "tumour":
        return tumour.astype(np.float32)
    raise ValueError(f"unknown mask channel mode {mode!r}")


def input_hash(
    ct: np.ndarray,
    mask: np.ndarray,
    *,
    spacing: Sequence[float],
    direction: Sequence[float],
    config: PreprocessConfig,
) -> str:
    """SHA-256 of everything that determines the patches: voxels, geometry, configuration."""
    digest = hashlib.sha256()
    for array in (ct, mask):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    digest.update(json.dumps([list(map(float, spacing)), list(map(float, direction))]).encode())
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


def _clean_labels(
    region: np.ndarray, tumour: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Opening of the pancreas region (pancreas + tumour) and of the tumour, each on its own."""
    warnings: list[str] = []
    opened_tumour = open_mask(tumour, structure_xyz=config.opening_structure_xyz)
    if not opened_tumour.any():
        warnings.append(
            "the mask opening would erase the whole tumour (it is thinner than the opening "
            "element); the tumour mask was kept as given"
        )
        opened_tumour = tumour
    opened_region = open_mask(region, structure_xyz=config.opening_structure_xyz) | opened_tumour
    return opened_region, opened_tumour, warnings


def preprocess_patient(
    ct: np.ndarray,
    mask: np.ndarray,
    *,
    spacing: Sequence[float],
    direction: Sequence[float] = IDENTITY_DIRECTION,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    config: PreprocessConfig | None = None,
    augment: bool = False,
) -> PreprocessedPatient:
    """The whole PMPD pre-processing of one patient, for training and inference alike.

    Args:
        ct: CT volume in HU, indexed (z, y, x).
        mask: label volume on the same grid (pancreas and tumour labels per ``config``).
        spacing: voxel size in mm, (x, y, z).
        direction: row-major 3x3 direction matrix (SimpleITK order); axial volumes that are
            flipped or have x/y swapped are reoriented, oblique ones refused.
        origin: world position of voxel (0, 0, 0), only used to report slice positions.
        config: the method's parameters (``PreprocessConfig()`` by default).
        augment: False gives one un-rotated patch per selected slice (inference); True adds
            the rotations of ``config.rotation_angles_deg`` (training: 4 x 6 = 24 patches).

    Raises:
        PreprocessError: geometry mismatch, empty pancreas or tumour label, non-axial volume.
    """
    config = config or PreprocessConfig()
    ct = np.asarray(ct)
    mask = np.asarray(mask)
    if ct.ndim != 3:
        raise PreprocessError(f"the CT must be a 3D volume, got an array of shape {ct.shape}")
    if mask.shape != ct.shape:
        raise PreprocessError(
            f"the mask's shape {mask.shape} (z, y, x) does not match the CT's {ct.shape}: "
            "the mask must be drawn on the CT's own voxel grid"
        )
    if len(spacing) != 3 or min(spacing) <= 0:
        raise PreprocessError(f"spacing must be three positive numbers (x, y, z), got {spacing}")
    digest = input_hash(ct, mask, spacing=spacing, direction=direction, config=config)

    tumour_raw = mask == config.tumour_label
    if not tumour_raw.any():
        raise PreprocessError(
            f"the tumour label ({config.tumour_label}) is empty: PMPD needs a tumour segmentation"
        )
    if not (mask == config.pancreas_label).any():
        raise PreprocessError(
            f"the pancreas label ({config.pancreas_label}) is empty: PMPD crops to the pancreas "
            "and needs its segmentation (check the label convention of this upload)"
        )

    spacing_xyz = tuple(float(v) for v in spacing)
    origin_xyz = tuple(float(v) for v in origin)
    if not check_axial(direction, max_axis_deviation=config.max_axis_deviation):
        ct, mask, spacing_xyz, origin_xyz = reorient_to_canonical(
            ct, mask, spacing=spacing_xyz, origin=origin_xyz, direction=direction
        )
    spacing_yx = (spacing_xyz[1], spacing_xyz[0])

    # Step 2, resample z to 2 mm: masks by nearest neighbour over the whole volume (cheap); the
    # CT only on the slices that are later cut, which gives exactly the same values.
    positions = resampled_slice_positions(
        ct.shape[0],
        source_thickness_mm=spacing_xyz[2],
        slice_thickness_mm=config.slice_thickness_mm,
    )
    labels = _sample_z(mask, positions, order=0)
    tumour = labels == config.tumour_label
    if not tumour.any():
        raise PreprocessError("the tumour vanished when resampled to 2 mm slices (too thin)")
    region = tumour | (labels == config.pancreas_label)

    # Morphology on the labels' bounding box only, padded by the elements' reach: outside it the
    # masks are empty, so the result equals working on the whole volume, at a fraction of the cost.
    reach = [
        a // 2 + b // 2 + 1
        for a, b in zip(
            config.opening_structure_xyz[::-1], config.margin_structure_xyz[::-1], strict=True
        )
    ]
    bounds = []
    for axis, (r, n) in enumerate(zip(reach, region.shape, strict=True)):
        present = np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds.append(slice(max(int(present[0]) - r, 0), min(int(present[-1]) + r + 1, n)))
    box_slices = tuple(bounds)
    z_offset = bounds[0].start

    # Step 4 and 5: opening, then the 3x3x1 margin, each label on its own.
    region, tumour, warnings = _clean_labels(region[box_slices], tumour[box_slices], config)
    expanded_box = np.zeros(region.shape, dtype=np.uint8)
    expanded_box[dilate_margin(region, structure_xyz=config.margin_structure_xyz)] = 1
    expanded_box[dilate_margin(tumour, structure_xyz=config.margin_structure_xyz)] = 2

    # Step 6: the slices with the largest (cleaned) tumour area.
    selected_in_box = select_tumour_slices(tumour, n_slices=config.n_slices)
    selected = selected_in_box + z_offset
    n_tumour_slices = int(tumour.any(axis=(1, 2)).sum())
    hu_slices = _sample_z(ct, positions[selected], order=1)
    expanded = np.zeros((len(selected), *labels.shape[1:]), dtype=np.uint8)
    expanded[:, box_slices[1], box_slices[2]] = expanded_box[selected_in_box]
    mask_channel = encode_mask_channel(
        expanded, pancreas_label=1, tumour_label=2, mode=config.mask_channel
    )

    volume_box_region = None
    if config.crop_scope == "volume":
        volume_box_region = np.zeros(labels.shape[1:], dtype=bool)
        volume_box_region[box_slices[1], box_slices[2]] = expanded_box.any(axis=0)
    angles = config.rotation_angles_deg if augment else (0.0,)
    patches: list[np.ndarray] = []
    slice_indices: list[int] = []
    patch_angles: list[float] = []
    for position, slice_index in enumerate(selected.tolist()):
        # Step 3: window (pointwise, so windowing the cut slices equals windowing the volume).
        windowed = apply_window(
            hu_slices[position],
            window_level=config.window_level,
            window_width=config.window_width,
        )
        box_region = volume_box_region if volume_box_region is not None else expanded[position]
        box = square_bounding_box(
            box_region,
            spacing_yx=spacing_yx,
            padding_fraction=config.crop_padding_fraction,
            min_side_mm=config.min_crop_side_mm,
        )
        if config.antialias:  # once per slice, not once per rotation
            windowed = antialias_filter(
                windowed, box, spacing_yx=spacing_yx, input_size=config.input_size
            )
        # Steps 7-9: crop, resize, two channels, rotations.
        for angle in angles:
            image_channel = extract_patch(
                windowed,
                box,
                spacing_yx=spacing_yx,
                input_size=config.input_size,
                angle_deg=angle,
                order=1,
                antialias=False,
            )
            mask_patch = extract_patch(
                mask_channel[position],
                box,
                spacing_yx=spacing_yx,
                input_size=config.input_size,
                angle_deg=angle,
                order=0,
            )
            patches.append(np.stack([image_channel, mask_patch]))
            slice_indices.append(int(slice_index))
            patch_angles.append(float(angle))

    tumour_areas = tumour[selected_in_box].reshape(len(selected), -1).sum(axis=1)
    pixel_area = spacing_xyz[0] * spacing_xyz[1]
    return PreprocessedPatient(
        patches=np.stack(patches).astype(np.float32),
        slice_indices=np.asarray(slice_indices, dtype=np.int64),
        angles_deg=np.asarray(patch_angles, dtype=np.float64),
        selected_slices=tuple(int(v) for v in selected),
        slice_positions_mm=tuple(
            origin_xyz[2] + float(v) * config.slice_thickness_mm for v in selected
        ),
        tumour_areas_mm2=tuple(float(a) * pixel_area for a in tumour_areas),
        n_tumour_slices=n_tumour_slices,
        fewer_than_4_tumour_slices=len(selected) < config.n_slices,
        input_hash=digest,
        config=config,
        warnings=tuple(warnings),
    )
