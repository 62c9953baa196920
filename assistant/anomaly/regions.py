"""Connected regions of a thresholded anomaly map, with size, scores, centroid and atlas label."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from assistant.anomaly.result import AnomalyRegion
from assistant.volume import Volume


def top_regions(score_map: np.ndarray, voxel_threshold: float, volume: Volume, max_regions: int = 5,
                label_for_world: Callable[[np.ndarray], str | None] | None = None) -> list[AnomalyRegion]:
    """The `max_regions` components above `voxel_threshold`, largest summed score first."""
    components, count = ndimage.label(score_map > voxel_threshold)
    if count == 0:
        return []
    indices = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(score_map), components, indices)
    masses = ndimage.sum_labels(score_map, components, indices)
    peaks = ndimage.maximum(score_map, components, indices)
    centroids = ndimage.center_of_mass(score_map, components, indices)
    regions = []
    for rank, position in enumerate(np.argsort(-masses)[:max_regions], start=1):
        centroid_voxel = np.asarray(centroids[position])
        centroid_mm = volume.voxel_to_world(centroid_voxel)
        regions.append(AnomalyRegion(
            rank=rank,
            centroid_mm=tuple(round(float(c), 1) for c in centroid_mm),
            centroid_voxel=tuple(int(round(c)) for c in centroid_voxel),
            size_ml=round(float(sizes[position]) * volume.voxel_volume_ml, 3),
            peak_score=round(float(peaks[position]), 2),
            mean_score=round(float(masses[position] / sizes[position]), 2),
            label=label_for_world(centroid_mm) if label_for_world else None,
        ))
    return regions
