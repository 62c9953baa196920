"""Controlled in-silico cases for training and evaluating the 3D VLM, from the real bundled volumes.

No labelled 3D VQA data installs offline, so every case is a real base volume (five T1 heads and a
head CT) with known, generated variations: modality facts, field of view (whole head or a superior
crop) and, in half of the cases, one to three synthetic lesions (bright, dark or ring-shaped, some
pushing the tissue aside) of known diameter, hemisphere and AAL region, inserted with
`assistant.anomaly.lesions`. Each case carries a caption, closed questions (modality, presence,
count, side, lobe, size band, coverage) with their options and open questions with reference
answers, in an M3D-Data-like JSONL (`{"image": ..., "conversations": [...]}` plus the typed facts).

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
from assistant.imaging.registration import Template, TemplateUnavailableError, load_template, register_to_template
from assistant.scans.samples import load_sample, sample_labels
from assistant.vlm.cases import Case, LesionFacts, QuestionAnswer, Side, default_data_dir, training_wordings, write_cases
from assistant.volume import Modality, Volume

CASE_SPACING_MM = 2.0  # cases are stored at 2 mm: the encoder sees 64 voxels per axis anyway
MR_HEADS = ("mr-t1-mni152", "mr-t1-colin27", "mr-t1-itk", "mr-t1-pycortex", "mr-t1-robex")  # every real T1 head that installs offline
TRAIN_BASES = ("mr-t1-mni152", "mr-t1-itk", "mr-t1-pycortex", "mr-t1-robex", "ct-head")
EVAL_BASES = ("mr-t1-colin27",)
LOBES = ("frontal", "temporal", "parietal", "occipital", "other")
SIZE_BANDS = ("small", "medium", "large")  # under 15 mm, 15 to 25 mm, over 25 mm
LESION_COUNTS = ("one", "two", "three")
SIDES = ("left", "right", "both")
LESION_DIAMETER_MM = (10.0, 35.0)
_BRAIN_MASK_LABEL = {"mr-t1-mni152": "brain_mask", "mr-t1-colin27": "brain", "mr-t1-itk": "skull_strip", "mr-t1-robex": "brain_mask"}


def size_band(diameter_mm: float) -> str:
    return SIZE_BANDS[0] if diameter_mm < 15 else SIZE_BANDS[1] if diameter_mm <= 25 else SIZE_BANDS[2]


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
    """A base volume at 2 mm with its brain mask and, for T1 heads, AAL labels.

    MNI-space heads take AAL as it is; the others (ITK, pycortex, ROBEX) get it through a deformable
    registration to Colin27, and so does the pycortex head's brain mask (it ships none).
    """
    volume = load_sample(name)
    data, affine = _resampled(volume, CASE_SPACING_MM)
    resampled = Volume(data, affine, volume.metadata, name=name)
    aal, aal_names, midline = None, {}, None
    if name == "ct-head":
        brain = _ct_brain(data)
    else:
        colin = _colin27()
        in_mni = name in ("mr-t1-mni152", "mr-t1-colin27")
        registration = None if in_mni or colin is None else register_to_template(resampled, colin, kind="affine+bspline")
        if name in _BRAIN_MASK_LABEL:
            brain = _on_grid(nib.load(sample_labels(name)[_BRAIN_MASK_LABEL[name]]), data.shape, affine) > 0
        elif registration is not None:
            brain = registration.warp_labels(colin.brain_mask.astype(np.uint8)) > 0
        else:
            raise TemplateUnavailableError(f"{name} has no brain mask of its own and Colin27 is not installed (mricron-data).")
        if in_mni:
            midline = 0.0
            if colin is not None:
                aal = _on_grid(nib.Nifti1Image(colin.labels, colin.volume.affine), data.shape, affine)
        elif registration is not None:
            aal = registration.warp_labels(colin.labels)
        aal_names = colin.label_names if aal is not None else {}
    if midline is None:
        midline = float(volume_world_x(affine, np.argwhere(brain)).mean())
    return BaseVolume(name, resampled, brain, midline, aal, aal_names)


def _colin27() -> Template | None:
    """Colin27 with AAL (mricron-data); without it, no region facts."""
    try:
        return load_template("colin27")
    except TemplateUnavailableError:
        return None


def volume_world_x(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[0, :3] + affine[0, 3]


def _hemisphere(base: BaseVolume, side: Side) -> np.ndarray:
    """RAS+: world x grows towards the patient's right."""
    x = volume_world_x(base.volume.affine, np.indices(base.brain.shape).reshape(3, -1).T).reshape(base.brain.shape)
    margin = 6.0  # keep lesions clear of the midline so that the side is unambiguous
    return base.brain & ((x > base.midline_x_mm + margin) if side == "right" else (x < base.midline_x_mm - margin))


