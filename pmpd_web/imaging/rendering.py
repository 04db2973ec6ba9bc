"""DICOM images rendered for people (PS3.18 8.3.5 and 9: rendered and thumbnail resources):
one frame as PNG or JPEG, greyscale windowed as PS3.3 C.11.2.1.2 says, colour as stored.

Django-free: the DICOMweb views find the instance and check permissions, then call these.
The window is the one the request names, else the first of the headers' WindowCenter and
WindowWidth, else the frame's own pixel range (segmentations and images without a window).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut

PNG = "image/png"
JPEG = "image/jpeg"
RENDERED_MEDIA_TYPES = (JPEG, PNG)  # the first is the default (PS3.18 8.7.4)
THUMBNAIL_SIZE = 128
JPEG_QUALITY = 90
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")


class RenderingError(ValueError):
    """A rendering parameter that cannot be honoured; its message names it."""


@dataclass(frozen=True)
class Window:
    """A VOI window in modality units (Hounsfield units for CT)."""

    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """The largest width and height the rendered image may have (aspect kept)."""

    width: int
    height: int


def parse_window(text: str | None) -> Window | None:
    """``window=center,width,function`` of PS3.18 8.3.5.1.4."""
    if not text:
        return None
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 3 or parts[2].lower() not in WINDOW_FUNCTIONS:
        raise RenderingError(
            "window is center,width,function with function one of " + ", ".join(WINDOW_FUNCTIONS)
        )
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError as exc:
        raise RenderingError("window center and width are numbers") from exc
    if not width > 0 or not math.isfinite(center):
        raise RenderingError("window width is a positive number")
    return Window(center, width, parts[2].lower())


def parse_viewport(text: str | None) -> Viewport | None:
    """``viewport=width,height`` of PS3.18 8.3.5.1.3 (without a source region)."""
    if not text:
        return None
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise RenderingError("viewport is width,height in pixels (whole numbers above 0)")
    return Viewport(int(parts[0]), int(parts[1]))


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def header_window(ds: pydicom.Dataset) -> Window | None:
    """The first window of the headers' WindowCenter and WindowWidth, if they give one."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR")).lower().replace("_", "-")
    return Window(center, width, function if function in WINDOW_FUNCTIONS else "linear")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Modality values to 0-255 through ``window`` (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""
    values = values.astype(np.float64)
    c, w = window.center, window.width
    if window.function == "sigmoid":
        scaled = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "linear-exact":
        scaled = ((values - c) / w + 0.5) * 255.0
    elif w <= 1:
        scaled = np.where(values <= c - 0.5, 0.0, 255.0)
    else:
        scaled = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def range_window(values: np.ndarray) -> Window:
    """The window that spans the frame's pixel range (a flat frame renders mid-grey)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return Window(low, 1.0, "linear-exact")
    return Window((low + high) / 2, high - low, "linear-exact")


def frame_of(ds: pydicom.Dataset, index: int) -> np.ndarray:
    """Frame ``index`` (0-based) of the decoded pixel data."""
    number_of_frames = int(ds.get("NumberOfFrames") or 1)
    if not 0 <= index < number_of_frames:
        raise RenderingError(f"this instance has {number_of_frames} frame(s)")
    pixels = ds.pixel_array
    return pixels[index] if number_of_frames > 1 else pixels


def to_display(ds: pydicom.Dataset, index: int = 0, window: Window | None = None) -> np.ndarray:
    """Frame ``index`` as 8-bit display values: greyscale (rows, columns) or RGB."""
    frame = frame_of(ds, index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("SamplesPerPixel") or 1) > 1:  # pydicom gives YBR colour as RGB
        if frame.dtype != np.uint8:
            high = float(2 ** int(ds.BitsStored) - 1)
            frame = np.clip(np.rint(frame.astype(np.float64) / high * 255), 0, 255)
        return frame.astype(np.uint8)
    if int(ds.get("BitsAllocated") or 8) == 1:  # a binary segmentation: 0 or 1
        values = frame.astype(np.float64)
    else:
        values = apply_modality_lut(frame, ds).astype(np.float64)
    chosen = window or header_window(ds) or range_window(values)
    grey = apply_window(values, chosen)
    return 255 - grey if photometric == "MONOCHROME1" else grey


def encode(pixels: np.ndarray, media_type: str, viewport: Viewport | None = None) -> bytes:
    """Display values as a PNG or JPEG, shrunk to fit ``viewport`` (never enlarged)."""
    image = Image.fromarray(pixels)
    if viewport is not None:
        image.thumbnail((viewport.width, viewport.height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if media_type == PNG:
        image.save(buffer, format="PNG")
    elif media_type == JPEG:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise RenderingError(f"images are rendered as {PNG} or {JPEG}, not {media_type}")
    return buffer.getvalue()


def render(
    ds: pydicom.Dataset,
    *,
    media_type: str,
    index: int = 0,
    window: Window | None = None,
    viewport: Viewport | None = None,
) -> bytes:
    """Frame ``index`` of the DICOM dataset ``ds`` (with its pixel data) as ``media_type``."""
    return encode(to_display(ds, index, window), media_type, viewport)
