"""What the user asks to segment: points, boxes, named structures, and follow-ups on a mask.

Prompts arrive in voxel indices or RAS millimetres; `points_prompt` and `box_prompt` turn them
into voxel indices on the volume once, and refuse anything outside the scan. Structure names
go through a small synonym table (`resolve_structure`) that knows which modality can show what.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from assistant.volume import Modality, Volume

Units = Literal["voxel", "mm"]
Refinement = Literal["grow", "shrink", "remove_component", "keep_largest"]


@dataclass(frozen=True)
class PointPrompt:
    """Seed voxels (n, 3) inside the object."""

    voxels: np.ndarray


@dataclass(frozen=True)
class BoxPrompt:
    """An inclusive voxel box; a 2D box on one slice has `low[axis] == high[axis]`."""

    low: np.ndarray
    high: np.ndarray

    @property
    def is_2d(self) -> bool:
        return bool(self.low[2] == self.high[2])


@dataclass(frozen=True)
class Structure:
    """A nameable target and how it can be found."""

    name: str
    modalities: tuple[Modality, ...]
    rule: str | None = None  # CT/MR intensity rule in `backends.classical`
    aal_patterns: tuple[str, ...] = ()  # regexes over AAL label names, for the atlas backend
    side: Literal["L", "R"] | None = None

    @property
    def uses_atlas(self) -> bool:
        return bool(self.aal_patterns) or self.rule == "brain_mr"


@dataclass(frozen=True)
class StructurePrompt:
    structure: Structure


Prompt = PointPrompt | BoxPrompt | StructurePrompt

_CT, _MR = (Modality.CT,), (Modality.MR,)

# canonical name -> (modalities, classical rule, AAL label regexes)
_STRUCTURES: dict[str, tuple[tuple[Modality, ...], str | None, tuple[str, ...]]] = {
    "bone": (_CT, "bone", ()),
    "air": (_CT, "air", ()),
    "soft tissue": (_CT, "soft_tissue", ()),
    "lungs": (_CT, "lungs", ()),
    "head": (_CT + _MR, "head", ()),
    "brain": (_CT + _MR, None, ()),
    "hippocampus": (_MR, None, (r"Hippocampus",)),
    "parahippocampal gyrus": (_MR, None, (r"ParaHippocampal",)),
    "amygdala": (_MR, None, (r"Amygdala",)),
    "thalamus": (_MR, None, (r"Thalamus",)),
    "caudate": (_MR, None, (r"Caudate",)),
    "putamen": (_MR, None, (r"Putamen",)),
    "pallidum": (_MR, None, (r"Pallidum",)),
    "insula": (_MR, None, (r"Insula",)),
    "precentral gyrus": (_MR, None, (r"Precentral",)),
    "postcentral gyrus": (_MR, None, (r"Postcentral",)),
    "cingulate gyrus": (_MR, None, (r"Cingulum_",)),
    "frontal lobe": (_MR, None, (r"Frontal_", r"Rectus", r"Olfactory", r"Supp_Motor_Area", r"Paracentral")),
    "parietal lobe": (_MR, None, (r"Parietal_", r"SupraMarginal", r"Angular", r"Precuneus")),
    "temporal lobe": (_MR, None, (r"Temporal_", r"Heschl", r"Fusiform")),
    "occipital lobe": (_MR, None, (r"Occipital_", r"Calcarine", r"Cuneus", r"Lingual")),
    "cerebellum": (_MR, None, (r"Cerebelum_", r"Vermis_")),
    "basal ganglia": (_MR, None, (r"Caudate", r"Putamen", r"Pallidum")),
}

_SYNONYMS: dict[str, str] = {
    "skull": "bone", "bones": "bone", "cranium": "bone", "calvarium": "bone", "skeleton": "bone",
    "lung": "lungs", "airway": "air", "air spaces": "air", "sinuses": "air",
    "soft tissues": "soft tissue", "body": "head", "whole head": "head", "scalp and skull": "head",
    "whole brain": "brain", "brain parenchyma": "brain", "cerebrum": "brain", "encephalon": "brain",
    "hippocampi": "hippocampus", "hippocampal formation": "hippocampus",
    "amygdalae": "amygdala", "thalami": "thalamus", "caudate nucleus": "caudate",
    "lentiform nucleus": "putamen", "globus pallidus": "pallidum", "insular cortex": "insula",
    "motor cortex": "precentral gyrus", "primary motor cortex": "precentral gyrus",
    "sensory cortex": "postcentral gyrus", "cingulum": "cingulate gyrus", "cingulate": "cingulate gyrus",
    "frontal": "frontal lobe", "parietal": "parietal lobe", "temporal": "temporal lobe",
    "occipital": "occipital lobe", "cerebellar hemisphere": "cerebellum",
}  # fmt: skip

# Structures users ask for that no installed atlas or rule provides, with the reason.
_UNAVAILABLE: dict[str, str] = {
    "ventricles": "none of the installed atlases (AAL, MNI152 masks) labels the ventricles",
    "lateral ventricles": "none of the installed atlases (AAL, MNI152 masks) labels the ventricles",
    "tumor": "there is no tumour model; draw a box or click a point on the lesion instead",
    "tumour": "there is no tumour model; draw a box or click a point on the lesion instead",
    "lesion": "there is no lesion model; draw a box or click a point on the lesion instead",
    "liver": "the installed models cover head scans only (no abdominal atlas)",
    "kidneys": "the installed models cover head scans only (no abdominal atlas)",
    "heart": "the installed models cover head scans only (no thoracic atlas)",
}

_SIDE_WORDS = {"left": "L", "l": "L", "lt": "L", "right": "R", "r": "R", "rt": "R"}


class StructureError(ValueError):
    """The structure is unknown or cannot be segmented on this kind of scan."""


def known_structures() -> list[str]:
    return sorted(_STRUCTURES)


def _split_side(text: str) -> tuple[str, Literal["L", "R"] | None]:
    words = re.sub(r"[^a-z0-9 ]+", " ", text.lower().replace("_", " ")).split()
    sides = {_SIDE_WORDS[w] for w in words if w in _SIDE_WORDS}
    if len(sides) > 1:
        raise StructureError(f"{text!r} names both sides; ask for the left and the right structure separately.")
    base = " ".join(w for w in words if w not in _SIDE_WORDS)
    return base, (sides.pop() if sides else None)  # type: ignore[return-value]


def resolve_structure(text: str, modality: Modality) -> Structure:
    """The structure a user's phrase means, checked against what this modality can show."""
    if not text or not text.strip():
        raise StructureError("The structure name is empty; name what to segment, e.g. 'brain' or 'left hippocampus'.")
    base, side = _split_side(text)
    base = _SYNONYMS.get(base, base)
    if base.endswith("s") and base[:-1] in _STRUCTURES:
        base = base[:-1]
    if base in _UNAVAILABLE:
        raise StructureError(f"Cannot segment {text!r}: {_UNAVAILABLE[base]}.")
    if base not in _STRUCTURES:
        raise StructureError(
            f"Unknown structure {text!r}. Known structures: {', '.join(known_structures())} "
            "(add 'left' or 'right' for paired brain structures), or give a point or a box."
        )
    modalities, rule, patterns = _STRUCTURES[base]
    if modality not in modalities:
        possible = [name for name, (mods, _, _) in _STRUCTURES.items() if modality in mods]
        hint = f"On {modality.value} I can segment: {', '.join(sorted(possible))}." if possible else (
            f"No named structures are available for {modality.value} scans; give a point or a box instead."
        )
        raise StructureError(
            f"{base!r} cannot be segmented on a {modality.value} scan "
            f"(it needs {' or '.join(m.value for m in modalities)}). {hint}"
        )
    if base == "brain":
        rule = "brain_ct" if modality is Modality.CT else "brain_mr"
    if side and not patterns:
        raise StructureError(f"{base!r} has no left/right parts here; ask for {base!r} without a side.")
    name = f"{'left' if side == 'L' else 'right'} {base}" if side else base
    return Structure(name=name, modalities=modalities, rule=rule, aal_patterns=patterns, side=side)


