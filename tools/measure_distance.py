"""measure_distance: the straight-line distance in mm between two points of the scan."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from assistant.findings import Finding, Quantity, meaning
from assistant.grounding import coordinate_triples
from assistant.volume import Volume
from tools.base import ScanTool, ToolError, ToolResult
from tools.probe_intensity import Units, parse_triple


class MeasureDistanceArgs(BaseModel):
    point_a: list[float] = Field(description="x, y, z of the first point.", min_length=3, max_length=3)
    point_b: list[float] = Field(description="x, y, z of the second point.", min_length=3, max_length=3)
    units: Units = Field("voxel", description="'voxel' for array indices, 'mm' for world (RAS) coordinates.")


class DistanceMeasurement(ToolResult):
    voxel_a: tuple[int, int, int] = meaning(description="first point (voxel x, y, z)", kind="count")
    voxel_b: tuple[int, int, int] = meaning(description="second point (voxel x, y, z)", kind="count")
    position_a_mm: tuple[float, float, float] = meaning(description="first point (RAS)", unit="mm", fmt=".1f")
    position_b_mm: tuple[float, float, float] = meaning(description="second point (RAS)", unit="mm", fmt=".1f")
    distance_mm: float = meaning(description="straight-line distance between the two points", unit="mm", fmt=".1f",
                                 headline=True, asked_as=["distance", "how far apart", "length", "measure between"])
    offset_mm: tuple[float, float, float] = meaning(
        description="offset from the first to the second point", unit="mm", fmt=".1f",
        parts=["left-right offset (x, towards the right)", "anterior-posterior offset (y, towards anterior)",
               "inferior-superior offset (z, towards superior)"],
        asked_as=["offset", "how far along each axis", "vertical distance", "horizontal distance"])

    def summary(self) -> str:
        return (
            f"Distance between voxel {list(self.voxel_a)} and voxel {list(self.voxel_b)}: "
            f"{self.distance_mm:.1f} mm (offset x {self.offset_mm[0]:.1f}, y {self.offset_mm[1]:.1f}, "
            f"z {self.offset_mm[2]:.1f} mm)."
        )

    def findings(self, arguments: dict) -> list[Finding]:
        where = f"from voxel {list(self.voxel_a)} to voxel {list(self.voxel_b)}"
        return [
            Finding(kind="measurement", what="distance", where=where,
                    quantities=[Quantity(value=self.distance_mm, unit="mm")],
                    source_tool="measure_distance", parameters=arguments)
        ]


def measure_distance(volume: Volume, args: MeasureDistanceArgs) -> DistanceMeasurement:
    """Euclidean distance in world millimetres, so anisotropic voxels are measured correctly."""
    try:
        a = volume.voxel_of(args.point_a, args.units)
        b = volume.voxel_of(args.point_b, args.units)
    except ValueError as exc:
        raise ToolError(str(exc)) from exc
    # mm inputs are measured exactly; voxel inputs between voxel centres.
    wa = np.asarray(args.point_a, float) if args.units == "mm" else volume.voxel_to_world(a)
    wb = np.asarray(args.point_b, float) if args.units == "mm" else volume.voxel_to_world(b)
    offset = wb - wa
    return DistanceMeasurement(
        voxel_a=tuple(int(v) for v in a),
        voxel_b=tuple(int(v) for v in b),
        position_a_mm=tuple(round(float(v), 1) for v in wa),
        position_b_mm=tuple(round(float(v), 1) for v in wb),
        distance_mm=round(float(np.linalg.norm(offset)), 2),
        offset_mm=tuple(round(float(v), 1) for v in offset),
    )


class MeasureDistanceTool(ScanTool):
    name: str = "measure_distance"
    args_schema: type[BaseModel] = MeasureDistanceArgs
    action: ClassVar[re.Pattern[str] | None] = re.compile(r"\b(distance|how far)\b", re.IGNORECASE)

    @classmethod
    def read_arguments(cls, request: str) -> dict[str, Any] | None:
        """"Distance from 10,20,30 to 40,50,60": the two voxel points written; millimetres are for the model to read."""
        points = coordinate_triples(request)
        if not cls.action.search(request) or len(points) != 2 or re.search(r"\b(mm|millimet\w*|world)\b", request, re.I):
            return None
        return {"point_a": points[0], "point_b": points[1]}

    def execute(self, args: MeasureDistanceArgs) -> DistanceMeasurement:
        return measure_distance(self.session.require_volume(), args)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("measure", help="distance in mm between two points")
    p.add_argument("scan")
    p.add_argument("point_a", type=parse_triple, help="x,y,z")
    p.add_argument("point_b", type=parse_triple, help="x,y,z")
    p.add_argument("--mm", action="store_true", help="points are world millimetres (RAS), not voxel indices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from assistant.scans.loading import load_scan

    measure_args = MeasureDistanceArgs(point_a=args.point_a, point_b=args.point_b, units="mm" if args.mm else "voxel")
    result = measure_distance(load_scan(args.scan), measure_args)
    print(json.dumps(result.model_dump(), indent=2) if args.json else result.summary())
    return 0