def _lesion_spec(ct: bool, diameter_mm: float, rng: np.random.Generator) -> tuple[LesionSpec, str]:
    """A lesion's look and the kind it stands for: bright, dark or ring-shaped, with mass effect in a third of them."""
    appearance = str(rng.choice(["bright", "dark", "ring"]))
    kind = {("bright", True): "hemorrhage", ("dark", True): "infarct", ("bright", False): "mass",
            ("dark", False): "cyst"}.get((appearance, ct), "ring-enhancing")
    spec = LesionSpec(diameter_mm=diameter_mm, shape=str(rng.choice(["sphere", "ellipsoid", "irregular"])),
                      polarity="hypo" if appearance == "dark" else "hyper", pattern="ring" if appearance == "ring" else "solid",
                      contrast=float(rng.uniform(0.5, 0.8) if ct else rng.uniform(0.3, 0.6)),
                      mass_effect_mm=float(rng.choice([0.0, 0.0, 3.0])))
    return spec, kind


def _lesions(base: BaseVolume, rng: np.random.Generator, min_mm: float, max_mm: float) -> tuple[np.ndarray, list[LesionFacts]]:
    """One to three lesions (half the lesioned cases hold one), each in a hemisphere drawn on its own, apart from each other."""
    count = int(rng.choice([1, 1, 2, 3]))
    image = base.volume.data
    taken = np.zeros(base.brain.shape, dtype=bool)
    facts = []
    for _ in range(count):
        side: Side = "left" if rng.random() < 0.5 else "right"
        spec, kind = _lesion_spec(base.volume.modality is Modality.CT, float(np.round(rng.uniform(min_mm, max_mm), 1)), rng)
        region = _hemisphere(base, side) & ~taken
        while True:  # a small hemisphere (the ITK T1's) may not fit the largest diameters: shrink until it does
            try:
                inserted = insert_lesion(image, region, base.volume.spacing, spec, rng)
                break
            except ValueError:
                if spec.diameter_mm * 0.9 < min_mm:
                    raise
                spec = replace(spec, diameter_mm=round(spec.diameter_mm * 0.9, 1))
        image = inserted.image
        taken |= ndimage.binary_dilation(inserted.mask, iterations=int(np.ceil(spec.diameter_mm / CASE_SPACING_MM)))
        centre = np.asarray(inserted.center_voxel)
        region_name = aal_region_near(base, centre, spec.diameter_mm)
        facts.append(LesionFacts(kind=kind, appearance="ring" if spec.pattern == "ring" else "dark" if spec.polarity == "hypo" else "bright",
                                 diameter_mm=spec.diameter_mm, side=side, aal_region=region_name,
                                 lobe=lobe_of(region_name) if base.aal is not None else None,
                                 center_mm=tuple(float(v) for v in base.volume.voxel_to_world(centre)),
                                 contrast=round(spec.contrast * (1 if spec.polarity == "hyper" else -1), 3),
                                 mass_effect_mm=spec.mass_effect_mm))
    return image, sorted(facts, key=lambda lesion: -lesion.diameter_mm)


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


_WHAT = {"mass": "bright focal lesion", "cyst": "dark focal lesion", "ring-enhancing": "ring-shaped lesion",
         "hemorrhage": "hyperdense, blood-like lesion", "infarct": "hypodense lesion"}


def lesions_side(lesions: list[LesionFacts]) -> str:
    sides = {lesion.side for lesion in lesions}
    return sides.pop() if len(sides) == 1 else "both"


