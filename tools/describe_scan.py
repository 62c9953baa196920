"""describe_scan: the facts about the loaded scan (what it is, its geometry, its intensities)."""

from __future__ import annotations

import argparse
import json
import re
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, Field

from assistant.findings import Claim, Finding, Quantity, meaning, not_an_answer
from assistant.grounding import reads_like_instruction
from assistant.volume import Volume
from tools.base import ScanTool, ToolResult


class DescribeScanArgs(BaseModel):
    """describe_scan takes no arguments: it always describes the scan on screen."""


class IntensityStats(BaseModel):
    unit: str = not_an_answer(description="intensity unit: HU for CT, arbitrary units (a.u.) for MR")
    minimum: float = meaning(description="lowest intensity", unit="@unit", fmt=".1f", asked_as=["minimum value", "darkest"])
    maximum: float = meaning(description="highest intensity", unit="@unit", fmt=".1f", asked_as=["maximum value", "brightest"])
    mean: float = meaning(description="mean intensity", unit="@unit", fmt=".1f", headline=True,
                          asked_as=["average HU", "average density", "mean value", "average signal", "HU", "density",
                                    "intensity", "signal", "attenuation"])
    std: float = meaning(description="standard deviation of the intensity", unit="@unit", fmt=".1f",
                         asked_as=["spread", "SD", "variation", "noise"])
    p1: float = meaning(description="1st percentile of the intensity", unit="@unit", fmt=".1f")
    p50: float = meaning(description="median intensity", unit="@unit", fmt=".1f", asked_as=["median value", "median HU"])
    p99: float = meaning(description="99th percentile of the intensity", unit="@unit", fmt=".1f")


class ScanDescription(ToolResult):
    name: str = not_an_answer(description="the scan's display name")
    modality: str = meaning(description="modality", kind="label", headline=True,
                            asked_as=["what kind of scan", "CT or MRI", "type of scan", "imaging modality"])
    source_format: str = meaning(description="file format", kind="label", asked_as=["file type", "DICOM or NIfTI"])
    dimensions: tuple[int, int, int] = meaning(
        description="matrix (voxels along x, y, z)", kind="count", headline=True,
        parts=["matrix columns (voxels along x)", "matrix rows (voxels along y)", "voxels along z"],
        asked_as=["matrix", "matrix size", "dimensions", "image size in voxels", "how many voxels per axis",
                  "resolution in pixels", "acquisition matrix"])
    orientation: str = meaning(description="orientation (anatomical direction each axis grows towards)", kind="label",
                               asked_as=["orientation", "axis directions", "RAS or LPS"])
    spacing_mm: tuple[float, float, float] = meaning(
        description="voxel spacing x, y, z", unit="mm", fmt=".2f", headline=True,
        parts=["in-plane pixel spacing along x (between columns)|in-plane resolution|in-plane spacing|pixel spacing|pixel size",
               "in-plane pixel spacing along y (between rows)",
               "spacing between slices (z, through-plane)|slice spacing|slice interval|gap between slices|"
               "distance between slices|slice increment|spacing in z"],
        asked_as=["voxel size", "voxel spacing", "voxel dimensions in mm", "resolution in mm"])
    slice_thickness_mm: float = meaning(description="slice thickness (from the header when given, else the spacing along z)",
                                        unit="mm", fmt=".2f", headline=True,
                                        asked_as=["slice thickness", "how thick are the slices", "thickness"])
    number_of_slices: int = meaning(description="number of axial slices", kind="count",
                                    asked_as=["how many slices", "slice count", "number of images"])
    field_of_view_mm: tuple[float, float, float] = meaning(
        description="field of view x, y, z", unit="mm", fmt=".1f",
        parts=["field of view along x (left-right)|how wide|width|side to side|left to right",
               "field of view along y (anterior-posterior)|front to back",
               "field of view along z (inferior-superior, scan length)|scan length|coverage along z|head-foot coverage|"
               "craniocaudal coverage|how long is the scan|top to bottom"],
        asked_as=["field of view", "FOV", "how big is the imaged area", "coverage", "scan length in mm"])
    voxel_count: int = meaning(description="total number of voxels", kind="count", asked_as=["how many voxels in total"])
    intensity: IntensityStats = Field(description="intensities over the whole scan")
    body_part: str | None = meaning(None, description="body part in the header", kind="text",
                                    asked_as=["body part", "which region was scanned"])
    series_description: str | None = meaning(None, description="series description in the header", kind="text",
                                             asked_as=["series name", "series description", "sequence"])
    contrast_agent: str | None = meaning(None, description="contrast agent in the header", kind="text",
                                         asked_as=["contrast", "was contrast given", "contrast agent"])
    notes: list[str] = not_an_answer([], description="loader notes (said in the summary)")

    def claims(self, tool: str) -> list[Claim]:
        """Header texts that read like instructions are withheld from answers too."""
        return [c for c in super().claims(tool) if not (c.kind == "text" and reads_like_instruction(str(c.value)))]

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
    action: ClassVar[re.Pattern[str] | None] = re.compile(
        r"\b(describe|slice thickness|field of view|voxel (size|spacing)|spacing|modality|how many slices)\b", re.IGNORECASE)

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
