"""The report checker: ungrounded numbers, inconsistent wordings, unmapped terms, ambiguous abbreviations.

Each flag points at a span of one section and, where there is one, offers the fix, so the UI can
show it inline and apply it with one click. Export is refused while number flags remain.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Literal

from pydantic import BaseModel

from assistant.findings import Finding
from assistant.grounding import check_grounding, numbers_in
from assistant.reports.model import SECTIONS, ReportText, Section
from assistant.reports.terms import CLINICAL_KINDS, group_mentions
from assistant.terminology.lexical import is_abbreviation
from assistant.terminology.models import Concept

FlagKind = Literal["ungrounded_number", "inconsistent_term", "unmapped_term", "ambiguous_abbreviation"]
# Units a number in a report can carry, as written -> the unit the findings use.
UNIT_ALIASES = {"mm": "mm", "cm": "cm", "ml": "mL", "cc": "mL", "cm3": "mL", "hu": "HU", "a.u.": "a.u.",
                "slices": "slices", "voxels": "voxels", "%": "%", "mm3": "mm3", "l": "L"}
_UNIT_AFTER = re.compile(r"\s*(a\.u\.|cm3|mm3|slices|voxels|mm|cm|ml|cc|hu|%|l)(?!\w)", re.IGNORECASE)
# Capitalised tokens that are the report's own vocabulary (modalities, units, axes, formats), never ambiguous.
REPORT_VOCABULARY = {"CT", "MR", "MRI", "PET", "HU", "RAS", "LPS", "DICOM", "NIFTI", "NRRD", "MHA", "SEG", "SR", "ICD",
                     "SNOMED", "LOINC", "HPO", "T1", "T2", "FOV", "XR", "US", "NM", "PT", "OT"}


class ReportFlag(BaseModel):
    kind: FlagKind
    section: Section
    start: int
    end: int
    text: str
    message: str
    fix: str | None = None

    @property
    def blocks_export(self) -> bool:
        return self.kind == "ungrounded_number"


def canonical_unit(unit: str) -> str:
    return UNIT_ALIASES.get(unit.lower(), unit)


def finding_sources(findings: list[Finding]) -> tuple[dict[str, list[str]], list[str]]:
    """Numbers the findings support: by unit (value + unit must both match), and any number of any finding."""
    by_unit: dict[str, list[str]] = defaultdict(list)
    everything: list[str] = []
    for finding in findings:
        for quantity in finding.quantities:
            by_unit[canonical_unit(quantity.unit)].append(repr(quantity.value))
            everything.append(repr(quantity.value))
        everything += [finding.what, finding.where or "", json.dumps(finding.parameters, default=str),
                       " ".join(f"{system} {code}" for system, code in finding.codes.items())]
    return by_unit, everything


def ungrounded_numbers(section: Section, text: str, findings: list[Finding]) -> list[ReportFlag]:
    """Numbers no finding measured; a number with a unit must match a finding in that same unit."""
    by_unit, everything = finding_sources(findings)
    flags, cursor = [], 0
    for token in numbers_in(text):
        match = re.compile(rf"(?<![\w.]){re.escape(token)}(?!\w)").search(text, cursor)
        start, end = match.span()
        cursor = end
        unit_match = _UNIT_AFTER.match(text, end)
        unit = canonical_unit(unit_match.group(1)) if unit_match else None
        sources = by_unit.get(unit, []) if unit else everything
        written = text[start:unit_match.end() if unit_match else end]
        if check_grounding(written, sources).ok:  # with its unit, so "2 mm" is a measurement, not a count
            continue
        measured = ", ".join(sorted(set(by_unit.get(unit, [])))) if unit else ""
        hint = f" Measured values in {unit}: {measured}." if measured else ""
        flags.append(ReportFlag(kind="ungrounded_number", section=section, start=start, end=start + len(written), text=written,
                                message=f"'{written}' matches no finding (value and unit).{hint} Correct it or remove it."))
    return flags


def term_flags(section: Section, text: str, findings: list[Finding], index) -> list[ReportFlag]:
    """Synonyms used for a concept the report words otherwise, and ambiguous abbreviations."""
    if not text.strip():
        return []
    wording = {f.concept_id: f.what for f in findings if f.concept_id}
    flags = []
    mentions = [m for m in index.normalize(text) if not is_abbreviation(m.text)]
    for ids, group in group_mentions(mentions, index):
        chosen = next((wording[i] for i in ids if i in wording), None) or _most_common(m.text for m in group)
        for mention in group:
            if mention.text.casefold() != chosen.casefold():
                flags.append(ReportFlag(
                    kind="inconsistent_term", section=section, start=mention.start, end=mention.end, text=mention.text,
                    message=f"'{mention.text}' and '{chosen}' name the same concept ({mention.concept.preferred}); "
                            f"use one wording.", fix=chosen))
    flags += _ambiguous_abbreviations(section, text, index)
    return flags


def _most_common(texts) -> str:
    texts = list(texts)
    return max(texts, key=texts.count)


def _terms(concept: Concept) -> set[str]:
    return {t.casefold() for t in (concept.preferred, *concept.synonyms)}


def _same_idea(a: Concept, b: Concept, abbreviation: str) -> bool:
    """Linked across sources, or sharing a written-out term (not just the abbreviation)."""
    return a.id == b.id or b.id in a.related or bool((_terms(a) & _terms(b)) - {abbreviation.casefold()})


def _ambiguous_abbreviations(section: Section, text: str, index) -> list[ReportFlag]:
    flags = []
    for match in re.finditer(r"\b[A-Z][A-Z0-9]{1,5}\b", text):
        token = match.group(0)
        if token in REPORT_VOCABULARY or not is_abbreviation(token):
            continue
        meanings: list[Concept] = []
        for hit in index.search(token, k=10):
            if hit.matched == token and not any(_same_idea(hit.concept, m, token) for m in meanings):
                meanings.append(hit.concept)
        meanings = [m.preferred for m in meanings]
        if len(meanings) > 1:
            flags.append(ReportFlag(
                kind="ambiguous_abbreviation", section=section, start=match.start(), end=match.end(), text=token,
                message=f"'{token}' can mean {', '.join(meanings[:4])}; write the term out."))
        elif len(meanings) == 1:
            flags.append(ReportFlag(
                kind="ambiguous_abbreviation", section=section, start=match.start(), end=match.end(), text=token,
                message=f"'{token}' stands for {meanings[0]}; spell it out for readers outside radiology.",
                fix=meanings[0]))
    return flags


def unmapped_terms(findings: list[Finding]) -> list[ReportFlag]:
    """Clinical finding terms the term index could not map: they carry no code."""
    return [
        ReportFlag(kind="unmapped_term", section="findings", start=0, end=0, text=f.what,
                   message=f"'{f.what}' is not in the term index, so it has no code; choose a standard term.")
        for f in findings if f.kind in CLINICAL_KINDS and not f.concept_id
    ]


def check_report(text: ReportText, findings: list[Finding], index=None) -> list[ReportFlag]:
    """Every flag of every section; term checks need the term index and are skipped without one."""
    flags: list[ReportFlag] = []
    for section in SECTIONS:
        body = text.section(section)
        flags += ungrounded_numbers(section, body, findings)
        if index is not None:
            flags += term_flags(section, body, findings, index)
    return flags + unmapped_terms(findings)


def apply_fix(text: ReportText, flag: ReportFlag) -> ReportText:
    """The report with one flag's fix applied (the span must still hold the flagged text)."""
    if flag.fix is None:
        raise ValueError(f"The flag on '{flag.text}' has no automatic fix; edit the text instead.")
    body = text.section(flag.section)
    if body[flag.start:flag.end] != flag.text:
        raise ValueError("The report changed since it was checked; check it again before applying fixes.")
    return text.model_copy(update={flag.section: body[:flag.start] + flag.fix + body[flag.end:]})


def apply_all_fixes(text: ReportText, flags: list[ReportFlag]) -> ReportText:
    """Apply every fixable flag, right to left so earlier spans stay valid."""
    for flag in sorted((f for f in flags if f.fix is not None), key=lambda f: (f.section, f.start), reverse=True):
        text = apply_fix(text, flag)
    return text
