"""What the user asks to segment: points, boxes, named structures, and follow-ups on a mask.

Prompts arrive in voxel indices or RAS millimetres; `points_prompt` and `box_prompt` turn them
into voxel indices on the volume once, and refuse anything outside the scan. Structure names
(any case, accents, English, Spanish, French or German, a side word anywhere) go through a synonym
table in ``prompts/tools/segment_synonyms.txt``, then the term index's SNOMED anatomy for other
wordings (`resolve_structure`), and are checked against what the modality can show.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

from assistant.volume import Modality, Volume
from prompts import load_prompt

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
        return bool(self.aal_patterns) or self.rule in ("brain_mr", "ventricles_mr")

    @property
    def has_sides(self) -> bool:
        return bool(self.aal_patterns) or self.rule == "ventricles_mr"


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
    "lateral ventricles": (_MR, "ventricles_mr", ()),
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


# Structures users ask for that no installed atlas or rule provides, with the reason.
_UNAVAILABLE: dict[str, str] = {
    "tumor": "there is no tumour model; draw a box or click a point on the lesion instead",
    "tumour": "there is no tumour model; draw a box or click a point on the lesion instead",
    "lesion": "there is no lesion model; draw a box or click a point on the lesion instead",
    "liver": "the installed models cover head scans only (no abdominal atlas)",
    "kidneys": "the installed models cover head scans only (no abdominal atlas)",
    "heart": "the installed models cover head scans only (no thoracic atlas)",
}

_SIDE_WORDS = {
    "left": "L", "l": "L", "lt": "L", "right": "R", "r": "R", "rt": "R",
    "izquierdo": "L", "izquierda": "L", "izquierdos": "L", "izquierdas": "L", "izq": "L",
    "derecho": "R", "derecha": "R", "derechos": "R", "derechas": "R", "der": "R",
    "gauche": "L", "droit": "R", "droite": "R", "links": "L", "linke": "L", "linker": "L", "linken": "L",
    "rechts": "R", "rechte": "R", "rechter": "R", "rechten": "R",
}  # fmt: skip
TERM_INDEX_MIN_SCORE = 0.85  # below this the term index's best anatomical concept is a guess, not a synonym


class StructureError(ValueError):
    """The structure is unknown or cannot be segmented on this kind of scan."""


def _words(text: str) -> list[str]:
    """Lower-case words without accents or punctuation: 'Ventrículos' and 'ventriculos' are one word."""
    plain = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9 ]+", " ", plain.replace("_", " ")).split()


@cache
def synonyms() -> dict[str, str]:
    """Phrase or term-index concept id -> structure, from ``prompts/tools/segment_synonyms.txt``."""
    table = {}
    for line in load_prompt("tools/segment_synonyms.txt").splitlines():
        if line.strip() and not line.startswith("#"):
            phrase, structure = line.split("\t")
            if structure not in _STRUCTURES:
                raise ValueError(f"segment_synonyms.txt maps {phrase!r} to the unknown structure {structure!r}.")
            table[phrase if phrase.startswith("sct:") else " ".join(_words(phrase))] = structure
    return table


def _split_side(text: str) -> tuple[str, Literal["L", "R"] | None]:
    words = _words(text)
    sides = {_SIDE_WORDS[w] for w in words if w in _SIDE_WORDS}
    if len(sides) > 1:
        raise StructureError(f"{text!r} names both sides; ask for the left and the right structure separately.")
    base = " ".join(w for w in words if w not in _SIDE_WORDS)
    return base, (sides.pop() if sides else None)  # type: ignore[return-value]


def _from_term_index(phrase: str) -> str | None:
    """The structure whose SNOMED concept the term index finds for `phrase` (DICOM anatomy), if confident."""
    from assistant.terminology import get_term_index

    hits = get_term_index().search(phrase, k=3, method="lexical", sources=["dicom"])
    table = synonyms()
    for hit in hits:
        if hit.score >= TERM_INDEX_MIN_SCORE and hit.concept.id in table:
            return table[hit.concept.id]
    return None


def _canonical(base: str) -> str:
    """The structure table's name for `base`: itself, a listed synonym, a plural, or via the term index."""
    if base in _STRUCTURES or base in _UNAVAILABLE:
        return base
    table = synonyms()
    if base in table:
        return table[base]
    if base.endswith("s") and base[:-1] in _STRUCTURES:
        return base[:-1]
    return _from_term_index(base) or base


def supported_structures(modality: Modality) -> list[str]:
    return sorted(name for name, (mods, _, _) in _STRUCTURES.items() if modality in mods)


def _supported_hint(modality: Modality) -> str:
    possible = supported_structures(modality)
    if not possible:
        return f"No named structures are available for {modality.value} scans; give a point or a box instead."
    sided = " (add 'left' or 'right' for paired brain structures)" if modality is Modality.MR else ""
    return f"On {modality.value} I can segment: {', '.join(possible)}{sided}."


def structure_named(text: str, longest_words: int = 4) -> str | None:
    """The structure a sentence names ("how large is the left thalamus in mL" -> "left thalamus"), from
    the structure table and its synonyms, longest phrase first; None when it names none."""
    words = _words(text)
    known = set(_STRUCTURES) | set(_UNAVAILABLE) | set(synonyms())
    for n in range(longest_words, 0, -1):
        for start in range(len(words) - n + 1):
            phrase = " ".join(words[start : start + n])
            if phrase in known or (phrase.endswith("s") and phrase[:-1] in _STRUCTURES):
                sides = {_SIDE_WORDS[w] for w in words if w in _SIDE_WORDS}
                side = {"L": "left ", "R": "right "}[sides.pop()] if len(sides) == 1 else ""
                return side + phrase
    return None


def resolve_structure(text: str, modality: Modality) -> Structure:
    """The structure a user's phrase means, checked against what this modality can show."""
    if not text or not text.strip():
        raise StructureError("The structure name is empty; name what to segment, e.g. 'brain' or 'left hippocampus'.")
    base, side = _split_side(text)
    base = _canonical(base)
    if base in _UNAVAILABLE:
        raise StructureError(f"Cannot segment {text!r}: {_UNAVAILABLE[base]}.")
    if base not in _STRUCTURES:
        raise StructureError(f"Unknown structure {text!r}. {_supported_hint(modality)} Or give a point or a box.")
    modalities, rule, patterns = _STRUCTURES[base]
    if modality not in modalities:
        raise StructureError(
            f"{base!r} cannot be segmented on a {modality.value} scan "
            f"(it needs {' or '.join(m.value for m in modalities)}). {_supported_hint(modality)}"
        )
    if base == "brain":
        rule = "brain_ct" if modality is Modality.CT else "brain_mr"
    structure = Structure(name=base, modalities=modalities, rule=rule, aal_patterns=patterns)
    if side and not structure.has_sides:
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
