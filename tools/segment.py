"""segment: promptable 3D segmentation (points, boxes, structure names, follow-ups) with measured results."""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator
from tqdm import tqdm

from assistant.findings import Claim, FieldMeaning, Finding, Quantity, not_an_answer
from assistant.grounding import VERBATIM, coordinate_triples, side_named
from assistant.imaging.progress import ProgressCallback, cancel_on
from assistant.segmentation import (
    Backend,
    Segmentation,
    StructurePrompt,
    box_prompt,
    points_prompt,
    refine_mask,
    resolve_structure,
    segment,
)
from assistant.segmentation.prompts import Prompt, Refinement, Units, structure_named
from assistant.segmentation.result import measure
from assistant.session import Overlay
from assistant.volume import Volume
from tools.base import ScanTool, ToolError, ToolResult, field_claims, render_value
from tools.probe_intensity import parse_triple

OVERLAY_NAME = "segmentation"


class SegmentArgs(BaseModel):
    structure: str | None = Field(
        None, description="Name of what to segment, e.g. 'brain', 'skull', 'left hippocampus', 'right thalamus'.",
        json_schema_extra=VERBATIM,
    )
    points: list[list[float]] | None = Field(None, description="One or more x, y, z points inside the object.")
    box: list[float] | None = Field(
        None, description="x0, y0, z0, x1, y1, z1 around the object, or x0, y0, x1, y1 on axial slice `slice_z`."
    )
    slice_z: float | None = Field(None, description="The axial slice (z) a 4-number box was drawn on.")
    units: Units = Field("voxel", description="'voxel' for array indices, 'mm' for world (RAS) coordinates.")
    refine: Refinement | None = Field(
        None, description="Follow-up on the previous mask: grow, shrink, remove_component or keep_largest."
    )
    amount_mm: float = Field(2.0, gt=0, le=50, description="Distance to grow or shrink by, in mm.")
    component: int = Field(1, ge=1, description="Which component to remove, 1 = the largest.")
    backend: Backend = Field("auto", description="Leave 'auto' unless the user asks for a specific method.",
                             json_schema_extra=VERBATIM)  # only when the user names one

    @model_validator(mode="before")
    @classmethod
    def _new_prompt_over_follow_up(cls, data: Any) -> Any:
        """Empty values count as not given, and a new prompt starts a new mask: a refinement given with it
        (small models copy one from their examples) is dropped rather than the call refused."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v not in ([], "", None)}
        if data.get("refine") and any(data.get(name) for name in ("structure", "points", "box")):
            data.pop("refine")
        return data

    @model_validator(mode="after")
    def _one_prompt(self) -> "SegmentArgs":
        given = [name for name in ("structure", "points", "box", "refine") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("Give exactly one of: structure, points, box, or refine (a follow-up on the last mask).")
        return self


class SegmentResult(ToolResult):
    segmentation: Segmentation = Field(description="the mask and its measurements (claims: see `claims`)")
    overlay: str = not_an_answer(OVERLAY_NAME, description="the viewer overlay showing the mask")

    def claims(self, tool: str) -> list[Claim]:
        """The mask's fields and its extent (a property, measured on the bounding box)."""
        extent = FieldMeaning(unit="mm", fmt=".0f", parts=["left-right extent", "anterior-posterior extent",
                                                           "inferior-superior extent (height)"])
        claims = field_claims(self.segmentation, tool, "segmentation.")
        claims.append(Claim(tool=tool, path="segmentation.extent_mm", meaning="extent (R-L x A-P x S-I)", kind="quantity",
                            value=self.segmentation.extent_mm, text=render_value(self.segmentation.extent_mm, extent, "mm"),
                            asked_as=["extent", "how long", "how wide", "how tall", "dimensions of the mask", "diameter"]))
        return claims

    def summary(self) -> str:
        return self.segmentation.summary()

    def findings(self, arguments: dict[str, Any]) -> list[Finding]:
        seg = self.segmentation
        return [
            Finding(
                kind="measurement", what=f"{seg.target} volume", where=f"centroid {list(seg.centroid_mm)} mm (RAS)",
                quantities=[Quantity(value=seg.volume_ml, unit="mL")], source_tool="segment", parameters=arguments,
            )
        ]


