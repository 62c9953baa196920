"""Findings of a conversation, gathered from the session's tool calls (never from chat text)."""

from __future__ import annotations

import hashlib

import numpy as np
import pydicom

from assistant.findings import Finding
from assistant.reports.model import ReportError, ScanReference
from assistant.session import ScanSession, ToolRecord
from assistant.volume import Volume
from tools.describe_scan import describe_scan


def scan_fingerprint(volume: Volume) -> str:
    """A content hash of voxels and geometry: it tells whether findings belong to the scan on screen."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(volume.shape, dtype=np.int64).tobytes())
    digest.update(np.round(volume.affine, 4).tobytes())
    digest.update(np.ascontiguousarray(volume.data, dtype=np.float32).tobytes())
    return digest.hexdigest()


def scan_reference(volume: Volume) -> ScanReference:
    series_uid = None
    if volume.dicom_sources:
        header = pydicom.dcmread(volume.dicom_sources[0], stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        series_uid = str(header.get("SeriesInstanceUID", "")) or None
    return ScanReference(
        scan_id=scan_fingerprint(volume),
        name=volume.name,
        modality=volume.modality.value,
        source_format=volume.metadata.source_format,
        body_part=volume.metadata.body_part,
        series_instance_uid=series_uid,
    )


def ensure_scan_described(session: ScanSession) -> None:
    """The technique section needs the scan's geometry; describe it once if no tool did yet."""
    if not any(record.name == "describe_scan" and record.ok for record in session.records):
        description = describe_scan(session.require_volume())
        session.records.insert(0, ToolRecord(name="describe_scan", arguments={}, result=description))


def tool_findings(session: ScanSession) -> list[Finding]:
    """Every finding of every successful tool call, in call order (failed calls contribute nothing)."""
    return [f for record in session.records if record.ok and record.result is not None
            for f in record.result.findings(record.arguments)]


def collect_findings(session: ScanSession) -> list[Finding]:
    """The tools' findings, then what a vision model observed, labelled as such."""
    session.require_volume()
    findings = tool_findings(session) + session.observations  # labelled model observations; drafting caps them at "possible"
    if not findings:
        raise ReportError(
            "There are no findings to report yet: ask for a description, a measurement or a segmentation first."
        )
    return findings


def require_same_scan(report_scan: ScanReference, volume: Volume | None) -> None:
    """Refuse to mix a report about one scan with the scan now on screen."""
    if volume is None:
        raise ReportError("No scan is loaded: open the scan this report describes before editing or exporting it.")
    if scan_fingerprint(volume) != report_scan.scan_id:
        raise ReportError(
            f"This report describes another scan ({report_scan.name}, {report_scan.modality}) than the one on screen "
            f"({volume.name}); load that scan, or draft a new report for this one."
        )
