"""Each pre-processing step on tiny arrays whose answer is known by hand, then the composition."""

from __future__ import annotations

import numpy as np
import pytest

from inference.pmpd.preprocess import (
    CropBox,
    PreprocessConfig,
    PreprocessError,
    apply_window,
    check_axial,
    dilate_margin,
    encode_mask_channel,
    extract_patch,
    load_volume,
    open_mask,
    preprocess_patient,
    resample_slices,
    resampled_slice_positions,
    select_tumour_slices,
    square_bounding_box,
)


def test_window_w250_l75_clips_to_minus50_200_and_scales_to_unit_range():
    hu = np.array([-1000, -50, 12.5, 75, 137.5, 200, 3000])
    assert apply_window(hu).tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert apply_window(hu).dtype == np.float32
    # Another window moves the bounds: W100/L0 is [-50, 50].
    assert apply_window(
        np.array([-50.0, 0.0, 50.0]), window_level=0, window_width=100
    ).tolist() == [
        0.0,
        0.5,
        1.0,
    ]


def test_resampling_three_4mm_slices_to_2mm_gives_five_linear_slices():
    assert resampled_slice_positions(3, source_thickness_mm=4.0).tolist() == [0, 0.5, 1, 1.5, 2]
    volume = np.stack([np.full((2, 2), v, dtype=np.int16) for v in (0, 40, 80)])
    resampled = resample_slices(volume, source_thickness_mm=4.0, slice_thickness_mm=2.0)
    assert resampled.shape == (5, 2, 2)
    assert resampled[:, 0, 0].tolist() == [0, 20, 40, 60, 80]
    # In-plane untouched.
    assert np.array_equal(resampled[0], volume[0].astype(np.float32))


def test_mask_resampling_is_nearest_neighbour_with_ties_going_up():
    labels = np.stack([np.full((2, 2), v, dtype=np.uint8) for v in (0, 1, 2)])
    resampled = resample_slices(labels, source_thickness_mm=4.0, order=0)
    assert resampled.dtype == np.uint8
    assert resampled[:, 0, 0].tolist() == [0, 1, 1, 2, 2]


def test_thin_slices_are_resampled_down_to_2mm():
    volume = np.arange(9, dtype=np.float32)[:, None, None] * np.ones((1, 3, 3))
    resampled = resample_slices(volume, source_thickness_mm=1.0)
    assert resampled[:, 1, 1].tolist() == [0, 2, 4, 6, 8]


def test_opening_removes_a_single_voxel_speck_and_keeps_a_block():
    mask = np.zeros((1, 12, 12), dtype=bool)
    mask[0, 2:7, 2:7] = True  # 5x5 block
    mask[0, 10, 10] = True  # speck
    opened = open_mask(mask)
    assert not opened[0, 10, 10]
    assert np.array_equal(opened[0, 2:7, 2:7], np.ones((5, 5), dtype=bool))
    assert opened.sum() == 25


def test_opening_is_in_plane_only_by_default():
    # A block one slice thick survives the default (3, 3, 1) opening.
    mask = np.zeros((3, 8, 8), dtype=bool)
    mask[1, 2:6, 2:6] = True
    assert open_mask(mask).sum() == 16
    # A (3, 3, 3) element would erase it.
    assert open_mask(mask, structure_xyz=(3, 3, 3)).sum() == 0


def test_3x3x1_margin_turns_one_voxel_into_nine_in_its_own_slice():
    mask = np.zeros((3, 7, 7), dtype=bool)
    mask[1, 3, 3] = True
    dilated = dilate_margin(mask)
    assert dilated.sum() == 9
    assert dilated[1, 2:5, 2:5].all()
    assert not dilated[0].any() and not dilated[2].any()


def test_top_four_tumour_slices_by_area_ties_to_lower_index():
    areas = [0, 5, 3, 9, 9, 1, 7, 5]
    tumour = np.zeros((len(areas), 4, 4), dtype=bool)
    for z, area in enumerate(areas):
        tumour[z].flat[:area] = True
    # 9, 9, 7 and the first 5 (slice 1 before slice 7).
    assert select_tumour_slices(tumour).tolist() == [1, 3, 4, 6]
    assert select_tumour_slices(tumour, n_slices=2).tolist() == [3, 4]


def test_fewer_tumour_slices_than_asked_returns_what_there_is():
    tumour = np.zeros((5, 3, 3), dtype=bool)
    tumour[2, 1, 1] = tumour[3, 1, 1] = True
    assert select_tumour_slices(tumour).tolist() == [2, 3]


def test_square_bounding_box_is_padded_square_in_mm():
    region = np.zeros((20, 20), dtype=bool)
    region[2:6, 3:5] = True  # rows 2-5 (4 px), cols 3-4 (2 px)
    box = square_bounding_box(region, spacing_yx=(1.0, 1.0), padding_fraction=0.0, min_side_mm=0)
    assert (box.center_y, box.center_x, box.side_mm) == (3.5, 3.5, 4.0)
    padded = square_bounding_box(
        region, spacing_yx=(0.5, 0.5), padding_fraction=0.25, min_side_mm=0
    )
    assert padded.side_mm == pytest.approx(2.0 * 1.5)
    floor = square_bounding_box(region, spacing_yx=(1.0, 1.0), min_side_mm=40.0)
    assert floor.side_mm == 40.0