def case_questions(modality: str, whole_head: bool, lesions: list[LesionFacts]) -> list[QuestionAnswer]:
    """Caption, closed and open questions with reference answers derived only from the case facts (largest lesion first)."""
    name = "head CT" if modality == "CT" else "brain MR (T1-weighted)"
    coverage = "whole head" if whole_head else "upper part of the head only"
    largest = lesions[0] if lesions else None
    if largest is None:
        finding = "No focal lesion."
    else:
        where = f"{largest.side} {largest.lobe} lobe" if largest.lobe not in (None, "other") else f"{largest.side} hemisphere"
        finding = f"A {largest.diameter_mm:.0f} mm {_WHAT[largest.kind]} in the {where}."
        if len(lesions) > 1:
            finding += f" {LESION_COUNTS[len(lesions) - 1].capitalize()} lesions in all, {lesions_side(lesions)} side{'s' if lesions_side(lesions) == 'both' else ''}."

    def ask(kind: str, topic: str, answer: str, options: list[str] = []) -> QuestionAnswer:
        return QuestionAnswer(kind=kind, topic=topic, question=training_wordings(topic)[0], answer=answer, options=options)

    qa = [
        ask("caption", "caption", f"Non-contrast {name}, {coverage}. {finding}"),
        ask("closed", "modality", modality, ["CT", "MR"]),
        ask("closed", "presence", "yes" if lesions else "no", ["yes", "no"]),
        ask("closed", "coverage", "yes" if whole_head else "no", ["yes", "no"]),
    ]
    if largest is not None:
        qa += [ask("closed", "count", LESION_COUNTS[len(lesions) - 1], list(LESION_COUNTS)),
               ask("closed", "side", lesions_side(lesions), list(SIDES)),
               ask("closed", "size_band", size_band(largest.diameter_mm), list(SIZE_BANDS))]
        if largest.lobe is not None:
            qa.append(ask("closed", "lobe", largest.lobe, list(LOBES)))
        qa.append(ask("open", "size", f"About {largest.diameter_mm:.0f} mm in diameter."))
    return qa


def generate_cases(folder: Path, cases_per_base: int = 40, seed: int = 0, min_mm: float = LESION_DIAMETER_MM[0],
                   max_mm: float = LESION_DIAMETER_MM[1], bases: tuple[str, ...] = TRAIN_BASES + EVAL_BASES,
                   eval_bases: tuple[str, ...] = EVAL_BASES, progress: Callable[[float, str], None] | None = None) -> list[Case]:
    """Write case volumes (NIfTI at 2 mm) and `cases.jsonl` into `folder`; returns the cases.

    `eval_bases` are marked for evaluation only; leave-one-subject-out runs pass none and hold a head out per fold.
    """
    if cases_per_base < 1:
        raise ValueError("cases_per_base must be at least 1.")
    rng = np.random.default_rng(seed)
    (folder / "volumes").mkdir(parents=True, exist_ok=True)
    cases = []
    plan = [(base, index) for base in bases for index in range(cases_per_base)]
    for done, (base_name, index) in enumerate(tqdm(plan, desc="in-silico cases", unit="case")):
        base = base_volume(base_name)
        has_lesion = index % 2 == 1
        data, lesions = _lesions(base, rng, min_mm, max_mm) if has_lesion else (base.volume.data, [])
        whole_head = rng.random() >= 0.25
        if not whole_head:
            data = _superior_crop(data, float(rng.uniform(0.45, 0.65)))
            removed = base.volume.shape[2] - data.shape[2]  # keep the lesions whose centre lies inside the crop
            lesions = [lesion for lesion in lesions if base.volume.world_to_voxel(lesion.center_mm)[2] - removed >= 2]
        case_id = f"{base_name}-{index:03d}"
        image = Path("volumes") / f"{case_id}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), _cropped_affine(base.volume, data.shape)), folder / image)
        modality = "CT" if base.volume.modality is Modality.CT else "MR"
        case = Case(case_id=case_id, base=base_name, split="eval" if base_name in eval_bases else "train", image=str(image),
                    modality=modality, whole_head=whole_head, lesions=lesions, qa=case_questions(modality, whole_head, lesions))
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
