"""The one volume and grid shared by the engine, the nnU-Net core and the imaging app."""

from __future__ import annotations

import numpy as np
import pytest

from inference.pmpd.volume import Grid, Volume


def test_an_array_placed_on_a_grid_has_its_size_in_x_y_z_order():
    array = np.zeros((5, 7, 9), dtype=np.int16)  # (z, y, x)
    volume = Volume.of_array(array, spacing=(0.75, 0.8, 2.5), origin=(-10, 20, -300))
    assert volume.grid.size == (9, 7, 5)
    assert volume.spacing == (0.75, 0.8, 2.5)
    assert volume.origin == (-10.0, 20.0, -300.0)
    assert volume.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_a_volume_goes_to_simpleitk_and_back_unchanged():
    array = np.arange(5 * 7 * 9, dtype=np.int16).reshape(5, 7, 9)
    direction = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    volume = Volume.of_array(array, spacing=(0.5, 0.5, 2.0), origin=(1, 2, 3), direction=direction)
    back = Volume.from_image(volume.image())
    np.testing.assert_array_equal(back.array, array)
    assert back.grid == volume.grid
    assert Grid.from_dict(volume.grid.as_dict()) == volume.grid


def test_a_grid_says_how_another_differs():
    grid = Grid((9, 7, 5), (0.5, 0.5, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).reshape(-1)))
    moved = Grid(grid.size, grid.spacing, (0.0, 0.0, 4.0), grid.direction)
    assert grid.mismatch(grid, tolerance_mm=0.01, direction_tolerance=1e-4) is None
    assert grid.mismatch(moved, tolerance_mm=0.01, direction_tolerance=1e-4) == (
        "origin (0, 0, 4) mm instead of (0, 0, 0)"
    )


@pytest.mark.parametrize("module", ["pmpd_web.imaging.volumes", "inference.pmpd.preprocess"])
def test_the_imaging_app_and_the_engine_share_the_one_volume(module):
    import importlib

    shared = importlib.import_module(module)
    assert shared.Volume is Volume
    assert getattr(shared, "Grid", Grid) is Grid
