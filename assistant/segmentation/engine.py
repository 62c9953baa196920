"""`segment`: one entry point that picks a backend for the prompt and the modality.

Backends: "classical" (region growing, box thresholding, CT intensity rules), "medsam"
(LiteMedSAM slice by slice), "atlas" (Colin27 + AAL through registration, brain MRI) and
"checkpoint" (a bigger local SAM/MedSAM/LiteMedSAM file). "auto" chooses by prompt type:
boxes go to LiteMedSAM, points to region growing, structures to their rule or the atlas.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

from assistant.imaging.progress import ProgressCallback, report
from assistant.segmentation import atlas, classical
from assistant.segmentation.prompts import BoxPrompt, PointPrompt, Prompt, StructurePrompt
from assistant.segmentation.result import Segmentation, measure
from assistant.segmentation.slice_models import propagate, slice_segmenter
from assistant.volume import Volume

Backend = Literal["auto", "classical", "medsam", "atlas", "checkpoint"]
MAX_SEGMENTATION_VOXELS = 384 * 384 * 400  # beyond this, CPU region growing and registration take minutes
MIN_SLICES = 3


def check_volume(volume: Volume) -> None:
    """Refuse scans segmentation cannot handle, with what to do instead."""
    if min(volume.shape) < MIN_SLICES:
        raise ValueError(
            f"This scan is a 2D image or a very thin slab (shape {volume.shape}); 3D segmentation needs a volume "
            f"with at least {MIN_SLICES} slices in each direction."
        )
    voxels = int(np.prod(volume.shape))
    if voxels > MAX_SEGMENTATION_VOXELS:
        raise ValueError(
            f"This scan has {voxels / 1e6:.0f} million voxels, more than segmentation handles on this machine "
            f"({MAX_SEGMENTATION_VOXELS / 1e6:.0f} million); crop it to the region of interest or resample it."
        )


def choose_backend(prompt: Prompt, requested: Backend = "auto") -> Backend:
    """The backend that will run, or a ValueError when the requested one cannot take this prompt."""
    if isinstance(prompt, StructurePrompt):
        natural: Backend = "atlas" if prompt.structure.uses_atlas else "classical"
        if requested not in ("auto", natural):
            raise ValueError(
                f"{prompt.structure.name!r} is segmented by the {natural} backend; "
                f"the {requested} backend needs a point or a box prompt."
            )
        return natural
    if requested == "atlas":
        raise ValueError("The atlas backend segments named structures; give a structure name, not a point or box.")
    if isinstance(prompt, PointPrompt):
        if requested in ("medsam", "checkpoint"):
            raise ValueError(f"The {requested} backend needs a box around the object; points use region growing.")
        return "classical"
    return "medsam" if requested == "auto" else requested


def _describe(prompt: Prompt) -> str:
    if isinstance(prompt, StructurePrompt):
        return prompt.structure.name
    if isinstance(prompt, PointPrompt):
        return "region at " + ", ".join(f"voxel {p.tolist()}" for p in prompt.voxels)
    return f"object in box {prompt.low.tolist()}-{prompt.high.tolist()}"


def segment(volume: Volume, prompt: Prompt, *, backend: Backend = "auto", progress: ProgressCallback | None = None) -> Segmentation:
    """Segment what `prompt` points at; raises ValueError subclasses with a message for the user."""
    check_volume(volume)
    chosen = choose_backend(prompt, backend)
    started = time.perf_counter()
    confidence: float | None = None
    notes: list[str] = []
    if chosen == "atlas":
        mask, notes = atlas.segment_structure(volume, prompt.structure, progress)  # type: ignore[union-attr]
    elif chosen == "classical":
        if isinstance(prompt, StructurePrompt):
            mask = classical.segment_structure(volume, prompt.structure, progress)
        elif isinstance(prompt, PointPrompt):
            mask = classical.grow_from_points(volume, prompt, progress)
        else:
            mask = classical.threshold_box(volume, prompt, progress)
    else:
        assert isinstance(prompt, BoxPrompt)
        mask, confidence = propagate(volume, prompt, slice_segmenter(chosen), progress)
        notes.append("2D model applied slice by slice in axial planes, each box taken from the previous slice's mask.")
    report(progress, 1.0, "measuring the mask")
    return measure(
        mask, volume, target=_describe(prompt), backend=chosen, confidence=confidence,
        seconds=time.perf_counter() - started, notes=notes,
    )
