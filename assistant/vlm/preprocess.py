"""From a `Volume` to the arrays each 3D vision backend expects, done explicitly and checked.

Every backend states its own input: M3D-LaMed wants 1x32x256x256 in 0..1 (axial slices, radiological
in-plane view), the project's VLM a small RAS grid for its frozen encoder, the 2D multimodal models a
set of windowed axial slices. The checks run first, so a volume the backend cannot use (2D, tiny,
huge, NaN) gives one clear `VolumeNotSupported` message and the caller falls back to text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from assistant.volume import Modality, Volume

M3D_SHAPE = (32, 256, 256)  # depth, height, width, as in M3D-LaMed
MIN_VOXELS_PER_AXIS = 8
MAX_VOXELS = 1024**3 // 2


class VolumeNotSupported(ValueError):
    """The vision backend cannot look at this volume; the message says why and what happens instead."""


@dataclass(frozen=True)
class IntensityWindow:
    """CT: a fixed HU window; other modalities: percentiles of the volume (their units are arbitrary)."""

    ct_hu: tuple[float, float] = (-20.0, 100.0)  # brain window: parenchyma, blood and CSF apart, bone saturated
    percentiles: tuple[float, float] = (0.5, 99.5)

    def bounds(self, volume: Volume) -> tuple[float, float]:
        if volume.modality is Modality.CT:
            return self.ct_hu
        low, high = np.percentile(volume.data, self.percentiles)
        return float(low), float(high)


def check_volume(volume: Volume) -> None:
    """Refuse what a 3D encoder cannot use, before any allocation."""
    shape = volume.shape
    if min(shape) < MIN_VOXELS_PER_AXIS:
        raise VolumeNotSupported(
            f"the scan is {shape[0]}x{shape[1]}x{shape[2]} voxels; the vision model needs at least {MIN_VOXELS_PER_AXIS} "
            "along every axis (a single 2D image or a thin slab is not a volume), so the answer uses the text model only"
        )
    if int(np.prod(shape)) > MAX_VOXELS:
        raise VolumeNotSupported(f"the scan has {int(np.prod(shape)):,} voxels, more than {MAX_VOXELS:,} the vision model accepts")
    finite = np.isfinite(volume.data)
    if not finite.all():
        share = 1 - finite.mean()
        raise VolumeNotSupported(f"{share:.1%} of the voxels are NaN or infinite; the vision model cannot look at this scan")
    if float(volume.data.max() - volume.data.min()) == 0.0:
        raise VolumeNotSupported("every voxel has the same value; there is nothing for the vision model to see")


def windowed(volume: Volume, window: IntensityWindow = IntensityWindow()) -> np.ndarray:
    """Intensities clipped to the window and scaled to 0..1."""
    low, high = window.bounds(volume)
    if high <= low:
        high = low + 1.0
    return np.clip((volume.data - low) / (high - low), 0.0, 1.0).astype(np.float32)


def resized(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling to a fixed grid (the aspect ratio is not kept)."""
    zoom = [target / current for target, current in zip(shape, array.shape)]
    return ndimage.zoom(array, zoom, order=1, grid_mode=True, mode="nearest").astype(np.float32)


def encoder_grid(volume: Volume, shape: tuple[int, int, int], window: IntensityWindow = IntensityWindow()) -> np.ndarray:
    """[1, 1, X, Y, Z] in RAS voxel order, 0..1: what the Merlin-style encoder reads."""
    check_volume(volume)
    return resized(windowed(volume, window), shape)[None, None]


def radiological_axial(ras: np.ndarray) -> np.ndarray:
    """(slices inferior->superior, rows anterior->posterior, columns patient right->left) from RAS order."""
    return np.ascontiguousarray(ras[::-1, ::-1, :].transpose(2, 1, 0))


def m3d_input(volume: Volume, window: IntensityWindow = IntensityWindow()) -> np.ndarray:
    """M3D-LaMed's 1x32x256x256 input, prepared as M3D's data preparation does (MONAI CropForeground then
    Resize to 32x256x256, in Data/process/m3d_cap_data_prepare.py): axial slices in radiological view,
    windowed, min-max to 0..1, cropped to the voxels above 0 (the background falls to 0), then resized."""
    from monai.transforms import Compose, CropForeground, Resize

    check_volume(volume)
    axial = radiological_axial(windowed(volume, window))[None]
    low, high = float(axial.min()), float(axial.max())
    if high <= low:
        raise VolumeNotSupported("every voxel falls outside the intensity window; there is nothing for the vision model to see")
    prepare = Compose([CropForeground(), Resize(spatial_size=M3D_SHAPE)])
    return np.asarray(prepare((axial - low) / (high - low)), dtype=np.float32)


@dataclass(frozen=True)
class SliceSelection:
    """Which axial slices a 2D multimodal model sees: `count` evenly spaced ones between the fractions."""

    count: int = 8
    start_fraction: float = 0.15
    stop_fraction: float = 0.85
    size: int = 448

    def indices(self, depth: int) -> list[int]:
        if self.count < 1 or not 0 <= self.start_fraction < self.stop_fraction <= 1:
            raise ValueError("slice selection needs count >= 1 and 0 <= start_fraction < stop_fraction <= 1")
        positions = np.linspace(self.start_fraction * (depth - 1), self.stop_fraction * (depth - 1), self.count)
        return sorted(set(int(round(p)) for p in positions))


def axial_slices(volume: Volume, selection: SliceSelection = SliceSelection(),
                 window: IntensityWindow = IntensityWindow()) -> tuple[list[np.ndarray], list[int]]:
    """Windowed axial slices as uint8 RGB images (radiological view) and their slice indices."""
    check_volume(volume)
    axial = radiological_axial(windowed(volume, window))
    chosen = selection.indices(axial.shape[0])
    images = []
    for index in chosen:
        plane = resized(axial[index], (selection.size, selection.size))
        images.append(np.repeat((plane * 255).round().astype(np.uint8)[..., None], 3, axis=2))
    return images, chosen
