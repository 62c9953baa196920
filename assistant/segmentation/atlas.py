"""Named brain structures on MRI: register the scan to Colin27 and bring the AAL labels back.

The registration is the slow part (tens of seconds), and warping the label maps onto the scan takes
seconds more, so both are kept in the per-scan cache (`assistant.imaging.scan_cache`, keyed by the
scan's content and `ATLAS_METHOD`): asking for the left and then the right hippocampus of the same
scan registers and warps once. The session drops them when it closes.

Two structures are not AAL labels. The brain is Colin27's ch2bet mask made into the envelope that
skull-strip masks describe (sulci closed, the subarachnoid CSF under the skull included). The
lateral ventricles are found in the patient's own image: CSF-dark voxels deep in the brain,
connected to where Colin27's ventricles land and up to `VENTRICLE_SEARCH_MM` beyond them, so that
the patient's ventricle size is measured rather than the template's (ventricles enlarged further
than that are cut at the limit).
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from assistant.imaging.progress import ProgressCallback, report
from assistant.imaging.registration import Registration, array_to_sitk, load_template, register_to_template, sitk_to_array
from assistant.imaging.scan_cache import get_or_compute
from assistant.segmentation.classical import head_mask
from assistant.segmentation.prompts import Structure
from assistant.segmentation.result import keep_largest_component, label_components
from assistant.volume import Volume

ATLAS_TEMPLATE = "colin27"
BRAIN_CLOSING_MM = 5.0  # ch2bet dips into every sulcus; brain-mask references run over them
SUBARACHNOID_MARGIN_MM = 2.0  # ch2bet stops at the cortex; the CSF layer under the skull is part of a brain mask
VENTRICLE_DEPTH_MM = 15.0  # ventricles lie this deep in the brain; sulcal and surface CSF does not
VENTRICLE_OPENING_MM = 2.0  # cisterns and the cerebral aqueduct are thinner than this; lateral ventricles are not
VENTRICLE_SEARCH_MM = 5.0  # how far beyond the template's ventricles an enlarged ventricle is followed
MIN_VENTRICLE_ML = 0.1  # smaller dark specks are noise or vessels, not ventricle
ATLAS_METHOD = f"{ATLAS_TEMPLATE}-aal/affine+bspline/1"  # a change to the registration or the warps bumps it
_ENVELOPE, _VENTRICLES, _RIGHT = 1, 2, 4  # bits of the template region map warped once per scan


def registration_for(volume: Volume, progress: ProgressCallback | None = None) -> Registration:
    """Affine + B-spline registration of `volume` to Colin27, computed once per scan."""
    return get_or_compute(volume.fingerprint, ATLAS_METHOD, "registration", lambda: register_to_template(
        volume, load_template(ATLAS_TEMPLATE), kind="affine+bspline", progress=progress))


def aal_label_ids(structure: Structure) -> list[int]:
    """AAL label values whose names match the structure (and its side, if one was asked for)."""
    names = load_template(ATLAS_TEMPLATE).label_names
    suffix = f"_{structure.side}$" if structure.side else ""
    patterns = [re.compile(f"^{pattern}.*{suffix}") for pattern in structure.aal_patterns]
    return sorted(label for label, name in names.items() if any(p.match(name) for p in patterns))


@cache
def template_brain_envelope() -> np.ndarray:
    """Colin27's ch2bet brain with its sulci closed and enclosed holes filled (template grid)."""
    template = load_template(ATLAS_TEMPLATE)
    radius = [max(1, round(BRAIN_CLOSING_MM / s)) for s in template.volume.spacing]
    padded = sitk.ConstantPad(array_to_sitk(template.brain_mask, template.volume.affine), radius, radius)
    closed = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(padded, radius, sitk.sitkBall))
    return sitk_to_array(sitk.Crop(closed, radius, radius)) > 0


def _depth_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    return ndimage.distance_transform_edt(mask, sampling=spacing)


def ventricle_csf_level(data: np.ndarray, brain: np.ndarray, deep: np.ndarray) -> float:
    """Intensity below which a deep brain voxel is ventricular CSF on T1.

    Three-class Otsu in the brain gives the CSF/grey-matter level; halfway from it down to the
    deep CSF's median keeps the partial-volume rim and dark deep grey matter out.
    """
    csf_grey = float(threshold_multiotsu(data[brain][::3], classes=3)[0])
    deep_csf = data[deep & (data < csf_grey)]
    if deep_csf.size == 0:
        raise ValueError("No CSF-dark voxels lie deep in the brain; is this a T1-weighted brain MRI?")
    return (float(np.median(deep_csf)) + csf_grey) / 2


@cache
def template_ventricles() -> np.ndarray:
    """Colin27's lateral ventricles (template grid): deep, CSF-dark, outside every AAL label.

    An opening cuts the thin cisterns around the midbrain and the fourth ventricle away from the
    lateral ventricles, which (joined through the foramina) are then the largest component.
    """
    template = load_template(ATLAS_TEMPLATE)
    brain, data = template_brain_envelope(), template.volume.data
    deep = _depth_mm(brain, template.volume.spacing) > VENTRICLE_DEPTH_MM
    candidates = deep & (template.labels == 0) & (data < ventricle_csf_level(data, brain, deep))
    radius = [max(1, round(VENTRICLE_OPENING_MM / s)) for s in template.volume.spacing]
    opened = sitk.BinaryMorphologicalOpening(array_to_sitk(candidates, template.volume.affine), radius, sitk.sitkBall)
    return keep_largest_component(sitk_to_array(opened) > 0)


