"""Drafting: findings -> a template per modality and region -> a report; the LLM only phrases the impression.

The findings and technique sections are written from the findings themselves (one sentence per
finding, numbers as measured, codes attached), so every number is traceable by construction. A
chat model may draft the impression, constrained to a JSON schema in which every statement cites
the findings it rests on; a statement is kept only if its numbers are grounded in the findings it
cites and it names one of them, and uncertainty is marked, never upgraded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from string import Template
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError

from assistant.findings import Finding, Quantity
from assistant.grounding import check_grounding
from assistant.imaging.progress import ProgressCallback, report
from assistant.models.base import ChatModel, Message, ModelError
from assistant.reports.collect import collect_findings, ensure_scan_described, scan_reference
from assistant.reports.model import SECTIONS, ReportContent, ReportText, ScanReference
from assistant.reports.terms import CLINICAL_KINDS, normalise_findings
from assistant.session import ScanSession
from prompts import load_prompt

log = logging.getLogger(__name__)

TEMPLATES: tuple[str, ...] = ("ct_head", "mr_brain", "generic")
Certainty = Literal["definite", "probable", "possible"]
_CERTAINTY_PREFIX = {"definite": "", "probable": "Probable: ", "possible": "Possible, not confirmed: "}
_MAX_STATEMENTS = 3


@dataclass(frozen=True)
class ReportTemplate:
    name: str
    title: str
    modality: str
    regions: tuple[str, ...]
    not_assessed: tuple[str, ...]
    body: str

    def fill(self, sections: Mapping[str, str]) -> str:
        return Template(self.body).substitute(sections)


@cache
def load_template(name: str) -> ReportTemplate:
    """A template file: YAML front matter (title, modality, regions, what it does not assess) and sections."""
    _, header, body = load_prompt(f"reports/{name}.md").split("---", 2)
    meta = yaml.safe_load(header)
    return ReportTemplate(name=name, title=meta["title"], modality=meta["modality"], regions=tuple(meta["regions"]),
                          not_assessed=tuple(meta["not_assessed"]), body=body.strip())


def choose_template(scan: ScanReference, findings: list[Finding]) -> ReportTemplate:
    """The template for the scan's modality and body region (from the header, else from structure names)."""
    hints = " ".join([scan.body_part or "", scan.name, *(f.what for f in findings if f.kind in CLINICAL_KINDS)]).lower()
    for name in TEMPLATES:
        template = load_template(name)
        if template.modality in (scan.modality, "any") and (not template.regions or any(r in hints for r in template.regions)):
            return template
    return load_template("generic")


# --- sentences from findings --------------------------------------------------------------------


def format_number(value: float) -> str:
    """The value exactly as measured, never in exponent notation (which would not read back as the same number)."""
    return np.format_float_positional(value, trim="-")


def format_quantities(quantities: list[Quantity]) -> str:
    """'230 x 230 x 150 mm' for a triple in one unit, else '12.5 mm, 1180 mL'."""
    if len(quantities) > 1 and len({q.unit for q in quantities}) == 1:
        return " x ".join(format_number(q.value) for q in quantities) + f" {quantities[0].unit}"
    return ", ".join(f"{format_number(q.value)} {q.unit}" for q in quantities)


def finding_sentence(finding: Finding) -> str:
    """One finding as one sentence, with its codes and whether it was measured or only observed."""
    text = finding.what[:1].upper() + finding.what[1:]
    if finding.where:
        text += f" ({finding.where})"
    if finding.quantities:
        text += f": {format_quantities(finding.quantities)}"
    if finding.codes:
        text += " [" + "; ".join(f"{system} {code}" for system, code in finding.codes.items()) + "]"
    if finding.model_observation:
        text += " (model observation, not measured)"
    return text + "."


def technique_text(scan: ScanReference, findings: list[Finding]) -> str:
    sentences = [finding_sentence(f) for f in findings if f.kind == "technique"]
    return " ".join(sentences) or f"{scan.modality} ({scan.source_format})."


def findings_text(findings: list[Finding], template: ReportTemplate) -> str:
    lines = [f"- {finding_sentence(f)}" for f in findings if f.kind != "technique"]
    covered = " ".join(f.what.lower() for f in findings)
    unassessed = [item for item in template.not_assessed if item.lower() not in covered]
    if not lines:
        lines.append("- No structures or lesions were measured; only the scan's technical facts were recorded.")
    if unassessed:
        lines.append(f"- Not assessed by the tools used: {', '.join(unassessed)}.")
    return "\n".join(lines)