def test_crop_at_native_resolution_is_plain_slicing():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    region = np.zeros((10, 10), dtype=bool)
    region[2:6, 3:5] = True
    box = square_bounding_box(region, spacing_yx=(1.0, 1.0), padding_fraction=0.0, min_side_mm=0)
    patch = extract_patch(image, box, spacing_yx=(1.0, 1.0), input_size=4, antialias=False)
    assert np.array_equal(patch, image[2:6, 2:6])


def test_resize_of_a_ramp_samples_it_linearly():
    image = np.tile(np.arange(32, dtype=np.float32), (32, 1))  # value = column index
    box = CropBox(center_y=15.5, center_x=15.5, side_mm=8.0)
    patch = extract_patch(image, box, spacing_yx=(1.0, 1.0), input_size=16)
    expected = 15.5 + (np.arange(16) + 0.5 - 8) * 0.5
    assert np.allclose(patch[5], expected)
    assert np.allclose(patch[:, 3], expected[3])


def test_rotation_by_90_degrees_equals_rot90_and_mask_stays_binary():
    rng = np.random.default_rng(0)
    image = rng.random((40, 40)).astype(np.float32)
    box = CropBox(center_y=19.5, center_x=19.5, side_mm=16.0)
    upright = extract_patch(image, box, spacing_yx=(1.0, 1.0), input_size=16, antialias=False)
    turned = extract_patch(
        image, box, spacing_yx=(1.0, 1.0), input_size=16, angle_deg=90.0, antialias=False
    )
    assert np.allclose(turned, np.rot90(upright), atol=1e-5)
    labels = (image > 0.5).astype(np.float32)
    rotated = extract_patch(
        labels, box, spacing_yx=(1.0, 1.0), input_size=16, angle_deg=33, order=0
    )
    assert set(np.unique(rotated)) <= {0.0, 1.0}


def test_mask_channel_encodings():
    labels = np.array([[0, 1, 2]])
    assert encode_mask_channel(labels, pancreas_label=1, tumour_label=2).tolist() == [[0, 0.5, 1]]
    union = encode_mask_channel(labels, pancreas_label=1, tumour_label=2, mode="union")
    assert union.tolist() == [[0, 1, 1]]
    tumour = encode_mask_channel(labels, pancreas_label=1, tumour_label=2, mode="tumour")
    assert tumour.tolist() == [[0, 0, 1]]


# ----------------------------------------------------------------------------------------------
# The composition


