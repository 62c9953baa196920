"""Classical 3D segmentation: seeded region growing, box thresholding and CT intensity rules.

No model weights, fast on 2 cores, and predictable: the fallback for every prompt and the
right tool for structures that are defined by their intensity (bone and air on CT).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_otsu

from assistant.imaging.progress import ProgressCallback, report
from assistant.imaging.registration import array_to_sitk, sitk_to_array
from assistant.segmentation.prompts import BoxPrompt, PointPrompt, Structure
from assistant.segmentation.result import keep_largest_component, label_components
from assistant.volume import Modality, Volume

BONE_HU = 300.0
AIR_HU = -400.0
BODY_HU = -300.0
BRAIN_HU = (-5.0, 85.0)
SOFT_TISSUE_HU = (-100.0, 100.0)
MIN_SPECK_ML = 0.05  # components smaller than this are noise, not anatomy
MAX_GROWTH_FRACTION = 0.5  # a region grown over half the scan has leaked into the background


def _finite(volume: Volume) -> np.ndarray:
    return np.nan_to_num(volume.data.astype(np.float32, copy=False))


def _drop_specks(mask: np.ndarray, volume: Volume) -> np.ndarray:
    labels, sizes = label_components(mask)
    keep = np.flatnonzero(sizes * volume.voxel_volume_ml >= MIN_SPECK_ML) + 1
    return np.isin(labels, keep)


def _fill_axial_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice: a skull ring open at the foramen magnum still encloses the brain."""
    filled = np.empty_like(mask)
    for k in range(mask.shape[2]):
        filled[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return filled


def head_mask(volume: Volume) -> np.ndarray:
    """Everything that is the patient, not air or table: largest bright component, holes filled."""
    data = _finite(volume)
    level = BODY_HU if volume.modality is Modality.CT else threshold_otsu(data[:: 2, :: 2, :: 2]) * 0.5
    body = ndimage.binary_opening(data > level, iterations=1)
    return ndimage.binary_fill_holes(_fill_axial_holes(keep_largest_component(body)))


def _brain_ct(volume: Volume, data: np.ndarray) -> np.ndarray:
    """Brain-window voxels away from bone; erosion cuts the thin bridges to the scalp at skull gaps."""
    bone = data >= BONE_HU
    candidate = (data > BRAIN_HU[0]) & (data < BRAIN_HU[1]) & ~ndimage.binary_dilation(bone, iterations=2)
    core = keep_largest_component(ndimage.binary_erosion(candidate, iterations=3))
    brain = ndimage.binary_dilation(core, iterations=3) & candidate
    return _fill_axial_holes(ndimage.binary_fill_holes(brain))


def _lungs(volume: Volume, data: np.ndarray) -> np.ndarray:
    candidates = (data < AIR_HU) & head_mask(volume)
    labels, sizes = label_components(candidates)
    large = np.flatnonzero(sizes * volume.voxel_volume_ml >= 100.0) + 1  # each lung holds litres of air
    return np.isin(labels, large)


def segment_structure(volume: Volume, structure: Structure, progress: ProgressCallback | None = None) -> np.ndarray:
    """A structure defined by an intensity rule (bone, air, soft tissue, head, brain on CT, lungs)."""
    report(progress, 0.1, f"applying the {structure.name} rule")
    data = _finite(volume)
    rule = structure.rule
    if rule == "bone":
        mask = _drop_specks(data >= BONE_HU, volume)
    elif rule == "air":
        mask = _drop_specks((data < AIR_HU) & head_mask(volume), volume)
    elif rule == "soft_tissue":
        mask = _drop_specks((data >= SOFT_TISSUE_HU[0]) & (data <= SOFT_TISSUE_HU[1]) & head_mask(volume), volume)
    elif rule == "head":
        mask = head_mask(volume)
    elif rule == "brain_ct":
        mask = _brain_ct(volume, data)
    elif rule == "lungs":
        mask = _lungs(volume, data)
    else:
        raise ValueError(f"No intensity rule segments {structure.name!r}; use the atlas backend or a point or box.")
    report(progress, 1.0, f"{structure.name} rule done")
    return mask


def _smoothed(volume: Volume) -> sitk.Image:
    image = array_to_sitk(_finite(volume), volume.affine)
    return sitk.SmoothingRecursiveGaussian(image, float(min(volume.spacing)))


def _check_not_leaked(mask: np.ndarray) -> np.ndarray:
    if mask.mean() > MAX_GROWTH_FRACTION:
        raise ValueError(
            "Region growing from this point spread over most of the scan (the point may be in the background "
            "or on a low-contrast boundary); click inside the structure or draw a box around it."
        )
    return mask


def grow_from_points(volume: Volume, prompt: PointPrompt, progress: ProgressCallback | None = None) -> np.ndarray:
    """Confidence-connected region growing: voxels statistically like the seeds' neighbourhood."""
    report(progress, 0.1, "growing a region from the points")
    seeds = [tuple(int(v) for v in point) for point in prompt.voxels]
    grown = sitk.ConfidenceConnected(
        _smoothed(volume), seedList=seeds, numberOfIterations=3, multiplier=2.5, initialNeighborhoodRadius=1, replaceValue=1
    )
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(sitk_to_array(grown) > 0, iterations=1))
    report(progress, 1.0, "region growing done")
    return _check_not_leaked(mask)


def threshold_box(volume: Volume, prompt: BoxPrompt, progress: ProgressCallback | None = None) -> np.ndarray:
    """Otsu inside the box, keeping the class and component at the box centre; a 2D box grows through slices."""
    report(progress, 0.1, "thresholding inside the box")
    data = _finite(volume)
    low, high = prompt.low, prompt.high + 1
    crop = data[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    if np.ptp(crop) == 0:
        raise ValueError("The box has a constant intensity; there is nothing to separate in it.")
    level = threshold_otsu(crop)
    centre = crop[tuple(s // 2 for s in crop.shape)]
    inside = crop > level if centre > level else crop <= level
    mask = np.zeros(volume.shape, dtype=bool)
    mask[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = inside
    if prompt.is_2d:
        values = crop[inside]
        lower, upper = (float(v) for v in np.percentile(values, [2, 98]))
        seeds = [tuple(int(v) for v in voxel) for voxel in np.argwhere(mask)[:: max(1, int(mask.sum()) // 500)]]
        grown = sitk.ConnectedThreshold(_smoothed(volume), seedList=seeds, lower=lower, upper=upper, replaceValue=1)
        mask = sitk_to_array(grown) > 0
        margin = ((high - low) * 0.2).astype(int) + 1
        region = np.zeros_like(mask)
        region[max(low[0] - margin[0], 0) : high[0] + margin[0], max(low[1] - margin[1], 0) : high[1] + margin[1], :] = True
        mask &= region
    labels, _ = label_components(mask)
    centre_voxel = tuple((prompt.low + prompt.high) // 2)
    mask = labels == labels[centre_voxel] if labels[centre_voxel] else keep_largest_component(mask)
    report(progress, 1.0, "box thresholding done")
    return _check_not_leaked(ndimage.binary_fill_holes(mask))
