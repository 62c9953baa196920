"""FHIR R4B export: a Bundle of one DiagnosticReport, an Observation per finding and, for a DICOM
input, the Patient and the ImagingStudy (with its accession number) the report is about, validated.

Why R4B, not R4: fhir.resources (the maintained pydantic FHIR models) ships R5, R4B and STU3
models since version 7 and no R4 ones; R4B (4.3) keeps R4's (4.0.1) elements for every resource
written here (Bundle, DiagnosticReport, Observation, Patient, ImagingStudy), so an R4 server
reads the file as R4.

Observations carry the finding's concept codes (SNOMED, ICD-10, ... as the term index gave them)
and its values as UCUM quantities. The report text (and each translation) is attached as
Markdown. Patient identifiers are written only when the scan's own DICOM header has them, as in
the DICOM SR: the file goes back to that patient's record; a NIfTI input gives a report with no
subject, which the receiving system links.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pydicom

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from assistant.findings import Finding
from assistant.reports.model import ReportError, ReportVersion
from assistant.reports.terms import CODE_SYSTEMS
from assistant.volume import Volume

UCUM = "http://unitsofmeasure.org"
UCUM_CODES = {"HU": "[hnsf'U]", "mL": "mL", "mm": "mm", "cm": "cm", "mm3": "mm3", "%": "%", "slices": "{slices}",
              "a.u.": "1"}
LOINC_IMAGING_REPORT = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
RADIOLOGY_CATEGORY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
SCANCHAT_FINDINGS = "urn:scanchat:finding"  # local code system for findings the term index could not code
IDENTIFIER_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"  # MR: medical record number, ACSN: accession
DICOM_MODALITIES = "http://dicom.nema.org/resources/ontology/DCM"
_MODELS = {"DiagnosticReport": DiagnosticReport, "Observation": Observation, "Patient": Patient,
           "ImagingStudy": ImagingStudy}


def _codings(finding: Finding) -> list[dict]:
    codings = [{"system": CODE_SYSTEMS[system][0], "code": code, "display": finding.what}
               for system, code in finding.codes.items() if system in CODE_SYSTEMS]
    return codings or [{"system": SCANCHAT_FINDINGS, "code": finding.kind, "display": finding.what}]


def _quantity(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": UCUM_CODES.get(unit, unit)}


def observation(finding: Finding, status: str) -> dict:
    resource: dict = {
        "resourceType": "Observation",
        "id": uuid.uuid4().hex,
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": _codings(finding), "text": finding.what},
        "method": {"text": f"ScanChat tool {finding.source_tool}"},
        "issued": finding.created.isoformat(),
    }
    if len(finding.quantities) == 1:
        resource["valueQuantity"] = _quantity(finding.quantities[0].value, finding.quantities[0].unit)
    elif finding.quantities:
        resource["component"] = [{"code": {"text": f"{finding.what} [{i}]"}, "valueQuantity": _quantity(q.value, q.unit)}
                                 for i, q in enumerate(finding.quantities, 1)]
    notes = [f"Location: {finding.where}"] if finding.where else []
    if finding.model_observation:
        notes.append("Stated by a model looking at the image, not measured.")
    if notes:
        resource["note"] = [{"text": n} for n in notes]
    return resource


def _attachment(markdown: str, language: str, title: str) -> dict:
    return {"contentType": "text/markdown; charset=utf-8", "language": language, "title": title,
            "data": base64.b64encode(markdown.encode("utf-8")).decode("ascii")}


def _date(dicom_date: str | None) -> str | None:
    """DICOM YYYYMMDD as FHIR YYYY-MM-DD; None for a missing or malformed date."""
    text = (dicom_date or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else None


def _identifier(code: str, value: str) -> dict:
    return {"type": {"coding": [{"system": IDENTIFIER_TYPES, "code": code}]}, "value": value}


def patient(volume: Volume) -> dict | None:
    """The Patient as the scan's DICOM header names it; None when the header has no identity (never a placeholder)."""
    ids = volume.identifiers
    if not (ids.patient_id or ids.patient_name):
        return None
    resource: dict = {"resourceType": "Patient", "id": uuid.uuid4().hex}
    if ids.patient_id:
        resource["identifier"] = [_identifier("MR", ids.patient_id)]
    if ids.patient_name:
        family, _, given = ids.patient_name.partition("^")
        name: dict = {"text": " ".join(p for p in (given.replace("^", " ").strip(), family.strip()) if p)}
        if family.strip():
            name["family"] = family.strip()
        if given.split("^")[0].strip():
            name["given"] = [given.split("^")[0].strip()]
        resource["name"] = [name]
    if birth := _date(ids.birth_date):
        resource["birthDate"] = birth
    return resource


