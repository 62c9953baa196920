"""One concept, one wording: finding terms normalised through the shared term index.

A finding's term ("cerebral haemorrhage", "brain bleed") is mapped to a concept of the term
index; the report then uses one wording per concept (the wording the department already signed
off for that concept if there is one, else the concept's preferred term) and carries its codes.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from assistant.findings import Finding
from assistant.terminology.models import Concept, TermMention

# Finding kinds whose `what` is a clinical term; technique and measurement names are the tools' own.
CLINICAL_KINDS = {"structure", "anomaly", "term", "observation"}
# Below this confidence a term is reported as unmapped rather than silently coded.
MIN_MAPPING_SCORE = 0.85
# Where a code system comes from, for FHIR codings and DICOM coded concepts.
CODE_SYSTEMS = {
    "SNOMED": ("http://snomed.info/sct", "SCT"),
    "SCT": ("http://snomed.info/sct", "SCT"),
    "ICD-10": ("http://hl7.org/fhir/sid/icd-10", "I10"),
    "ICD-10-CM": ("http://hl7.org/fhir/sid/icd-10-cm", "I10C"),
    "LOINC": ("http://loinc.org", "LN"),
    "RadLex": ("http://radlex.org", "RADLEX"),
    "HPO": ("http://human-phenotype-ontology.org", "HPO"),
    "DCM": ("http://dicom.nema.org/resources/ontology/DCM", "DCM"),
}


class TermMapping(BaseModel):
    """What the normaliser made of one finding term."""

    term: str
    concept: Concept | None = None
    wording: str
    score: float = 0.0

    @property
    def mapped(self) -> bool:
        return self.concept is not None


def map_term(term: str, index, wordings: Mapping[str, str] | None = None) -> TermMapping:
    """The concept for `term` (or none below `MIN_MAPPING_SCORE`), and the wording to use for it."""
    hits = index.search(term, k=1)
    if not hits or hits[0].score < MIN_MAPPING_SCORE:
        return TermMapping(term=term, wording=term)
    concept = hits[0].concept
    wording = (wordings or {}).get(concept.id) or _preferred_wording(term, hits[0].matched, concept)
    return TermMapping(term=term, concept=concept, wording=wording, score=hits[0].score)


def _preferred_wording(term: str, matched: str, concept: Concept) -> str:
    """The concept's preferred term, in the case the finding used (sentence case stays sentence case)."""
    preferred = concept.preferred
    return preferred[0].lower() + preferred[1:] if term[:1].islower() and not preferred[:2].isupper() else preferred


def normalise_findings(findings: list[Finding], index, wordings: Mapping[str, str] | None = None) -> tuple[list[Finding], list[TermMapping]]:
    """Findings with clinical terms replaced by their concept's wording and codes, plus every mapping made.

    The original term is kept in the finding's parameters (``term_as_found``) so nothing is lost.
    """
    cache: dict[str, TermMapping] = {}
    normalised = []
    for finding in findings:
        if finding.kind not in CLINICAL_KINDS or finding.concept_id:
            normalised.append(finding)
            continue
        if finding.what.casefold() not in cache:
            cache[finding.what.casefold()] = map_term(finding.what, index, wordings)
        mapping = cache[finding.what.casefold()]
        if not mapping.mapped:
            normalised.append(finding)
            continue
        normalised.append(finding.model_copy(update={
            "what": mapping.wording,
            "concept_id": mapping.concept.id,
            "codes": {**mapping.concept.codes, **finding.codes},
            "parameters": {**finding.parameters, "term_as_found": finding.what},
        }))
    return normalised, list(cache.values())


def equivalent_ids(text: str, concept: Concept, index) -> set[str]:
    """Ids of every concept `text` names exactly, in any source, plus their cross-source links.

    The sources overlap ("heart attack" is an HPO synonym of Myocardial infarction and an ICD-10
    inclusion term of I21); two mentions name the same idea when these sets intersect.
    """
    ids = {concept.id, *concept.related}
    for hit in index.search(text, k=5):
        if hit.score >= 1.0 and hit.matched.casefold() == text.casefold():
            ids |= {hit.concept.id, *hit.concept.related}
    return ids


def group_mentions(mentions: list[TermMention], index) -> list[tuple[set[str], list[TermMention]]]:
    """Mentions grouped by the idea they name (union of intersecting `equivalent_ids`)."""
    by_text: dict[tuple[str, str], set[str]] = {}  # one index search per distinct wording and concept
    groups: list[tuple[set[str], list[TermMention]]] = []
    for mention in mentions:
        key = (mention.text.casefold(), mention.concept.id)
        if key not in by_text:
            by_text[key] = equivalent_ids(mention.text, mention.concept, index)
        ids = by_text[key]
        joined = [g for g in groups if g[0] & ids]
        merged_ids = set(ids).union(*(g[0] for g in joined))
        merged = [m for g in joined for m in g[1]] + [mention]
        groups = [g for g in groups if not any(g is j for j in joined)] + [(merged_ids, merged)]
    return groups