def synthetic_case(n_slices: int = 12, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A CT with a bright pancreas ellipse and a darker tumour over several slices."""
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[0:n_slices, 0:size, 0:size]
    ct = (-100 + 10 * rng.standard_normal((n_slices, size, size))).astype(np.int16)
    mask = np.zeros((n_slices, size, size), dtype=np.uint8)
    pancreas = ((y - 24) / 7.0) ** 2 + ((x - 20) / 15.0) ** 2 <= 1
    pancreas &= (z >= 2) & (z <= 9)
    mask[pancreas] = 1
    ct[pancreas] = 100
    tumour = ((y - 24) / 5.0) ** 2 + ((x - 27) / 5.0) ** 2 + ((z - 6) / 2.5) ** 2 <= 1
    mask[tumour] = 2
    ct[tumour] = 40 + (x[tumour] % 7) * 5  # some texture, so orientation matters
    return ct, mask


SPACING = (0.8, 0.8, 2.5)
CONFIG = PreprocessConfig(input_size=32, min_crop_side_mm=0.0)


def test_preprocess_patient_gives_24_training_patches_and_4_for_inference():
    ct, mask = synthetic_case()
    result = preprocess_patient(ct, mask, spacing=SPACING, config=CONFIG, augment=True)
    assert result.patches.shape == (24, 2, 32, 32)
    assert result.patches.dtype == np.float32
    assert len(result.selected_slices) == 4
    assert sorted(set(result.slice_indices.tolist())) == list(result.selected_slices)
    assert sorted(set(result.angles_deg.tolist())) == [0, 60, 120, 180, 240, 300]
    inference = result.inference_patches()
    assert inference.shape == (4, 2, 32, 32)
    plain = preprocess_patient(ct, mask, spacing=SPACING, config=CONFIG)
    assert np.array_equal(plain.patches, inference)
    assert plain.input_hash == result.input_hash
    assert not result.fewer_than_4_tumour_slices
    assert result.patches.min() >= 0.0 and result.patches.max() <= 1.0
    # The tumour is in the mask channel of every patch.
    assert (result.patches[:, 1] == 1.0).any(axis=(1, 2)).all()


def test_input_hash_follows_data_and_configuration():
    ct, mask = synthetic_case()
    first = preprocess_patient(ct, mask, spacing=SPACING, config=CONFIG).input_hash
    assert (
        first
        == preprocess_patient(ct.copy(), mask.copy(), spacing=SPACING, config=CONFIG).input_hash
    )
    changed = ct.copy()
    changed[0, 0, 0] += 1
    assert preprocess_patient(changed, mask, spacing=SPACING, config=CONFIG).input_hash != first
    other = PreprocessConfig(input_size=32, min_crop_side_mm=0.0, window_level=60)
    assert preprocess_patient(ct, mask, spacing=SPACING, config=other).input_hash != first


def test_thin_tumour_is_scored_with_fewer_slices_and_flagged():
    ct, mask = synthetic_case()
    mask[mask == 2] = 1
    mask[6, 22:27, 25:30] = 2  # one 2.5 mm slice of tumour -> 2 slices at 2 mm at most
    result = preprocess_patient(ct, mask, spacing=SPACING, config=CONFIG)
    assert result.fewer_than_4_tumour_slices
    assert 1 <= len(result.selected_slices) < 4
    assert result.patches.shape[0] == len(result.selected_slices)


def test_configurable_labels():
    ct, mask = synthetic_case()
    swapped = np.where(mask == 1, 7, np.where(mask == 2, 9, 0)).astype(np.uint8)
    config = PreprocessConfig(input_size=32, min_crop_side_mm=0.0, pancreas_label=7, tumour_label=9)
    reference = preprocess_patient(ct, mask, spacing=SPACING, config=CONFIG)
    relabelled = preprocess_patient(ct, swapped, spacing=SPACING, config=config)
    assert np.array_equal(reference.patches, relabelled.patches)


def test_mismatched_mask_is_refused():
    ct, mask = synthetic_case()
    with pytest.raises(PreprocessError, match="does not match"):
        preprocess_patient(ct, mask[:, :-1], spacing=SPACING, config=CONFIG)


def test_empty_tumour_is_refused():
    ct, mask = synthetic_case()
    mask[mask == 2] = 1
    with pytest.raises(PreprocessError, match="tumour label"):
        preprocess_patient(ct, mask, spacing=SPACING, config=CONFIG)


def test_empty_pancreas_is_refused():
    ct, mask = synthetic_case()
    mask[mask == 1] = 0
    with pytest.raises(PreprocessError, match="pancreas label"):
        preprocess_patient(ct, mask, spacing=SPACING, config=CONFIG)


def test_oblique_and_sagittal_volumes_are_refused():
    ct, mask = synthetic_case()
    angle = np.radians(10)
    oblique = (1, 0, 0, 0, np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle))
    with pytest.raises(PreprocessError, match="oblique"):
        preprocess_patient(ct, mask, spacing=SPACING, direction=oblique, config=CONFIG)
    sagittal = (0, 0, 1, 1, 0, 0, 0, 1, 0)  # slices stacked along x
    with pytest.raises(PreprocessError, match="non-axial"):
        preprocess_patient(ct, mask, spacing=SPACING, direction=sagittal, config=CONFIG)
    # A tilt under the tolerance counts as axial.
    tiny = np.radians(0.2)
    nearly = (1, 0, 0, 0, np.cos(tiny), -np.sin(tiny), 0, np.sin(tiny), np.cos(tiny))
    assert check_axial(nearly)


@pytest.mark.parametrize(
    ("direction", "flip"),
    [
        ((-1, 0, 0, 0, 1, 0, 0, 0, 1), lambda a: a[:, :, ::-1]),  # x flipped (RPS)
        ((1, 0, 0, 0, -1, 0, 0, 0, -1), lambda a: a[::-1, ::-1, :]),  # y and z flipped
        ((0, 1, 0, 1, 0, 0, 0, 0, 1), lambda a: np.swapaxes(a, 1, 2)),  # x and y swapped
    ],
)
def test_flipped_or_swapped_axial_volume_gives_the_canonical_patches(direction, flip):
    ct, mask = synthetic_case()
    spacing = (0.7, 0.9, 2.5)  # unequal in-plane, so a swap that ignored spacing would show
    reference = preprocess_patient(ct, mask, spacing=spacing, config=CONFIG, augment=True)
    matrix = np.array(direction, dtype=float).reshape(3, 3)
    stored_spacing = tuple(float(v) for v in np.abs(matrix.T) @ np.array(spacing))
    stored = preprocess_patient(
        np.ascontiguousarray(flip(ct)),
        np.ascontiguousarray(flip(mask)),
        spacing=stored_spacing,
        direction=direction,
        config=CONFIG,
        augment=True,
    )
    assert np.array_equal(stored.patches, reference.patches)
    assert stored.selected_slices == reference.selected_slices


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_load_volume_reads_image_files_with_their_geometry(tmp_path, suffix):
    import SimpleITK as sitk

    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.75, 0.75, 2.5))
    image.SetOrigin((-10.0, 20.0, -300.0))
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    volume = load_volume(path)
    assert np.array_equal(volume.array, array)
    assert volume.spacing == (0.75, 0.75, 2.5)
    assert volume.origin == (-10.0, 20.0, -300.0)
    assert volume.direction == (-1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_load_volume_explains_a_wrong_path(tmp_path):
    with pytest.raises(PreprocessError, match="neither"):
        load_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreprocessError, match="no DICOM series"):
        load_volume(tmp_path / "empty")