def imaging_study(volume: Volume, subject: dict) -> dict | None:
    """The ImagingStudy of the scan's source series, with its accession number; None without DICOM sources."""
    if not volume.dicom_sources:
        return None
    try:
        header = pydicom.dcmread(volume.dicom_sources[0], stop_before_pixels=True,
                                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber"])
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ReportError(f"The source DICOM files cannot be read any more ({exc}); reload the series.") from exc
    study_uid, series_uid = str(header.get("StudyInstanceUID", "")), str(header.get("SeriesInstanceUID", ""))
    if not study_uid or not series_uid:
        return None
    modality = {"system": DICOM_MODALITIES, "code": str(header.get("Modality", "") or "OT")}
    count = len(volume.dicom_sources)
    resource: dict = {
        "resourceType": "ImagingStudy",
        "id": uuid.uuid4().hex,
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "subject": {"reference": f"urn:uuid:{subject['id']}"},
        "modality": [modality],
        "numberOfSeries": 1,
        "numberOfInstances": count,
        "series": [{"uid": series_uid, "modality": modality, "numberOfInstances": count}],
    }
    if accession := volume.identifiers.accession_number:
        resource["identifier"].append(_identifier("ACSN", accession))
    if started := _date(volume.identifiers.study_date):
        resource["started"] = started
    if str(header.get("SeriesNumber", "")).strip().isdigit():
        resource["series"][0]["number"] = int(str(header.SeriesNumber).strip())
    return resource


def fhir_bundle(version: ReportVersion, volume: Volume | None = None) -> dict:
    """The Bundle as JSON-ready dict, validated resource by resource against FHIR R4B.

    With the scan's `volume` (the one the report describes), the report's subject is the Patient its
    DICOM header names and the ImagingStudy (study UID, series, accession number) is linked.
    """
    from assistant.reports.export import report_markdown, text_markdown

    content = version.content
    status = "final" if version.signed else "preliminary"
    observations = [observation(f, status) for f in content.findings]
    title = content.text.title.strip() or "Imaging report"
    forms = [_attachment(report_markdown(version), content.language, title)]
    forms += [_attachment(text_markdown(t.text, content.template), t.language, f"{title} ({t.language})")
              for t in content.translations]
    report = {
        "resourceType": "DiagnosticReport",
        "id": uuid.uuid4().hex,
        "status": status,
        "category": [{"coding": [RADIOLOGY_CATEGORY]}],
        "code": {"coding": [LOINC_IMAGING_REPORT], "text": title},
        "issued": (version.signed_at or version.created).isoformat(),
        "identifier": [{"system": "urn:scanchat:report", "value": f"{version.report_id}/v{version.number}"}],
        "result": [{"reference": f"urn:uuid:{o['id']}"} for o in observations],
        "presentedForm": forms,
    }
    if content.text.impression.strip():  # FHIR forbids empty strings: no conclusion rather than an empty one
        report["conclusion"] = content.text.impression.strip()
    if version.signed:
        report["resultsInterpreter"] = [{"display": version.signed_by}]
    context: list[dict] = []
    if volume is not None and (subject := patient(volume)) is not None:
        report["subject"] = {"reference": f"urn:uuid:{subject['id']}"}
        for o in observations:
            o["subject"] = report["subject"]
        context.append(subject)
        if (study := imaging_study(volume, subject)) is not None:
            report["imagingStudy"] = [{"reference": f"urn:uuid:{study['id']}"}]
            context.append(study)
    resources = (report, *observations, *context)
    try:
        for resource in resources:
            _MODELS[resource["resourceType"]].model_validate(resource)
        bundle = {"resourceType": "Bundle", "type": "collection", "timestamp": version.created.isoformat(),
                  "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise ReportError(f"The FHIR export is not valid FHIR R4B ({exc.error_count()} problems: "
                          f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}).") from exc
    return bundle


def write_fhir(version: ReportVersion, path: Path, volume: Volume | None = None) -> Path:
    path.write_text(json.dumps(fhir_bundle(version, volume), indent=2, ensure_ascii=False), encoding="utf-8")
    return path
