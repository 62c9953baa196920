"""Shared by the export and PACS tests: real tool results on a scan, a drafted and signed report, a validator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from assistant.auth import Role, User
from assistant.reports.draft import draft_report
from assistant.reports.model import ReportText, ReportVersion
from assistant.reports.store import ReportStore
from assistant.segmentation.result import Segmentation
from assistant.session import ScanSession, ToolRecord
from assistant.volume import Volume
from tools.measure_distance import MeasureDistanceArgs, measure_distance
from tools.segment import SegmentArgs, SegmentResult, run_segmentation


DR_A = User(name="Dr A", role=Role.reviewer)  # a reviewer, who may sign


def session_with_segmentation(volume: Volume, structure: str = "brain") -> tuple[ScanSession, Segmentation]:
    """A session holding two real tool results on `volume`: a segmentation and a distance."""
    session = ScanSession()
    session.load(volume)
    seg_args = SegmentArgs(structure=structure)
    segmentation = run_segmentation(volume, seg_args)
    far = [min(limit, n - 1) for limit, n in zip((200, 210, 80), volume.shape)]
    distance_args = MeasureDistanceArgs(point_a=[20, 30, 1], point_b=far)
    session.records += [
        ToolRecord("segment", seg_args.model_dump(), SegmentResult(segmentation=segmentation)),
        ToolRecord("measure_distance", distance_args.model_dump(), measure_distance(volume, distance_args)),
    ]
    return session, segmentation


def signed_report(session: ScanSession, store: ReportStore, impression: str | None = None) -> ReportVersion:
    """A template-drafted report of the session's findings (no model, no term index), optionally with another
    impression, signed by "Dr A"."""
    version = store.create(draft_report(session), DR_A)
    if impression is not None:
        text: ReportText = version.content.text.model_copy(update={"impression": impression})
        version = store.save(version.report_id, version.content.model_copy(update={"text": text}), DR_A,
                             based_on=version.number)
    return store.sign(version.report_id, DR_A)


def dciodvfy_errors(path: Path) -> list[str]:
    """The conformance errors David Clunie's validator finds in a DICOM file (its 'Error -' lines)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools, installed by scripts/setup)")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
