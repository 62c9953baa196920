"""Controlled in-silico cases for training and evaluating the 3D VLM, from the real bundled volumes.

No labelled 3D VQA data installs offline, so every case is a real base volume with known,
generated variations: modality facts, field of view (whole head or a superior crop) and, in half
of the cases, one synthetic lesion of known diameter, hemisphere and AAL region inserted with
`assistant.anomaly.lesions` (a hyperdense, blood-like one in CT). Each case carries a caption,
closed questions with their options and open questions with reference answers, in an
M3D-Data-like JSONL (`{"image": ..., "conversations": [...]}` plus the typed facts).

The split is by base volume: the evaluation bases are never seen in training.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
from nilearn import image as nilearn_image
from scipy import ndimage
from tqdm import tqdm

from assistant.anomaly.lesions import LesionSpec, insert_lesion
from assistant.imaging.registration import TemplateUnavailableError, load_template
from assistant.scans.samples import load_sample, sample_labels
from assistant.vlm.cases import Case, LesionFacts, QuestionAnswer, Side, default_data_dir, write_cases
from assistant.volume import Modality, Volume

CASE_SPACING_MM = 2.0  # cases are stored at 2 mm: the encoder sees 64 voxels per axis anyway
TRAIN_BASES = ("mr-t1-mni152", "mr-t1-itk", "ct-head")
EVAL_BASES = ("mr-t1-colin27",)
LOBES = ("frontal", "temporal", "parietal", "occipital", "other")


@dataclass(frozen=True)
class BaseVolume:
    """A real scan at 2 mm with the mask lesions go into and, in MNI space, AAL labels and names."""

    name: str
    volume: Volume
    brain: np.ndarray
    midline_x_mm: float
    aal: np.ndarray | None
    aal_names: dict[int, str]


_LOBE_OF_AAL_GYRUS = {
    "frontal": ("frontal", "precentral", "rolandic", "supp", "olfactory", "rectus", "paracentral"),
    "parietal": ("parietal", "postcentral", "supramarginal", "angular", "precuneus"),
    "temporal": ("temporal", "fusiform", "heschl", "hippocampus", "parahippocampal", "amygdala"),
    "occipital": ("occipital", "calcarine", "cuneus", "lingual"),
}


def lobe_of(aal_name: str | None) -> str:
    """The lobe of an AAL region from its gyrus (Frontal_Sup_L, Precuneus_R); insula, cingulum, deep nuclei
    and cerebellum are 'other'."""
    gyrus = (aal_name or "").split("_")[0].lower()
    return next((lobe for lobe, gyri in _LOBE_OF_AAL_GYRUS.items() if gyrus in gyri), "other")


def _resampled(volume: Volume, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    zoom = np.asarray(volume.spacing) / spacing_mm
    data = ndimage.zoom(volume.data, zoom, order=1).astype(np.float32)
    affine = volume.affine.copy()
    affine[:3, :3] = volume.affine[:3, :3] / zoom
    return data, affine


def _on_grid(labels: nib.Nifti1Image, data_shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    target = nib.Nifti1Image(np.zeros(data_shape, dtype=np.uint8), affine)
    resampled = nilearn_image.resample_to_img(labels, target, interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(resampled.dataobj).astype(np.int16)


def _ct_brain(hu: np.ndarray) -> np.ndarray:
    """Brain parenchyma in a head CT: 0-80 HU voxels well inside the head outline, largest component.

    The skull ring is not closed on every slice at 2 mm, so the head outline (not the bone) bounds it.
    """
    head = np.stack([ndimage.binary_fill_holes(hu[:, :, k] > -200) for k in range(hu.shape[2])], axis=2)
    inner = ndimage.binary_erosion(head, iterations=5)
    candidate = ndimage.binary_opening(inner & (hu > 0) & (hu < 80), iterations=2)
    components, count = ndimage.label(candidate)
    if count == 0:
        raise ValueError("No brain parenchyma found in the head CT.")
    largest = 1 + int(np.argmax(ndimage.sum(candidate, components, range(1, count + 1))))
    return ndimage.binary_closing(components == largest, iterations=2)


@cache
def base_volume(name: str) -> BaseVolume:
    """A base volume at 2 mm with its brain mask and (MNI-space bases only) AAL labels."""
    volume = load_sample(name)
    data, affine = _resampled(volume, CASE_SPACING_MM)
    labels = sample_labels(name)
    aal, aal_names = None, {}
    if name == "ct-head":
        brain = _ct_brain(data)
    else:
        mask_label = {"mr-t1-mni152": "brain_mask", "mr-t1-colin27": "brain", "mr-t1-itk": "skull_strip"}[name]
        brain = _on_grid(nib.load(labels[mask_label]), data.shape, affine) > 0
        if name in ("mr-t1-mni152", "mr-t1-colin27"):  # both in MNI space: AAL applies directly
            aal, aal_names = _aal_on(data.shape, affine)
    centre_x = float(volume_world_x(affine, np.argwhere(brain)).mean())
    midline = 0.0 if aal is not None else centre_x
    resampled = Volume(data, affine, volume.metadata, name=name)
    return BaseVolume(name, resampled, brain, midline, aal, aal_names)


def _aal_on(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray | None, dict[int, str]]:
    """AAL (from mricron's Colin27) on a 2 mm MNI-space grid; without mricron-data, no region facts."""
    try:
        colin = load_template("colin27")
    except TemplateUnavailableError:
        return None, {}
    return _on_grid(nib.Nifti1Image(colin.labels, colin.volume.affine), shape, affine), colin.label_names


def volume_world_x(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[0, :3] + affine[0, 3]


def _hemisphere(base: BaseVolume, side: Side) -> np.ndarray:
    """RAS+: world x grows towards the patient's right."""
    x = volume_world_x(base.volume.affine, np.indices(base.brain.shape).reshape(3, -1).T).reshape(base.brain.shape)
    margin = 6.0  # keep lesions clear of the midline so that the side is unambiguous
    return base.brain & ((x > base.midline_x_mm + margin) if side == "right" else (x < base.midline_x_mm - margin))


def _lesion(base: BaseVolume, rng: np.random.Generator, min_mm: float, max_mm: float) -> tuple[np.ndarray, LesionFacts]:
    side: Side = "left" if rng.random() < 0.5 else "right"
    diameter = float(np.round(rng.uniform(min_mm, max_mm), 1))
    ct = base.volume.modality is Modality.CT
    spec = LesionSpec(diameter_mm=diameter, shape=str(rng.choice(["sphere", "ellipsoid", "irregular"])),
                      polarity="hyper" if ct or rng.random() < 0.5 else "hypo",
                      contrast=float(rng.uniform(0.5, 0.8) if ct else rng.uniform(0.3, 0.6)))
    hemisphere = _hemisphere(base, side)
    while True:  # a small hemisphere (the ITK T1's) may not fit the largest diameters: shrink until it does
        try:
            inserted = insert_lesion(base.volume.data, hemisphere, base.volume.spacing, spec, rng)
            break
        except ValueError:
            if spec.diameter_mm * 0.9 < min_mm:
                raise
            spec = replace(spec, diameter_mm=round(spec.diameter_mm * 0.9, 1))
    diameter = spec.diameter_mm
    centre = np.asarray(inserted.center_voxel)
    region = aal_region_near(base, centre, diameter)
    facts = LesionFacts(kind="hemorrhage" if ct else "mass", diameter_mm=diameter, side=side, aal_region=region,
                        lobe=lobe_of(region) if base.aal is not None else None,
                        center_mm=tuple(float(v) for v in base.volume.voxel_to_world(centre)),
                        contrast=round(spec.contrast * (1 if spec.polarity == "hyper" else -1), 3))
    return inserted.image, facts


def aal_region_near(base: BaseVolume, centre_voxel: np.ndarray, diameter_mm: float) -> str | None:
    """The commonest AAL label within the lesion's sphere: AAL labels grey matter only, and centres often lie in white matter."""
    if base.aal is None:
        return None
    grid = np.indices(base.aal.shape).reshape(3, -1).T
    inside = np.linalg.norm((grid - centre_voxel) * np.asarray(base.volume.spacing), axis=1) <= diameter_mm / 2
    labels = base.aal.reshape(-1)[inside]
    labels = labels[labels > 0]
    return base.aal_names.get(int(np.bincount(labels).argmax())) if labels.size else None


def _superior_crop(data: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the superior part of the head only (axis 2 grows superior), as in a limited-coverage scan."""
    start = int(round(data.shape[2] * (1 - fraction)))
    return data[:, :, start:]


def case_questions(modality: str, whole_head: bool, lesion: LesionFacts | None) -> list[QuestionAnswer]:
    """Caption, closed and open questions with reference answers derived only from the case facts."""
    name = "head CT" if modality == "CT" else "brain MR (T1-weighted)"
    coverage = "whole head" if whole_head else "upper part of the head only"
    if lesion is None:
        finding = "No focal lesion."
    else:
        what = "hyperdense, blood-like lesion" if lesion.kind == "hemorrhage" else "focal lesion"
        where = f"{lesion.side} {lesion.lobe} lobe" if lesion.lobe not in (None, "other") else f"{lesion.side} hemisphere"
        finding = f"A {lesion.diameter_mm:.0f} mm {what} in the {where}."
    qa = [
        QuestionAnswer(kind="caption", topic="caption", question="Describe this scan.",
                       answer=f"Non-contrast {name}, {coverage}. {finding}"),
        QuestionAnswer(kind="closed", topic="modality", question="Is this a CT or an MR scan?", answer=modality,
                       options=["CT", "MR"]),
        QuestionAnswer(kind="closed", topic="presence", question="Is there a focal lesion in this scan?",
                       answer="yes" if lesion else "no", options=["yes", "no"]),
        QuestionAnswer(kind="closed", topic="coverage", question="Does the scan cover the whole head?",
                       answer="yes" if whole_head else "no", options=["yes", "no"]),
    ]
    if lesion is not None:
        qa.append(QuestionAnswer(kind="closed", topic="side", question="Which side is the lesion on?",
                                 answer=lesion.side, options=["left", "right"]))
        if lesion.lobe is not None:
            qa.append(QuestionAnswer(kind="closed", topic="lobe", question="Which lobe is the lesion in?",
                                     answer=lesion.lobe, options=list(LOBES)))
        qa.append(QuestionAnswer(kind="open", topic="size", question="How large is the lesion?",
                                 answer=f"About {lesion.diameter_mm:.0f} mm in diameter."))
    return qa


def generate_cases(folder: Path, cases_per_base: int = 40, seed: int = 0, min_mm: float = 15.0, max_mm: float = 30.0,
                   bases: tuple[str, ...] = TRAIN_BASES + EVAL_BASES,
                   progress: Callable[[float, str], None] | None = None) -> list[Case]:
    """Write case volumes (NIfTI at 2 mm) and `cases.jsonl` into `folder`; returns the cases."""
    if cases_per_base < 1:
        raise ValueError("cases_per_base must be at least 1.")
    rng = np.random.default_rng(seed)
    (folder / "volumes").mkdir(parents=True, exist_ok=True)
    cases = []
    plan = [(base, index) for base in bases for index in range(cases_per_base)]
    for done, (base_name, index) in enumerate(tqdm(plan, desc="in-silico cases", unit="case")):
        base = base_volume(base_name)
        has_lesion = index % 2 == 1
        data, lesion = _lesion(base, rng, min_mm, max_mm) if has_lesion else (base.volume.data, None)
        whole_head = rng.random() >= 0.25
        if not whole_head:
            data = _superior_crop(data, float(rng.uniform(0.45, 0.65)))
            if lesion is not None:  # keep the lesion's centre inside the crop, else call the case lesion-free
                lesion_k = base.volume.world_to_voxel(lesion.center_mm)[2] - (base.volume.shape[2] - data.shape[2])
                lesion = lesion if lesion_k >= 2 else None
        case_id = f"{base_name}-{index:03d}"
        image = Path("volumes") / f"{case_id}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), _cropped_affine(base.volume, data.shape)), folder / image)
        modality = "CT" if base.volume.modality is Modality.CT else "MR"
        case = Case(case_id=case_id, base=base_name, split="eval" if base_name in EVAL_BASES else "train", image=str(image),
                    modality=modality, whole_head=whole_head, lesion=lesion, qa=case_questions(modality, whole_head, lesion))
        cases.append(case)
        if progress:
            progress((done + 1) / len(plan), case_id)
    write_cases(folder / "cases.jsonl", cases)
    return cases


def _cropped_affine(volume: Volume, cropped_shape: tuple[int, ...]) -> np.ndarray:
    affine = volume.affine.copy()
    affine[:3, 3] = volume.voxel_to_world([0, 0, volume.shape[2] - cropped_shape[2]])
    return affine


def add_data_cli(actions: argparse._SubParsersAction) -> None:
    data = actions.add_parser("data", help="generate the controlled in-silico cases (JSONL + NIfTI volumes)")
    data.add_argument("--out", type=Path, default=None, help="dataset folder (default: cache_dir/vlm/data)")
    data.add_argument("--cases-per-base", type=int, default=40)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=_cli_data)


def _cli_data(args: argparse.Namespace) -> int:
    folder = args.out or default_data_dir()
    cases = generate_cases(folder, cases_per_base=args.cases_per_base, seed=args.seed)
    print(f"{len(cases)} cases in {folder / 'cases.jsonl'}")
    return 0
