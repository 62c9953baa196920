"""FHIR R4 export: a Bundle of one DiagnosticReport and an Observation per finding, validated.

Observations carry the finding's concept codes (SNOMED, ICD-10, ... as the term index gave them)
and its values as UCUM quantities. The report text (and each translation) is attached as
Markdown. No patient identifiers are written: the receiving system links the subject.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from assistant.findings import Finding
from assistant.reports.model import ReportError, ReportVersion
from assistant.reports.terms import CODE_SYSTEMS

UCUM = "http://unitsofmeasure.org"
UCUM_CODES = {"HU": "[hnsf'U]", "mL": "mL", "mm": "mm", "cm": "cm", "mm3": "mm3", "%": "%", "slices": "{slices}",
              "a.u.": "1"}
LOINC_IMAGING_REPORT = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
RADIOLOGY_CATEGORY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
SCANCHAT_FINDINGS = "urn:scanchat:finding"  # local code system for findings the term index could not code


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


def fhir_bundle(version: ReportVersion) -> dict:
    """The Bundle as JSON-ready dict, validated resource by resource against FHIR R4(B)."""
    from assistant.reports.export import report_markdown, text_markdown

    content = version.content
    status = "final" if version.signed else "preliminary"
    observations = [observation(f, status) for f in content.findings]
    forms = [_attachment(report_markdown(version), content.language, content.text.title)]
    forms += [_attachment(text_markdown(t.text, content.template), t.language, f"{content.text.title} ({t.language})")
              for t in content.translations]
    report = {
        "resourceType": "DiagnosticReport",
        "id": uuid.uuid4().hex,
        "status": status,
        "category": [{"coding": [RADIOLOGY_CATEGORY]}],
        "code": {"coding": [LOINC_IMAGING_REPORT], "text": content.text.title},
        "issued": (version.signed_at or version.created).isoformat(),
        "identifier": [{"system": "urn:scanchat:report", "value": f"{version.report_id}/v{version.number}"}],
        "result": [{"reference": f"urn:uuid:{o['id']}"} for o in observations],
        "conclusion": content.text.impression,
        "presentedForm": forms,
    }
    if version.signed:
        report["resultsInterpreter"] = [{"display": version.signed_by}]
    try:
        for resource in observations:
            Observation.model_validate(resource)
        DiagnosticReport.model_validate(report)
        bundle = {"resourceType": "Bundle", "type": "collection", "timestamp": version.created.isoformat(),
                  "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in (report, *observations)]}
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise ReportError(f"The FHIR export is not valid FHIR R4 ({exc.error_count()} problems: "
                          f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}).") from exc
    return bundle


def write_fhir(version: ReportVersion, path: Path) -> Path:
    path.write_text(json.dumps(fhir_bundle(version), indent=2, ensure_ascii=False), encoding="utf-8")
    return path