def template_impression(findings: list[Finding]) -> str:
    """The impression without a model: what the tools found, never a diagnosis."""
    anomalies = [f.what for f in findings if f.kind == "anomaly"]
    measured = [f.what for f in findings if f.kind in ("structure", "measurement", "term", "observation")]
    if anomalies:
        return f"Findings to review: {', '.join(dict.fromkeys(anomalies))} (see findings)."
    if measured:
        return (f"Measured: {', '.join(dict.fromkeys(measured))} (see findings). No abnormality was flagged by the "
                "tools used; this is not a complete read of the scan.")
    return "Technical description only; no findings were assessed."


# --- the model's impression ---------------------------------------------------------------------


class ImpressionStatement(BaseModel):
    findings: list[int] = Field(min_length=1)
    text: str = Field(min_length=1, max_length=240)
    certainty: Certainty


class ImpressionDraft(BaseModel):
    statements: list[ImpressionStatement] = Field(max_length=_MAX_STATEMENTS)


def _impression_schema(count: int) -> dict:
    schema = ImpressionDraft.model_json_schema()
    statement = schema["$defs"]["ImpressionStatement"]
    statement["properties"]["findings"]["items"] = {"type": "integer", "minimum": 1, "maximum": count}
    return schema


def grounded_statement(statement: ImpressionStatement, numbered: list[Finding]) -> str | None:
    """The statement as it goes into the report, or None when it is not supported by the findings it cites."""
    if any(not 1 <= i <= len(numbered) for i in statement.findings):
        return None
    cited = [numbered[i - 1] for i in statement.findings]
    if not check_grounding(statement.text, [finding_sentence(f) for f in cited]).ok:
        return None
    if not any(f.what.lower() in statement.text.lower() for f in cited):
        return None
    certainty = "possible" if any(f.model_observation for f in cited) else statement.certainty
    text = " ".join(statement.text.split()).rstrip(".")
    return f"{_CERTAINTY_PREFIX[certainty]}{text}."


def model_impression(model: ChatModel, scan: ScanReference, findings: list[Finding], max_new_tokens: int = 256) -> str | None:
    """The model's impression from the clinical findings only; None when nothing it wrote survives the checks."""
    numbered = [f for f in findings if f.kind != "technique"]
    if not numbered:
        return None
    prompt = Template(load_prompt("reports/impression.md")).substitute(
        scan=f"{scan.modality} ({scan.source_format})",
        findings="\n".join(f"{i}. {finding_sentence(f)}" for i, f in enumerate(numbered, 1)),
    )
    try:
        reply = model.complete_json([Message(role="user", content=prompt)], _impression_schema(len(numbered)),
                                    max_new_tokens=max_new_tokens)
        draft = ImpressionDraft.model_validate(reply)
    except (ModelError, ValidationError) as exc:
        log.warning("impression draft rejected: %s", exc)
        return None
    kept = [s for s in (grounded_statement(st, numbered) for st in draft.statements) if s]
    log.info("impression: %d of %d statements kept", len(kept), len(draft.statements))
    return " ".join(kept) or None


# --- the draft ----------------------------------------------------------------------------------


def draft_report(
    session: ScanSession,
    *,
    model: ChatModel | None = None,
    index=None,
    wordings: Mapping[str, str] | None = None,
    clinical_information: str = "",
    progress: ProgressCallback | None = None,
) -> ReportContent:
    """A report about the session's scan from its tool findings; see the module docstring.

    `index` is the term index (normalises finding terms; None skips it); `wordings` are the
    wordings already used for concepts in this patient's or department's signed reports.
    """
    volume = session.require_volume()
    ensure_scan_described(session)
    report(progress, 0.1, "Collecting findings")
    findings = collect_findings(session)
    scan = scan_reference(volume)
    if index is not None:
        report(progress, 0.3, "Normalising terms")
        findings, _ = normalise_findings(findings, index, wordings)
    template = choose_template(scan, findings)
    impression = None
    if model is not None:
        report(progress, 0.5, f"Drafting the impression with {model.name}")
        impression = model_impression(model, scan, findings)
    text = ReportText(
        title=template.title,
        clinical_information=" ".join(clinical_information.split()) or "Not provided.",
        technique=technique_text(scan, findings),
        findings=findings_text(findings, template),
        impression=impression or template_impression(findings),
    )
    report(progress, 1.0, "Draft ready")
    return ReportContent(scan=scan, text=text, findings=findings, template=template.name,
                         drafted_by=model.name if impression else "template")


def sections_markdown(text: ReportText, template_name: str = "generic") -> str:
    """The sections in the template's layout, for the Markdown export."""
    return load_template(template_name).fill({name: text.section(name) for name in SECTIONS})