def build_prompt(volume: Volume, args: SegmentArgs) -> Prompt:
    """The typed prompt for the arguments, with user-facing errors as ToolError."""
    try:
        if args.structure is not None:
            return StructurePrompt(resolve_structure(args.structure, volume.modality))
        if args.points is not None:
            return points_prompt(volume, args.points, args.units)
        assert args.box is not None
        return box_prompt(volume, args.box, args.units, args.slice_z)
    except ValueError as exc:
        raise ToolError(str(exc)) from exc


def run_segmentation(
    volume: Volume, args: SegmentArgs, previous: Segmentation | None = None, progress: ProgressCallback | None = None
) -> Segmentation:
    """Segment or refine; every input problem becomes a ToolError the model can relay."""
    try:
        if args.refine is not None:
            if previous is None:
                raise ToolError("There is no previous segmentation to refine; segment something first.")
            return refine_mask(previous, volume, args.refine, amount_mm=args.amount_mm, component=args.component)
        return segment(volume, build_prompt(volume, args), backend=args.backend, progress=progress)
    except ToolError:
        raise
    except ValueError as exc:
        raise ToolError(str(exc)) from exc


_REFINEMENT_WORDS = [  # a follow-up on the last mask, in the words clinicians use for it
    ("keep_largest", re.compile(r"\b(islands?|largest (piece|part|component)|biggest (piece|part|component)|keep (only )?the largest)\b", re.I)),
    ("grow", re.compile(r"\b(grow|expand|dilate|enlarge|widen|bigger|larger)\b", re.I)),
    ("shrink", re.compile(r"\b(shrink|erode|contract|tighten|smaller|thinner)\b", re.I)),
]
_SIDE_WORDS = re.compile(r"\b(left|right)\b\s*", re.I)
_SEGMENT_VERBS = re.compile(r"\b(segment|segmentation of|outline|delineate|contour)\b", re.I)
_BACKEND_WORDS = re.compile(r"\b(classical|medsam|sam|atlas|checkpoint)\b", re.I)


