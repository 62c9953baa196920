"""Slice images for the viewer: pure functions from a `Volume` (and overlays) to RGB pixels.

Radiological convention: axial and coronal images show the patient's right on the image's
left; coronal and sagittal images show superior at the top; axial images anterior at the top;
sagittal images anterior on the left. Pixels are square in millimetres (the slice is resampled
when the voxels are anisotropic), and `voxel_from_click` inverts exactly that mapping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from skimage.transform import resize

from assistant.volume import Volume

if TYPE_CHECKING:  # importing assistant.session at run time would pull in tools/ (and an import cycle)
    from assistant.session import Overlay

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")
# Volume axis held fixed by each plane, and the (image row, image column) voxel axes.
_FIXED_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
_IMAGE_AXES = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}
MASK_ALPHA = 0.4
HEATMAP_MAX_ALPHA = 0.6


@dataclass(frozen=True)
class Window:
    """Grey-level window: intensities from level - width/2 to level + width/2 map to black..white."""

    level: float
    width: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2


CT_WINDOWS: dict[str, Window] = {
    "brain": Window(40, 80),
    "subdural": Window(75, 215),
    "soft tissue": Window(40, 400),
    "lung": Window(-600, 1500),
    "bone": Window(400, 1800),
}
WINDOW_NAMES: tuple[str, ...] = ("auto", *CT_WINDOWS)

# Distinct colours for masks and label values (tab10-like); label 0 is never drawn.
PALETTE = np.array(
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
     [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207], [127, 127, 127]],
    dtype=np.float32,
)  # fmt: skip
# "hot" colour map: black -> red -> yellow -> white, sampled at 0, 1/3, 2/3, 1.
_HOT_STOPS = np.array([0, 1 / 3, 2 / 3, 1])
_HOT_RGB = np.array([[0, 0, 0], [255, 0, 0], [255, 255, 0], [255, 255, 255]], dtype=np.float32)


def auto_window(volume: Volume) -> Window:
    """1st-99th percentile of the volume, the useful range for MR and other unitless scans."""
    low, high = np.percentile(volume.data[:: max(1, volume.data.size // 2_000_000 + 1)], [1, 99])
    return Window(level=float(low + high) / 2, width=max(float(high - low), 1e-6))


def resolve_window(volume: Volume, window: str | Window) -> Window:
    if isinstance(window, Window):
        return window
    if window == "auto":
        return auto_window(volume)
    if window in CT_WINDOWS:
        return CT_WINDOWS[window]
    raise ValueError(f"Unknown window {window!r}; choose one of: {', '.join(WINDOW_NAMES)}.")


def slice_count(volume: Volume, plane: Plane) -> int:
    return volume.shape[_axis(plane)]


def _axis(plane: str) -> int:
    if plane not in _FIXED_AXIS:
        raise ValueError(f"Unknown plane {plane!r}; choose one of: {', '.join(PLANES)}.")
    return _FIXED_AXIS[plane]


def _check_index(volume: Volume, plane: Plane, index: int) -> None:
    count = slice_count(volume, plane)
    if not 0 <= index < count:
        raise ValueError(f"Slice {index} is outside the {plane} range 0-{count - 1}.")


def _oriented_slice(array: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """2D slice laid out in display order: each image axis runs from the voxel axis' high end."""
    row_axis, column_axis = _IMAGE_AXES[plane]
    plane_2d = np.take(array, index, axis=_FIXED_AXIS[plane])
    # After removing the fixed axis, the remaining voxel axes keep their order.
    remaining = [a for a in range(3) if a != _FIXED_AXIS[plane]]
    plane_2d = plane_2d.transpose(remaining.index(row_axis), remaining.index(column_axis))
    return plane_2d[::-1, ::-1]


