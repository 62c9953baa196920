"""Scans the suites transform themselves, so that answers are checked on geometry no sample has: reoriented
(axes permuted and flipped, the affine kept true), resampled (coarser slices), cropped, renamed."""

from __future__ import annotations

import numpy as np
from assistant.volume import Volume


def transformed(volume: Volume, steps: list[str]) -> Volume:
    for step in steps:
        volume = _STEPS[step](volume)
    return volume


def _copy(volume: Volume, data: np.ndarray, affine: np.ndarray, name: str | None = None) -> Volume:
    return Volume(data=np.ascontiguousarray(data, dtype=np.float32), affine=affine, name=name or volume.name,
                  metadata=volume.metadata, identifiers=volume.identifiers)


def reorient(volume: Volume) -> Volume:
    """Axes 0 and 1 swapped and axis 0 reversed: the same anatomy at the same world positions, other voxel order."""
    data = np.swapaxes(volume.data, 0, 1)[::-1]
    affine = volume.affine.copy()
    affine[:3, [0, 1]] = affine[:3, [1, 0]]
    affine[:3, 3] += affine[:3, 0] * (data.shape[0] - 1)
    affine[:3, 0] = -affine[:3, 0]
    return _copy(volume, data, affine)


def resample(volume: Volume) -> Volume:
    """Every second slice kept: slices twice as far apart, the header's slice thickness unchanged."""
    affine = volume.affine.copy()
    affine[:3, 2] *= 2
    return _copy(volume, volume.data[:, :, ::2], affine)


def crop(volume: Volume) -> Volume:
    """A sixth cut from each in-plane side: a smaller field of view, the world frame unchanged."""
    cut = [n // 6 for n in volume.shape[:2]]
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, 0] * cut[0] + affine[:3, 1] * cut[1]
    return _copy(volume, volume.data[cut[0] : volume.shape[0] - cut[0], cut[1] : volume.shape[1] - cut[1]], affine)


def rename(volume: Volume) -> Volume:
    return _copy(volume, volume.data, volume.affine, name="series_0042")


_STEPS = {"reorient": reorient, "resample": resample, "crop": crop, "rename": rename}
