"""The `Segmentation` every backend returns, its measurements, and follow-up edits of a mask.

Measurements are computed here, once, from the mask and the volume's affine, so that every
backend reports volume, extent and centroid the same way (RAS millimetres, mL).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from assistant.segmentation.prompts import Refinement
from assistant.findings import meaning, not_an_answer
from assistant.volume import Volume

_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-neighbourhood: diagonal touches are one object


class EmptySegmentationError(ValueError):
    """The backend found nothing at the prompt."""


class Segmentation(BaseModel):
    """A binary mask on the volume's grid with its measured figures (RAS mm, mL)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    mask: np.ndarray = Field(exclude=True, repr=False)
    target: str = meaning(description="what was segmented", kind="label", headline=True, asked_as=["which structure"])
    backend: str = meaning(description="segmentation method", kind="label", asked_as=["which method", "how was it segmented"])
    voxel_count: int = meaning(description="number of voxels in the mask", kind="count", asked_as=["how many voxels"])
    volume_ml: float = meaning(description="volume", unit="mL", fmt=".1f", headline=True,
                               asked_as=["volume", "how big", "size", "how large", "how much", "cc", "millilitres"])
    bbox_min_mm: tuple[float, float, float] = meaning(description="bounding box lower corner (RAS)", unit="mm", fmt=".1f")
    bbox_max_mm: tuple[float, float, float] = meaning(description="bounding box upper corner (RAS)", unit="mm", fmt=".1f")
    centroid_mm: tuple[float, float, float] = meaning(description="centroid (RAS)", unit="mm", fmt=".1f",
                                                      asked_as=["where is it", "centre", "location", "position"])
    components: int = meaning(description="number of connected components", kind="count",
                              asked_as=["how many pieces", "how many parts", "islands", "components"])
    largest_component_ml: float = meaning(description="volume of the largest connected component", unit="mL", fmt=".1f",
                                          asked_as=["largest piece", "biggest part"])
    confidence: float | None = meaning(None, description="the method's own confidence (0 to 1)", fmt=".2f",
                                       asked_as=["how sure", "confidence", "reliable"])
    seconds: float = not_an_answer(0.0, description="run time")
    notes: list[str] = not_an_answer([], description="method notes (said in the summary)")

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        return tuple(round(b - a, 1) for a, b in zip(self.bbox_min_mm, self.bbox_max_mm))  # type: ignore[return-value]

    def summary(self) -> str:
        centroid = ", ".join(f"{v:.1f}" for v in self.centroid_mm)
        extent = " x ".join(f"{v:.0f}" for v in self.extent_mm)
        text = (
            f"Segmented {self.target} with the {self.backend} backend: volume {self.volume_ml:.1f} mL "
            f"({self.voxel_count} voxels), extent {extent} mm (R-L x A-P x S-I), centroid ({centroid}) mm RAS, "
            f"{self.components} connected component{'s' if self.components != 1 else ''}"
        )
        if self.components > 1:
            text += f" (largest {self.largest_component_ml:.1f} mL)"
        if self.confidence is not None:
            text += f", confidence {self.confidence:.2f}"
        text += "."
        if self.notes:
            text += " Notes: " + " ".join(self.notes)
        return text


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component labels (1..n) and the voxel count of each component, in label order."""
    labels, count = ndimage.label(mask, structure=_CONNECTIVITY)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels, sizes


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    labels, sizes = label_components(mask)
    if sizes.size == 0:
        return mask.astype(bool)
    return labels == (int(np.argmax(sizes)) + 1)


def measure(
    mask: np.ndarray,
    volume: Volume,
    *,
    target: str,
    backend: str,
    confidence: float | None = None,
    seconds: float = 0.0,
    notes: list[str] | None = None,
) -> Segmentation:
    """Measure `mask` on `volume`; refuses an empty mask with a message the user can act on."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != volume.shape:
        raise ValueError(f"The mask has shape {mask.shape} but the scan has {volume.shape}.")
    voxels = np.argwhere(mask)
    if voxels.size == 0:
        raise EmptySegmentationError(
            f"Nothing was segmented for {target} with the {backend} backend: it may not be in this scan's "
            "field of view; if it is, check that the prompt lies on the structure, or try another point, a box "
            "or a different backend."
        )
    corners = volume.voxel_to_world(np.array([voxels.min(axis=0) - 0.5, voxels.max(axis=0) + 0.5]))
    _, sizes = label_components(mask)
    voxel_ml = volume.voxel_volume_ml
    return Segmentation(
        mask=mask,
        target=target,
        backend=backend,
        voxel_count=int(voxels.shape[0]),
        volume_ml=round(float(voxels.shape[0] * voxel_ml), 2),
        bbox_min_mm=tuple(round(float(v), 1) for v in corners.min(axis=0)),
        bbox_max_mm=tuple(round(float(v), 1) for v in corners.max(axis=0)),
        centroid_mm=tuple(round(float(v), 1) for v in volume.voxel_to_world(voxels.mean(axis=0))),
        components=int(sizes.size),
        largest_component_ml=round(float(sizes.max() * voxel_ml), 2),
        confidence=None if confidence is None else round(float(confidence), 3),
        seconds=round(seconds, 2),
        notes=notes or [],
    )


def refine_mask(
    previous: Segmentation, volume: Volume, refinement: Refinement, *, amount_mm: float = 2.0, component: int = 1
) -> Segmentation:
    """Edit the previous mask: grow/shrink by `amount_mm`, drop the `component`-th largest, or keep the largest."""
    mask = previous.mask
    if refinement in ("grow", "shrink"):
        if not 0 < amount_mm <= 50:
            raise ValueError("Grow or shrink by a distance between 0 and 50 mm.")
        if refinement == "grow":
            edited = ndimage.distance_transform_edt(~mask, sampling=volume.spacing) <= amount_mm
        else:
            edited = ndimage.distance_transform_edt(mask, sampling=volume.spacing) > amount_mm
        action = f"{'grown' if refinement == 'grow' else 'shrunk'} by {amount_mm:g} mm"
    elif refinement == "keep_largest":
        edited, action = keep_largest_component(mask), "largest component kept"
    else:
        labels, sizes = label_components(mask)
        if not 1 <= component <= sizes.size:
            raise ValueError(f"The mask has {sizes.size} component(s); choose a component from 1 (largest) to {sizes.size}.")
        ranked = np.argsort(sizes)[::-1]
        edited = mask & (labels != ranked[component - 1] + 1)
        action = f"component {component} (by size) removed"
    return measure(
        edited, volume, target=f"{previous.target} ({action})", backend=previous.backend,
        confidence=previous.confidence, notes=previous.notes,
    )