def points_prompt(volume: Volume, points: list[list[float]], units: Units) -> PointPrompt:
    """Seed points as voxel indices; raises ValueError naming the valid range for outside points."""
    if not points:
        raise ValueError("Give at least one point (x, y, z).")
    return PointPrompt(np.array([volume.voxel_of(point, units) for point in points], dtype=int))


def box_prompt(volume: Volume, box: list[float], units: Units, slice_index: float | None = None) -> BoxPrompt:
    """A 3D box (x0, y0, z0, x1, y1, z1) or a 2D axial box (x0, y0, x1, y1) on slice `slice_index` (z)."""
    if len(box) == 4:
        if slice_index is None:
            raise ValueError("A 2D box (x0, y0, x1, y1) needs the axial slice it was drawn on (z).")
        corners = [[box[0], box[1], slice_index], [box[2], box[3], slice_index]]
    elif len(box) == 6:
        corners = [box[:3], box[3:]]
    else:
        raise ValueError("A box needs 4 numbers (x0, y0, x1, y1 on one axial slice) or 6 (x0, y0, z0, x1, y1, z1).")
    a, b = (volume.voxel_of(corner, units) for corner in corners)
    low, high = np.minimum(a, b), np.maximum(a, b)
    if np.count_nonzero(high - low) < 2:
        raise ValueError("The box is flat or a line; it must span at least two voxels in-plane.")
    return BoxPrompt(low, high)
