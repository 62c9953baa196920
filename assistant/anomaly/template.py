"""The brain-MR template space where normal models live: MNI152 at 2 mm with brain mask, tissues and AAL.

Every brain MR is registered to this grid (`assistant.imaging.registration`) and histogram-matched
to the template inside the brain, so that one voxel means the same anatomy and one intensity the
same tissue in every scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import nibabel as nib
import numpy as np
from nilearn import datasets, image
from scipy import ndimage

from assistant.imaging.registration import Template, TemplateUnavailableError, load_template
from assistant.volume import Modality, ScanMetadata, Volume

TEMPLATE_RESOLUTION_MM = 2  # 2 mm keeps every method under a minute per scan on 2 cores
BIAS_SIGMA_MM = 20.0  # intensity drifts smoother than this are treated as bias, not anatomy
INTENSITY_LANDMARKS = (1, 5, *range(10, 100, 10), 95, 99)  # brain percentiles matched to the template's


@dataclass(frozen=True)
class TemplateSpace:
    """Template grid, brain mask, dominant tissue per voxel and atlas labels (all arrays on the grid)."""

    template: Template  # the registration target; its volume is the MNI152 T1 scaled to 0..1
    tissue: np.ndarray  # 0 outside, 1 CSF, 2 GM, 3 WM (argmax of the MNI152 probability maps)

    @property
    def reference(self) -> np.ndarray:
        return self.template.volume.data

    @property
    def brain_mask(self) -> np.ndarray:
        return self.template.brain_mask

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.template.volume.shape

    def mirror(self, image: np.ndarray) -> np.ndarray:
        """`image` reflected about the mid-sagittal plane (MNI x = 0).

        nilearn's MNI152 template is symmetric and its 2 mm grid is centred on x = 0 (voxel 49 of 99),
        so after registration the mirror image is a flip of the first (left-right) axis.
        """
        return image[::-1]

    def normalize_intensity(self, warped: np.ndarray) -> np.ndarray:
        """Remove the scan's smooth intensity drift relative to the template, then map its brain intensities onto the template's.

        Bias fields and coil sensitivity differ by scanner and subject and vary slowly; dividing by the
        smoothed ratio to the template takes them out while leaving focal changes (lesions) in place.
        The intensity mapping matches percentile landmarks (Nyul-Udupa) and continues linearly beyond
        the outer ones: full histogram matching squeezed anything brighter than normal tissue into the
        template's top percentile, so hyperintense lesions lost most of their contrast.
        """
        normalized = np.zeros(self.shape, dtype=np.float32)
        corrected = warped * self._smooth_in_brain(self.reference) / np.maximum(self._smooth_in_brain(warped), 1e-6)
        brain = corrected[self.brain_mask]
        source = np.percentile(brain, INTENSITY_LANDMARKS)
        target = np.percentile(self.reference[self.brain_mask], INTENSITY_LANDMARKS)
        normalized[self.brain_mask] = _piecewise_linear(brain, source, target)
        return normalized

    def _smooth_in_brain(self, image: np.ndarray) -> np.ndarray:
        """Gaussian mean of `image` over the brain only (normalised convolution), so the skull does not leak in."""
        sigma = BIAS_SIGMA_MM / TEMPLATE_RESOLUTION_MM
        weight = ndimage.gaussian_filter(self.brain_mask.astype(np.float32), sigma)
        return ndimage.gaussian_filter(np.where(self.brain_mask, image, 0.0).astype(np.float32), sigma) / np.maximum(weight, 1e-6)

    def label_at(self, ijk: np.ndarray) -> str | None:
        if self.template.labels is None:
            return None
        index = tuple(np.clip(np.round(ijk).astype(int), 0, np.asarray(self.shape) - 1))
        name = self.template.label_names.get(int(self.template.labels[index]))
        return name.replace("_", " ") if name else None


def _piecewise_linear(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map `source` landmarks onto `target` linearly between them and with the end segments' slopes beyond them."""
    source = np.maximum.accumulate(source + np.arange(len(source)) * 1e-6)  # strictly increasing for flat histograms
    mapped = np.interp(values, source, target)
    low_slope = (target[1] - target[0]) / (source[1] - source[0])
    high_slope = (target[-1] - target[-2]) / (source[-1] - source[-2])
    mapped = np.where(values < source[0], target[0] + (values - source[0]) * low_slope, mapped)
    return np.where(values > source[-1], target[-1] + (values - source[-1]) * high_slope, mapped).astype(np.float32)


def _aal_on_grid(reference_img: nib.Nifti1Image) -> tuple[np.ndarray | None, dict[int, str]]:
    """AAL labels (from the Colin27 template, already in MNI space) resampled onto the template grid."""
    try:
        colin = load_template("colin27")
    except TemplateUnavailableError:
        return None, {}
    aal = nib.Nifti1Image(colin.labels, colin.volume.affine)
    resampled = image.resample_to_img(aal, reference_img, interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(resampled.get_fdata(), dtype=np.int16), colin.label_names


@cache
def template_space() -> TemplateSpace:
    """Built once per process from nilearn's packaged MNI152 (2009a) and mricron's AAL."""
    reference_img = datasets.load_mni152_template(resolution=TEMPLATE_RESOLUTION_MM)
    reference = reference_img.get_fdata(dtype=np.float32)
    brain_mask = datasets.load_mni152_brain_mask(resolution=TEMPLATE_RESOLUTION_MM).get_fdata() > 0
    gm = datasets.load_mni152_gm_template(resolution=TEMPLATE_RESOLUTION_MM).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=TEMPLATE_RESOLUTION_MM).get_fdata()
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1) * brain_mask
    labels, label_names = _aal_on_grid(reference_img)
    metadata = ScanMetadata(source_format="NIfTI", modality=Modality.MR, series_description="MNI152 2 mm template T1")
    volume = Volume(reference / float(np.percentile(reference[brain_mask], 99.5)), reference_img.affine, metadata,
                    name="mni152-2mm")
    template = Template(name="mni152-2mm", volume=volume, brain_mask=brain_mask, labels=labels, label_names=label_names)
    return TemplateSpace(template=template, tissue=tissue.astype(np.uint8))
