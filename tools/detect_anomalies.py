"""detect_anomalies: how far the loaded scan deviates from normal scans, where, and by how much."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import ClassVar, Literal

import nibabel as nib
from pydantic import BaseModel, Field
from tqdm import tqdm

from assistant.anomaly import DEFAULT_METHOD, SCREENING_METHODS, AnomalyResult, detect_anomalies, get_normal_model
from assistant.grounding import VERBATIM
from assistant.session import Overlay
from assistant.volume import Volume
from tools.base import ScanTool

MethodName = Literal[(DEFAULT_METHOD, *(m for m in SCREENING_METHODS if m != DEFAULT_METHOD))]  # what detect_anomalies accepts, default first


class DetectAnomaliesArgs(BaseModel):
    """Screen the scan on screen for areas that deviate from normal brain MR scans."""

    method: MethodName | None = Field(None, description="Scoring method; leave empty for the default chosen by the benchmark.",
                                      json_schema_extra=VERBATIM)  # only when the user names one
    max_regions: int = Field(5, ge=1, le=10, description="How many of the most deviating areas to list.")


class DetectAnomaliesTool(ScanTool):
    name: str = "detect_anomalies"
    args_schema: type[BaseModel] = DetectAnomaliesArgs
    action: ClassVar[re.Pattern[str] | None] = re.compile(r"\b(anomal\w*|abnormal\w*|lesions?|screen\w*|unusual)\b", re.IGNORECASE)

    def execute(self, args: DetectAnomaliesArgs) -> AnomalyResult:
        result = self.session.compute(detect_anomalies, method=args.method, max_regions=args.max_regions)
        self.session.add_overlay(Overlay(name="anomaly", data=result.anomaly_map, kind="heatmap"))
        return result


def save_anomaly_map(result: AnomalyResult, volume: Volume, path: str | Path) -> Path:
    """The voxel anomaly map as float32 NIfTI on the scan's grid and affine, for viewers beside the scan."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(result.anomaly_map.astype("float32"), volume.affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


def _tqdm_progress(bar: tqdm):
    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_description(message)
        bar.refresh()

    return progress


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("anomaly", help="screen a scan for deviations from normal (brain T1 MR); 'fit' fits a normal model")
    p.add_argument("scan", help="scan path or sample name, or 'fit' to fit and cache the normal model of --method (default: the default method)")
    p.add_argument("--method", choices=SCREENING_METHODS, default=None, help=f"default: {DEFAULT_METHOD}")
    p.add_argument("--map", help="write the voxel anomaly map (scan grid) to this NIfTI file")
    p.add_argument("--json", action="store_true", help="print the typed result as JSON")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from assistant.scans.loading import load_scan

    with tqdm(total=100, unit="%", leave=False) as bar:
        if args.scan == "fit":
            get_normal_model(args.method or DEFAULT_METHOD, progress=_tqdm_progress(bar))
            return 0
        volume = load_scan(args.scan)
        result = detect_anomalies(volume, method=args.method, progress=_tqdm_progress(bar))
    if args.map:
        save_anomaly_map(result, volume, args.map)
    print(json.dumps(result.model_dump(), indent=2) if args.json else result.summary())
    return 0