class SegmentTool(ScanTool):
    name: str = "segment"
    args_schema: type[BaseModel] = SegmentArgs
    action: ClassVar[re.Pattern[str] | None] = _SEGMENT_VERBS

    @classmethod
    def read_arguments(cls, request: str) -> dict[str, Any] | None:
        """"Segment the left hippocampus": the structure the request names, when it names one and asks for nothing
        else of the tool (no points, box, follow-up on the last mask or method, which the model fills in)."""
        if not _SEGMENT_VERBS.search(request) or coordinate_triples(request) or _BACKEND_WORDS.search(request):
            return None
        if any(pattern.search(request) for _, pattern in _REFINEMENT_WORDS):
            return None
        named = structure_named(request)
        return {"structure": named} if named else None

    def _previous(self, volume: Volume) -> Segmentation | None:
        """The last mask shown, with its name when the segment tool made it."""
        overlay = self.session.overlays.get(OVERLAY_NAME)
        if overlay is None:
            return None
        last = next(
            (r.result.segmentation for r in reversed(self.session.records) if isinstance(r.result, SegmentResult)), None
        )
        target = last.target if last is not None else "previous mask"
        backend = last.backend if last is not None else "unknown"
        return measure(overlay.data, volume, target=target, backend=backend)

    def users_words(self, field: str, request: str) -> Any:
        """For the structure: the one the request names, by the structure table and its synonyms."""
        return structure_named(request) if field == "structure" else super().users_words(field, request)

    def with_request(self, arguments: dict[str, Any], request: str) -> dict[str, Any]:
        """Points the request writes (the strongest prompt), the side it names ("what about the left
        one?") and a follow-up it plainly asks for ("erode the mask by 1 mm"), over what the model filled in."""
        if points := coordinate_triples(request):
            return {"points": points, **{k: v for k, v in arguments.items() if k == "units"}}
        refine = next((name for name, pattern in _REFINEMENT_WORDS if pattern.search(request)), None)
        if refine and not any(arguments.get(name) for name in ("structure", "points", "box")):
            arguments = {**arguments, "refine": refine}
            amount = re.search(r"(\d+(?:\.\d+)?)\s*mm\b", request)
            if amount and refine in ("grow", "shrink"):
                arguments["amount_mm"] = float(amount.group(1))
        named = structure_named(request)
        if named and not refine:  # a structure named now is the prompt: points or a box the model copied from an
            # earlier turn (or left out the structure for) would make two prompts, or the wrong one
            arguments = {k: v for k, v in arguments.items() if k not in ("points", "box", "slice_z", "units")}
            arguments["structure"] = arguments.get("structure") or named
        elif not any(arguments.get(name) for name in ("structure", "points", "box", "refine")):
            arguments = {**arguments, "structure": named}  # the model gave no prompt at all
        structure = arguments.get("structure")
        if isinstance(structure, str) and (side := side_named(request)):
            arguments = {**arguments, "structure": f"{side} {_SIDE_WORDS.sub('', structure).strip()}"}
        return arguments

    def execute(self, args: SegmentArgs) -> SegmentResult:
        volume = self.session.require_volume()
        previous = self._previous(volume) if args.refine else None
        segmentation = self.session.compute(run_segmentation, args, previous)
        self.session.add_overlay(Overlay(name=OVERLAY_NAME, data=segmentation.mask, kind="mask"))
        return SegmentResult(segmentation=segmentation)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("segment", help="segment a structure, or the object at a point or in a box")
    p.add_argument("scan")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--point", type=parse_triple, action="append", help="x,y,z inside the object (repeatable)")
    prompt.add_argument("--box", help="x0,y0,z0,x1,y1,z1 or x0,y0,x1,y1 with --slice")
    prompt.add_argument("--structure", help="e.g. brain, skull, 'left hippocampus'")
    p.add_argument("--slice", type=float, help="axial slice z of a 4-number box")
    p.add_argument("--mm", action="store_true", help="coordinates are world millimetres (RAS)")
    p.add_argument("--backend", default="auto", choices=["auto", "classical", "medsam", "atlas", "checkpoint"])
    p.add_argument("--out", type=Path, required=True, help="mask file to write (NIfTI)")
    p.add_argument("--seg", type=Path, help="also write a DICOM SEG (DICOM inputs only)")
    p.add_argument("--push", action="store_true", help="send the DICOM SEG (--seg, else a new one) to the PACS (SCANCHAT_DICOMWEB_URL)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from assistant.scans.loading import load_scan
    from assistant.segmentation.export import save_dicom_seg, save_nifti

    box = [float(v) for v in args.box.split(",")] if args.box else None
    seg_args = SegmentArgs(
        structure=args.structure, points=args.point, box=box, slice_z=args.slice,
        units="mm" if args.mm else "voxel", backend=args.backend,
    )
    volume = load_scan(args.scan)
    # Ctrl-C inside SimpleITK's C++ loop is not seen until it returns; a flag checked at every step is
    cancel = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        with tqdm(total=100, unit="%", leave=False) as bar:

            def progress(fraction: float, message: str) -> None:
                bar.set_description(message)
                bar.update(int(fraction * 100) - bar.n)

            segmentation = run_segmentation(volume, seg_args, progress=cancel_on(cancel, progress))
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    files = {"mask": str(save_nifti(segmentation, volume, args.out))}
    if args.seg:
        files["dicom_seg"] = str(save_dicom_seg(segmentation, volume, args.seg))
    pushed = None
    if args.push:
        from assistant.scans.pacs import push_results

        pushed = push_results(volume, [] if args.seg else [segmentation], seg_files=[args.seg] if args.seg else ())
    if args.json:
        print(json.dumps(segmentation.model_dump() | {"files": files}
                         | ({"pushed": pushed.model_dump(mode="json")} if pushed else {}), indent=2))
    else:
        print(segmentation.summary())
        print("wrote " + ", ".join(files.values()))
        if pushed:
            print(pushed.summary())
    return 0 if pushed is None or pushed.ok else 1
