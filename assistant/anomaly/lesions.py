"""Synthetic lesions with known ground truth, for evaluation and tests (always labelled synthetic).

Controlled in-silico abnormalities: a hyper- or hypo-intense blob of a chosen size and shape, or a ring
(a rim of the chosen polarity around a core of the other, as in a ring-enhancing lesion), blended
smoothly into real tissue, optionally pushing the surrounding anatomy outwards (mass effect).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

LesionShape = Literal["sphere", "ellipsoid", "irregular"]
Polarity = Literal["hyper", "hypo"]
LesionPattern = Literal["solid", "ring"]
RING_RIM_FRACTION = 0.3  # the rim's thickness as a share of the radius
RING_CORE_CONTRAST = 0.5  # the core's opposite change, as a share of the rim's


@dataclass(frozen=True)
class LesionSpec:
    diameter_mm: float
    shape: LesionShape = "sphere"
    polarity: Polarity = "hyper"
    contrast: float = 0.3  # intensity change as a fraction of the brain's 99th-percentile intensity
    mass_effect_mm: float = 0.0  # peak outward displacement of the tissue around the lesion
    pattern: LesionPattern = "solid"


@dataclass(frozen=True)
class SyntheticLesion:
    image: np.ndarray
    mask: np.ndarray  # bool, the lesion's ground truth
    center_voxel: tuple[int, int, int]
    spec: LesionSpec


def _lesion_mask(shape: tuple[int, ...], center: np.ndarray, spacing: np.ndarray, spec: LesionSpec,
                 rng: np.random.Generator) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    offsets_mm = [(grid[axis] - center[axis]) * spacing[axis] for axis in range(3)]
    radii = np.full(3, spec.diameter_mm / 2)
    if spec.shape == "ellipsoid":
        radii = radii * rng.permutation([1.4, 1.0, 0.7])
    distance = np.sqrt(sum((offset / radius) ** 2 for offset, radius in zip(offsets_mm, radii)))
    if spec.shape == "irregular":
        roughness = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0)
        distance = distance + 0.35 * roughness / (roughness.std() + 1e-6)
    return distance <= 1.0


def _mass_effect(image: np.ndarray, center: np.ndarray, spacing: np.ndarray, spec: LesionSpec) -> np.ndarray:
    """Resample the image so that tissue near the lesion moves radially outwards (decays with distance)."""
    grid = np.indices(image.shape, dtype=np.float32)
    offsets_mm = np.stack([(grid[axis] - center[axis]) * spacing[axis] for axis in range(3)])
    distance_mm = np.sqrt((offsets_mm**2).sum(axis=0)) + 1e-3
    reach_mm = spec.diameter_mm
    displacement_mm = spec.mass_effect_mm * np.exp(-((distance_mm / reach_mm) ** 2)) * np.minimum(distance_mm / (spec.diameter_mm / 2), 1.0)
    source = grid - (offsets_mm / distance_mm * displacement_mm) / spacing[:, None, None, None]
    return ndimage.map_coordinates(image, source, order=1, mode="nearest").astype(np.float32)


def insert_lesion(image: np.ndarray, region: np.ndarray, spacing: tuple[float, float, float], spec: LesionSpec,
                  rng: np.random.Generator) -> SyntheticLesion:
    """Insert one lesion at a random place fully inside `region` (e.g. the brain mask)."""
    spacing_arr = np.asarray(spacing, dtype=np.float32)
    distance_mm = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing_arr)[1:-1, 1:-1, 1:-1]
    inside = distance_mm > spec.diameter_mm * 0.7  # the array's edge counts as outside the region
    candidates = np.argwhere(inside)
    if len(candidates) == 0:
        raise ValueError(f"No place inside the region fits a {spec.diameter_mm:g} mm lesion.")
    center = candidates[rng.integers(len(candidates))].astype(np.float32)
    mask = _lesion_mask(image.shape, center, spacing_arr, spec, rng) & region
    lesioned = _mass_effect(image, center, spacing_arr, spec) if spec.mass_effect_mm > 0 else image.astype(np.float32)
    scale = float(np.percentile(image[region], 99))
    sign = 1.0 if spec.polarity == "hyper" else -1.0
    change = mask.astype(np.float32)
    if spec.pattern == "ring":
        depth_mm = ndimage.distance_transform_edt(mask, sampling=spacing_arr)
        core = depth_mm > RING_RIM_FRACTION * spec.diameter_mm / 2
        change[core] = -RING_CORE_CONTRAST
    blend = ndimage.gaussian_filter(change, 0.7)
    texture = 1.0 + 0.1 * rng.standard_normal(image.shape).astype(np.float32)
    lesioned = np.maximum(lesioned + sign * spec.contrast * scale * blend * texture, image.min())
    return SyntheticLesion(image=lesioned.astype(np.float32), mask=mask, center_voxel=tuple(int(c) for c in center), spec=spec)
