"""probe_intensity: the intensity (HU for CT) at a point, or statistics in a sphere or box."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field

from assistant.findings import Finding, Quantity, meaning, not_an_answer
from assistant.grounding import coordinate_triples
from assistant.volume import Volume
from tools.base import ScanTool, ToolError, ToolResult
from tools.describe_scan import IntensityStats, intensity_stats

Units = Literal["voxel", "mm"]


class ProbeIntensityArgs(BaseModel):
    point: list[float] | None = Field(
        None, min_length=3, max_length=3, description="x, y, z of the point to probe. Leave out for the centre of the volume."
    )
    units: Units = Field("voxel", description="'voxel' for array indices, 'mm' for world (RAS) coordinates.")
    radius_mm: float = Field(0.0, ge=0, le=100, description="Summarise a sphere of this radius; 0 reads one voxel.")
    box: list[float] | None = Field(
        None, min_length=6, max_length=6, description="Instead of a point: a box x0, y0, z0, x1, y1, z1 (same units) to summarise."
    )

class IntensityProbe(ToolResult):
    region: str = not_an_answer(description="'voxel', 'sphere' or 'box'")
    voxel: tuple[int, int, int] | None = meaning(None, description="probed voxel (x, y, z indices)", kind="count",
                                                 asked_as=["which voxel", "where did you measure"])
    position_mm: tuple[float, float, float] | None = meaning(None, description="probed position (RAS)", unit="mm",
                                                             fmt=".1f", asked_as=["coordinates in mm", "world position"])
    value: float | None = meaning(None, description="intensity at the voxel", unit="@unit", fmt=".1f", headline=True,
                                  asked_as=["HU", "density", "intensity", "signal", "attenuation", "value at the point"])
    unit: str = not_an_answer(description="intensity unit")
    voxels: int = meaning(1, description="number of voxels summarised", kind="count", asked_as=["how many voxels"])
    stats: IntensityStats | None = Field(None, description="in the probed region")

    def summary(self) -> str:
        where = f"voxel {list(self.voxel)}" if self.voxel else "box"  # "Intensity in the box", not "the the box"
        if self.position_mm:
            where += " (" + ", ".join(f"{v:.1f}" for v in self.position_mm) + " mm)"
        if self.region == "voxel":
            return f"Intensity at {where}: {self.value:.1f} {self.unit}."
        s = self.stats
        shape = "sphere around " + where if self.region == "sphere" else where
        return (
            f"Intensity in the {shape} ({self.voxels} voxels): mean {s.mean:.1f} {self.unit}, "
            f"std {s.std:.1f}, min {s.minimum:.1f}, max {s.maximum:.1f}, median {s.p50:.1f}."
        )

    def findings(self, arguments: dict) -> list[Finding]:
        value = self.value if self.region == "voxel" else self.stats.mean
        where = f"voxel {list(self.voxel)}" if self.voxel else "box " + str(arguments.get("box"))
        what = "intensity" if self.region == "voxel" else f"mean intensity ({self.region})"
        return [
            Finding(kind="measurement", what=what, where=where, quantities=[Quantity(value=value, unit=self.unit)],
                    source_tool="probe_intensity", parameters=arguments)
        ]


def probe_intensity(volume: Volume, args: ProbeIntensityArgs) -> IntensityProbe:
    unit = volume.intensity_unit
    try:
        if args.box is not None:
            lo = volume.voxel_of(args.box[:3], args.units)
            hi = volume.voxel_of(args.box[3:], args.units)
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
            values = volume.data[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
            return IntensityProbe(region="box", unit=unit, voxels=values.size, stats=intensity_stats(values, unit))
        ijk = volume.voxel_of(args.point, args.units) if args.point is not None else np.array(volume.center_voxel)
    except ValueError as exc:
        raise ToolError(str(exc)) from exc
    position = tuple(round(float(v), 1) for v in volume.voxel_to_world(ijk))
    voxel = tuple(int(v) for v in ijk)
    if args.radius_mm <= 0:
        value = round(float(volume.data[voxel]), 2)
        return IntensityProbe(region="voxel", voxel=voxel, position_mm=position, value=value, unit=unit)
    values = volume.data[sphere_mask(volume, ijk, args.radius_mm)]
    return IntensityProbe(
        region="sphere", voxel=voxel, position_mm=position, unit=unit, voxels=values.size,
        stats=intensity_stats(values, unit),
    )


def sphere_mask(volume: Volume, center: np.ndarray, radius_mm: float) -> np.ndarray:
    """Boolean mask of the voxels whose centres lie within `radius_mm` of `center` (voxel indices)."""
    grids = np.ogrid[tuple(slice(0, n) for n in volume.shape)]
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, volume.spacing))
    mask = dist2 <= radius_mm**2
    mask[tuple(center)] = True
    return mask


_REGION_WORDS = re.compile(r"\b(sphere|radius|box|mean|average|around|within|mm|millimet\w*|world)\b", re.IGNORECASE)
_CENTRE = re.compile(r"\b(cent(re|er|ral voxel)|middle)\b", re.IGNORECASE)


class ProbeIntensityTool(ScanTool):
    name: str = "probe_intensity"
    args_schema: type[BaseModel] = ProbeIntensityArgs
    action: ClassVar[re.Pattern[str] | None] = re.compile(r"\b(intensity|density|hounsfield|HU|signal)\b", re.IGNORECASE)

    @classmethod
    def read_arguments(cls, request: str) -> dict[str, Any] | None:
        """"Intensity at the centre", "HU at 120, 80, 40": one voxel, at the centre or at the one voxel point written;
        a region (sphere, radius, box, mean), millimetres or several points are for the model to read."""
        if not cls.action.search(request) or _REGION_WORDS.search(request):
            return None
        points = coordinate_triples(request)
        if len(points) == 1:
            return {"point": points[0]}
        return {} if not points and _CENTRE.search(request) else None

    def execute(self, args: ProbeIntensityArgs) -> IntensityProbe:
        return probe_intensity(self.session.require_volume(), args)


def parse_triple(text: str) -> list[float]:
    """'10,20,30' -> [10.0, 20.0, 30.0], for CLI flags."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from exc
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers x,y,z, got {text!r}")
    return values


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("probe", help="intensity at a point (default: the centre) or in a sphere")
    p.add_argument("scan")
    p.add_argument("--point", type=parse_triple, help="x,y,z (voxel indices unless --mm)")
    p.add_argument("--mm", action="store_true", help="the point is in world millimetres (RAS)")
    p.add_argument("--radius", type=float, default=0.0, help="sphere radius in mm")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from assistant.scans.loading import load_scan

    probe_args = ProbeIntensityArgs(point=args.point, units="mm" if args.mm else "voxel", radius_mm=args.radius)
    result = probe_intensity(load_scan(args.scan), probe_args)
    print(json.dumps(result.model_dump(exclude_none=True), indent=2) if args.json else result.summary())
    return 0