@cache
def _template_regions() -> np.ndarray:
    """Brain envelope, lateral ventricles and right hemisphere (template x >= 0 mm) as bits of one map."""
    volume = load_template(ATLAS_TEMPLATE).volume
    x_mm = volume.affine[0, 0] * np.arange(volume.shape[0]) + volume.affine[0, 3]
    right = np.broadcast_to((x_mm >= 0)[:, None, None], volume.shape)
    return (_ENVELOPE * template_brain_envelope() + _VENTRICLES * template_ventricles() + _RIGHT * right).astype(np.uint8)


def _regions_on(volume: Volume, registration: Registration) -> np.ndarray:
    """The template region map on the scan grid: one B-spline resampling per scan, shared by every request."""
    return get_or_compute(volume.fingerprint, ATLAS_METHOD, "regions", lambda: registration.warp_labels(_template_regions()))


def _aal_labels_on(volume: Volume, registration: Registration) -> np.ndarray:
    """The AAL label map on the scan grid: one resampling per scan, whichever structures are asked for."""
    labels = load_template(ATLAS_TEMPLATE).labels
    return get_or_compute(volume.fingerprint, ATLAS_METHOD, "aal labels", lambda: registration.warp_labels(labels))


def _brain(volume: Volume, registration: Registration) -> np.ndarray:
    """The template brain envelope on the scan, widened by the subarachnoid margin, within the head.

    The head mask trims template brain that lands on background, so a skull-stripped scan keeps
    exactly its own brain.
    """
    envelope = (_regions_on(volume, registration) & _ENVELOPE) > 0
    within_margin = ndimage.distance_transform_edt(~envelope, sampling=volume.spacing) <= SUBARACHNOID_MARGIN_MM
    return within_margin & head_mask(volume)


def _ventricles(volume: Volume, registration: Registration, side: str | None) -> np.ndarray:
    """CSF-dark voxels deep in this scan's brain, near and connected to Colin27's lateral ventricles.

    The search stops `VENTRICLE_SEARCH_MM` beyond the template's ventricles: without that limit
    the dark voxels run on through the third ventricle into the cisterns and the interhemispheric
    fissure. One side is cut at the template's midline mapped onto the scan.
    """
    data = np.nan_to_num(volume.data.astype(np.float32, copy=False))
    regions = _regions_on(volume, registration)
    brain = _brain(volume, registration)
    deep = _depth_mm(brain, volume.spacing) > VENTRICLE_DEPTH_MM
    prior = (regions & _VENTRICLES) > 0
    near_prior = ndimage.distance_transform_edt(~prior, sampling=volume.spacing) <= VENTRICLE_SEARCH_MM
    candidates = deep & near_prior & (data < ventricle_csf_level(data, brain, deep))
    labels, sizes = label_components(candidates)
    touched = np.unique(labels[prior & candidates])
    touched = touched[(touched > 0) & (sizes[touched - 1] * volume.voxel_volume_ml >= MIN_VENTRICLE_ML)]
    mask = np.isin(labels, touched)
    if side is not None:
        mask &= ((regions & _RIGHT) > 0) == (side == "R")
    return mask


def segment_structure(volume: Volume, structure: Structure, progress: ProgressCallback | None = None) -> tuple[np.ndarray, list[str]]:
    """The structure's mask on the scan grid, and notes on how it was obtained."""
    template = load_template(ATLAS_TEMPLATE)
    registration = registration_for(volume, progress)
    report(progress, 0.97, "mapping atlas labels onto the scan")
    if structure.rule == "brain_mr":
        mask = _brain(volume, registration)
        source = (f"Colin27 brain mask (ch2bet, sulci closed, {SUBARACHNOID_MARGIN_MM:g} mm subarachnoid margin) "
                  "within the head")
    elif structure.rule == "ventricles_mr":
        mask = _ventricles(volume, registration, structure.side)
        source = (f"this scan's CSF-dark voxels over {VENTRICLE_DEPTH_MM:g} mm deep in the brain, within "
                  f"{VENTRICLE_SEARCH_MM:g} mm of and connected to Colin27's lateral ventricles (the third and fourth "
                  "ventricles are left out: on T1 they merge with the cisterns)")
    else:
        ids = aal_label_ids(structure)
        if not ids:
            raise ValueError(f"The AAL atlas has no label for {structure.name!r}.")
        mask = np.isin(_aal_labels_on(volume, registration), ids)
        source = f"AAL labels {', '.join(template.label_names[i] for i in ids)}"
    notes = [
        f"Atlas-based: {source} mapped through {registration.kind} registration to Colin27 "
        f"(Mattes MI {registration.metric_value:.2f}, {registration.seconds:.0f} s); "
        "boundaries follow one healthy template brain, not this patient's anatomy, and fail where anatomy is distorted."
    ]
    return mask, notes
