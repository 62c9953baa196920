"""DICOM Structured Report (Comprehensive 3D SR, TID 1500 Measurement Report) with highdicom.

The SR belongs to the same study as the source series (highdicom copies the patient and study
modules from the evidence, which is where identifiers may go: back to the same patient's record),
lists every source image as evidence (Current Requested Procedure Evidence), and, for each DICOM SEG given, references
its segments in volumetric measurement groups. Measurements are the findings' values, coded with
the term index's codes where it had them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from assistant.findings import Finding, Quantity
from assistant.reports.model import ReportError, ReportVersion
from assistant.reports.terms import CODE_SYSTEMS
from assistant.volume import Volume

_UCUM_MEANINGS = {"mm": "millimeter", "mL": "milliliter", "cm": "centimeter", "HU": "Hounsfield unit",
                  "mm3": "cubic millimeter", "%": "percent"}
_UCUM_CODES = {"HU": "[hnsf'U]", "a.u.": "1"}
_PROCEDURES = {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion}
_LOCAL_SCHEME = "99SCANCHAT"  # private coding scheme for findings the term index could not code


def _unit(unit: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=_UCUM_CODES.get(unit, unit), scheme_designator="UCUM",
                              meaning=_UCUM_MEANINGS.get(unit, unit))


def _finding_concept(finding: Finding) -> hd.sr.CodedConcept:
    for system, code in finding.codes.items():
        if system in CODE_SYSTEMS:
            return hd.sr.CodedConcept(value=code, scheme_designator=CODE_SYSTEMS[system][1], meaning=finding.what[:64])
    slug = re.sub(r"[^A-Za-z0-9]+", "-", finding.what).strip("-")[:16] or finding.kind
    return hd.sr.CodedConcept(value=slug, scheme_designator=_LOCAL_SCHEME, meaning=finding.what[:64])


def _measurement_name(finding: Finding, quantity: Quantity) -> hd.sr.CodedConcept:
    if quantity.unit in ("mL", "mm3"):
        return codes.SCT.Volume
    if quantity.unit in ("mm", "cm"):
        return codes.SCT.Length
    if quantity.unit == "HU":
        return codes.DCM.AttenuationCoefficient
    return _finding_concept(finding)


def _measurements(finding: Finding) -> list[hd.sr.Measurement]:
    return [hd.sr.Measurement(name=_measurement_name(finding, q), value=q.value, unit=_unit(q.unit))
            for q in finding.quantities]


# Type 2 patient/study attributes (present, possibly empty) that highdicom copies into the SR;
# some exporters and anonymisers drop them.
_TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                     "StudyDate", "StudyTime", "ReferringPhysicianName")


def _with_type2_attributes(dataset: pydicom.Dataset) -> pydicom.Dataset:
    for keyword in _TYPE2_ATTRIBUTES:
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    return dataset


def _read_headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    try:
        return [_with_type2_attributes(pydicom.dcmread(p, stop_before_pixels=True)) for p in paths]
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ReportError(f"The source DICOM files cannot be read any more ({exc}); reload the series.") from exc


def _segment_groups(segmentation: pydicom.Dataset, findings: list[Finding]) -> list:
    """One volumetric group per segment, with the measurements of the finding named like the segment."""
    groups = []
    source_series = hd.sr.SourceSeriesForSegmentation(
        segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID
        if "ReferencedSeriesSequence" in segmentation else segmentation.SeriesInstanceUID)
    for segment in segmentation.SegmentSequence:
        label = str(segment.SegmentLabel)
        matching = [f for f in findings if f.what.casefold() == label.casefold() or label.casefold() in f.what.casefold()]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=label[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=int(segment.SegmentNumber), source_series=source_series),
            finding_type=_finding_concept(matching[0]) if matching else codes.SCT.Finding,
            measurements=[m for f in matching for m in _measurements(f)] or None,
        ))
    return groups


def _person_name(name: str) -> str:
    """A free-text name as a one-component DICOM person name (the trailing caret says so)."""
    return name.replace("^", " ") + "^"


def dicom_sr(version: ReportVersion, volume: Volume, segmentations: Sequence[Path] = ()) -> hd.sr.Comprehensive3DSR:
    """The SR dataset; raises ReportError for a non-DICOM input or a scan other than the report's."""
    from assistant.reports.collect import require_same_scan

    content = version.content
    if not content.scan.is_dicom or not volume.dicom_sources:
        raise ReportError(f"A DICOM SR needs a DICOM input; this scan came from {content.scan.source_format}. "
                          "Export Markdown, PDF or FHIR instead.")
    require_same_scan(content.scan, volume)
    evidence = _read_headers(volume.dicom_sources)
    seg_datasets = _read_headers(segmentations)
    measured = [f for f in content.findings if f.kind != "technique" and f.quantities]
    in_segments = {id(f) for seg in seg_datasets for s in seg.SegmentSequence for f in measured
                   if str(s.SegmentLabel).casefold() in f.what.casefold()}
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
                  tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f.what[:64]),
                  finding_type=_finding_concept(f), measurements=_measurements(f))
              for f in measured if id(f) not in in_segments]
    groups += [g for seg in seg_datasets for g in _segment_groups(seg, measured)]
    if not groups:  # TID 1500 holds measurement groups; highdicom refuses an SR with none
        raise ReportError("A DICOM SR (TID 1500) carries measurements, and this report has none beyond the technique: "
                          "measure or segment something first, or export PDF, Markdown or FHIR.")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name="ScanChat"))
    person = None
    if version.signed:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=_person_name(version.signed_by)))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person, observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(content.scan.modality, codes.SCT.ImagingProcedure),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence + seg_datasets,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=900 + version.number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="ScanChat",
        is_complete=True,
        is_final=version.signed,
        is_verified=version.signed,
        verifying_observer_name=_person_name(version.signed_by) if version.signed else None,
        verifying_organization="ScanChat" if version.signed else None,
    )


def write_dicom_sr(version: ReportVersion, volume: Volume, path: Path, segmentations: Sequence[Path] = ()) -> Path:
    dicom_sr(version, volume, segmentations).save_as(path)
    return path
