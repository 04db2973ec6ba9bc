"""A volume and its grid: the one representation of a 3D image that the engine, the nnU-Net
core and the imaging app share.

Conventions: arrays are (z, y, x) as SimpleITK's ``GetArrayFromImage`` returns them; size,
spacing and origin are (x, y, z), spacing and origin in millimetres, LPS; direction is the
row-major 3x3 matrix whose columns are the world directions of the x, y and z index axes.

Pure (numpy only): the imaging app, which sits below the engine in the app layers, imports this
module as it imports the statistics core (``.importlinter`` allows exactly that edge).
SimpleITK is imported only by the two functions that convert to and from its images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    x, y, z = values
    return float(x), float(y), float(z)


def format_values(values: Sequence[float]) -> str:
    """``(0.75, 0.75, 2)``: a size, spacing or origin as messages print it."""
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


@dataclass(frozen=True)
class Grid:
    """Where a volume's voxels are: size (x, y, z), spacing, origin, direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def as_dict(self) -> dict[str, list]:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        x, y, z = (int(v) for v in data["size"])
        return cls(
            size=(x, y, z),
            spacing=_triple(data["spacing"]),
            origin=_triple(data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
        )

    @classmethod
    def from_image(cls, image: Any) -> Grid:
        """The grid of a SimpleITK image."""
        x, y, z = (int(v) for v in image.GetSize())
        return cls(
            size=(x, y, z),
            spacing=_triple(image.GetSpacing()),
            origin=_triple(image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def mismatch(
        self, other: Grid, *, tolerance_mm: float, direction_tolerance: float
    ) -> str | None:
        """Why ``other`` is not this grid (within the tolerances), or None when it is."""
        if self.size != other.size:
            return f"size {format_values(other.size)} voxels instead of {format_values(self.size)}"
        if not np.allclose(self.spacing, other.spacing, rtol=0, atol=tolerance_mm):
            return f"spacing {format_values(other.spacing)} mm instead of {format_values(self.spacing)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=direction_tolerance):
            return f"direction {format_values(other.direction)} instead of {format_values(self.direction)}"
        if not np.allclose(self.origin, other.origin, rtol=0, atol=tolerance_mm):
            return (
                f"origin {format_values(other.origin)} mm instead of {format_values(self.origin)}"
            )
        return None

    def image(self, array: np.ndarray) -> Any:
        """``array`` (z, y, x, on this grid) as a SimpleITK image placed on this grid."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class Volume:
    """A 3D image: its voxels (z, y, x) and its grid."""

    array: np.ndarray
    grid: Grid

    @classmethod
    def from_image(cls, image: Any) -> Volume:
        """A 3D SimpleITK image as a volume (the voxels copied into a numpy array)."""
        import SimpleITK as sitk

        return cls(array=sitk.GetArrayFromImage(image), grid=Grid.from_image(image))

    @classmethod
    def of_array(
        cls,
        array: np.ndarray,
        *,
        spacing: Sequence[float],
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: Sequence[float] = IDENTITY_DIRECTION,
    ) -> Volume:
        """``array`` (z, y, x) placed with ``spacing``, ``origin`` and ``direction``."""
        z, y, x = (int(v) for v in np.shape(array))
        grid = Grid(
            size=(x, y, z),
            spacing=_triple(spacing),
            origin=_triple(origin),
            direction=tuple(float(v) for v in direction),
        )
        return cls(array=array, grid=grid)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    @property
    def origin(self) -> tuple[float, float, float]:
        return self.grid.origin

    @property
    def direction(self) -> tuple[float, ...]:
        return self.grid.direction

    def image(self) -> Any:
        """The volume as a SimpleITK image."""
        return self.grid.image(self.array)
