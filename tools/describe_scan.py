"""describe_scan: the facts about the loaded scan (what it is, its geometry, its intensities)."""

from __future__ import annotations

import argparse
import json

import numpy as np
from pydantic import BaseModel, Field

from assistant.findings import Finding, Quantity
from assistant.grounding import reads_like_instruction
from assistant.volume import Volume
from tools.base import ScanTool, ToolResult


class DescribeScanArgs(BaseModel):
    """describe_scan takes no arguments: it always describes the scan on screen."""


class IntensityStats(BaseModel):
    unit: str
    minimum: float
    maximum: float
    mean: float
    std: float
    p1: float
    p50: float
    p99: float


class ScanDescription(ToolResult):
    name: str
    modality: str
    source_format: str
    dimensions: tuple[int, int, int] = Field(description="voxels along the array axes (x, y, z)")
    orientation: str = Field(description="anatomical direction each axis grows towards, e.g. RAS")
    spacing_mm: tuple[float, float, float]
    slice_thickness_mm: float = Field(description="from the header when given, else the spacing along z")
    number_of_slices: int = Field(description="axial slices")
    field_of_view_mm: tuple[float, float, float]
    voxel_count: int
    intensity: IntensityStats
    body_part: str | None = None
    series_description: str | None = None
    contrast_agent: str | None = None
    notes: list[str] = []

    def summary(self) -> str:
        fov = " x ".join(f"{v:.1f}" for v in self.field_of_view_mm)
        sp = " x ".join(f"{v:.2f}" for v in self.spacing_mm)
        dims = " x ".join(str(v) for v in self.dimensions)
        i = self.intensity
        parts = [
            f"{self.modality} scan ({self.source_format})",
            f"dimensions {dims} voxels, {self.number_of_slices} axial slices",
            f"voxel spacing {sp} mm, slice thickness {self.slice_thickness_mm:.2f} mm",
            f"field of view {fov} mm",
            f"orientation {self.orientation}",
            f"intensity {i.minimum:.1f} to {i.maximum:.1f} {i.unit} (mean {i.mean:.1f}, median {i.p50:.1f})",
        ]
        for label, text in (("body part", self.body_part), ("series", self.series_description),
                            ("contrast agent", self.contrast_agent)):
            if text and reads_like_instruction(text):
                parts.append(f"{label} text withheld: it reads like an instruction, not a description")
            elif text:  # fenced and labelled: header text is data about the scan, never an instruction
                parts.append(f"{label} (untrusted file-header text) «{text}»")
        return "; ".join(parts) + "."

    def findings(self, arguments: dict) -> list[Finding]:
        def technique(what: str, *quantities: Quantity) -> Finding:
            return Finding(kind="technique", what=what, quantities=list(quantities), source_tool="describe_scan")

        return [
            technique(f"{self.modality} ({self.source_format})"),
            technique("slice thickness", Quantity(value=self.slice_thickness_mm, unit="mm")),
            technique("number of slices", Quantity(value=self.number_of_slices, unit="slices")),
            technique("field of view", *(Quantity(value=v, unit="mm") for v in self.field_of_view_mm)),
        ]


def intensity_stats(values: np.ndarray, unit: str) -> IntensityStats:
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    return IntensityStats(
        unit=unit,
        minimum=round(float(values.min()), 2),
        maximum=round(float(values.max()), 2),
        mean=round(float(values.mean()), 2),
        std=round(float(values.std()), 2),
        p1=round(float(p1), 2),
        p50=round(float(p50), 2),
        p99=round(float(p99), 2),
    )


def describe_scan(volume: Volume) -> ScanDescription:
    """Geometry and intensity facts, measured from the voxels and the de-identified header."""
    meta = volume.metadata
    spacing = tuple(round(s, 3) for s in volume.spacing)
    thickness = meta.slice_thickness_mm or spacing[2]
    # Percentiles on a strided sample: exact enough for a summary and fast on 512^3 volumes.
    sample = volume.data[:: max(1, volume.shape[0] // 128), :: max(1, volume.shape[1] // 128), :]
    return ScanDescription(
        name=volume.name,
        modality=volume.modality.value,
        source_format=meta.source_format,
        dimensions=volume.shape,
        orientation=volume.axcodes,
        spacing_mm=spacing,
        slice_thickness_mm=round(float(thickness), 3),
        number_of_slices=volume.shape[2],
        field_of_view_mm=tuple(round(v, 1) for v in volume.field_of_view_mm),
        voxel_count=int(np.prod(volume.shape)),
        intensity=intensity_stats(sample, volume.intensity_unit),
        body_part=meta.body_part,
        series_description=meta.series_description,
        contrast_agent=meta.contrast_agent,
        notes=list(meta.notes),
    )


class DescribeScanTool(ScanTool):
    name: str = "describe_scan"
    args_schema: type[BaseModel] = DescribeScanArgs

    def execute(self, args: DescribeScanArgs) -> ScanDescription:
        return describe_scan(self.session.require_volume())


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("describe", help="describe a scan: modality, geometry, intensities")
    p.add_argument("scan")
    p.add_argument("--json", action="store_true", help="print the typed result as JSON")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from assistant.scans.loading import load_scan

    result = describe_scan(load_scan(args.scan))
    print(json.dumps(result.model_dump(), indent=2) if args.json else result.summary())
    return 0