def display_shape(volume: Volume, plane: Plane) -> tuple[int, int]:
    """Rendered (rows, columns) so that one pixel covers the same millimetres in both directions."""
    row_axis, column_axis = _IMAGE_AXES[plane]
    rows, columns = volume.shape[row_axis], volume.shape[column_axis]
    row_mm, column_mm = volume.spacing[row_axis], volume.spacing[column_axis]
    pixel_mm = min(row_mm, column_mm)
    return max(1, round(rows * row_mm / pixel_mm)), max(1, round(columns * column_mm / pixel_mm))


def _resample(image: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    if image.shape == shape:
        return image
    order = 0 if nearest else 1
    return resize(image, shape, order=order, preserve_range=True, anti_aliasing=False, mode="edge")


def _blend(rgb: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    alpha = alpha[..., np.newaxis]
    return rgb * (1 - alpha) + colour * alpha


def _draw_overlay(rgb: np.ndarray, overlay: Overlay, plane: Plane, index: int, colour_index: int) -> np.ndarray:
    shape = rgb.shape[:2]
    values = _oriented_slice(overlay.data, plane, index)
    if overlay.kind == "heatmap":
        scores = _resample(np.nan_to_num(values.astype(np.float32)), shape, nearest=False)
        low, high = float(np.min(overlay.data)), float(np.max(overlay.data))
        normalised = np.clip((scores - low) / (high - low), 0, 1) if high > low else np.zeros_like(scores)
        colours = np.stack([np.interp(normalised, _HOT_STOPS, _HOT_RGB[:, c]) for c in range(3)], axis=-1)
        return _blend(rgb, colours, normalised * HEATMAP_MAX_ALPHA)
    labels = _resample(values, shape, nearest=True).astype(np.int64)
    if overlay.kind == "labels":
        colours = PALETTE[(labels - 1) % len(PALETTE)]
    else:
        labels = labels > 0
        colours = np.broadcast_to(PALETTE[colour_index % len(PALETTE)], rgb.shape)
    return _blend(rgb, colours, (labels > 0) * MASK_ALPHA)


def render_slice(
    volume: Volume,
    plane: Plane,
    index: int,
    window: str | Window = "auto",
    overlays: Iterable[Overlay] = (),
) -> np.ndarray:
    """One slice as a uint8 RGB image (rows, columns, 3) with overlays blended in."""
    _axis(plane)
    _check_index(volume, plane, index)
    grey_window = resolve_window(volume, window)
    shape = display_shape(volume, plane)
    grey = _resample(_oriented_slice(volume.data, plane, index), shape, nearest=False)
    grey = np.clip((grey - grey_window.low) / grey_window.width, 0, 1) * 255
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=-1).astype(np.float32)
    for number, overlay in enumerate(overlays):
        if overlay.data.shape != volume.shape:
            raise ValueError(f"Overlay {overlay.name!r} has shape {overlay.data.shape}, scan has {volume.shape}.")
        rgb = _draw_overlay(rgb, overlay, plane, index, number)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def voxel_from_click(
    volume: Volume, plane: Plane, index: int, x: float, y: float, rendered_shape: tuple[int, ...]
) -> tuple[int, int, int]:
    """The voxel under pixel (x = column, y = row) of an image `render_slice` made (any display size)."""
    _axis(plane)
    _check_index(volume, plane, index)
    height, width = rendered_shape[:2]
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"The click ({x:g}, {y:g}) is outside the {width}x{height} image.")
    row_axis, column_axis = _IMAGE_AXES[plane]
    rows, columns = volume.shape[row_axis], volume.shape[column_axis]
    display_row = min(rows - 1, int((y + 0.5) * rows / height))
    display_column = min(columns - 1, int((x + 0.5) * columns / width))
    voxel = [0, 0, 0]
    voxel[_FIXED_AXIS[plane]] = index
    voxel[row_axis] = rows - 1 - display_row  # display order runs from the high end of each axis
    voxel[column_axis] = columns - 1 - display_column
    return tuple(voxel)  # type: ignore[return-value]
