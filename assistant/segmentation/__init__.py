"""Promptable 3D segmentation: prompts in, a measured `Segmentation` out, exportable as NIfTI or DICOM SEG."""

from assistant.segmentation.engine import Backend, choose_backend, segment
from assistant.segmentation.prompts import (
    BoxPrompt,
    PointPrompt,
    StructurePrompt,
    box_prompt,
    points_prompt,
    resolve_structure,
)
from assistant.segmentation.result import Segmentation, refine_mask

__all__ = [
    "Backend", "BoxPrompt", "PointPrompt", "Segmentation", "StructurePrompt", "box_prompt", "choose_backend",
    "points_prompt", "refine_mask", "resolve_structure", "segment",
]  # fmt: skip
