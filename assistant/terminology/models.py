"""Typed records of the term index, shared by the tools, the translator and the report writer."""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from pydantic import BaseModel, Field

LinkMethod = Literal["shared-code", "source-mapping", "label-exact", "label-variant", "code-parent"]


class Concept(BaseModel):
    """One concept of one source; `codes` links it to the same idea in other systems."""

    id: str = Field(description="Source-prefixed id, e.g. 'icd10cm:I21.9', 'hpo:HP:0001250', 'sct:12738006'.")
    preferred: str
    synonyms: list[str] = Field(default_factory=list)
    codes: dict[str, str] = Field(default_factory=dict, description="System -> code, e.g. {'ICD-10': 'I21'}.")
    labels: dict[str, str] = Field(default_factory=dict, description="Language -> label, e.g. {'es': 'Infarto'}.")
    source: str
    related: list[str] = Field(default_factory=list, description="Ids of concepts in other sources sharing a code.")

    def label(self, lang: str) -> str | None:
        return self.preferred if lang == "en" else self.labels.get(lang)


class ConceptLink(BaseModel):
    """Why two concepts of different sources are taken as one (or one as the other's parent)."""

    source: str = Field(description="Concept id, e.g. 'hpo:HP:0001658'.")
    target: str = Field(description="Concept id, e.g. 'icd10:I21'.")
    method: LinkMethod
    confidence: float = Field(description="0-1: 1 for a shared code; the embedder's cosine for a variant match.")
    evidence: str = Field("", description="The code or the two names that matched.")


class LinkedConcept(BaseModel):
    """A concept as every terminology knows it: its member concepts, all their codes and labels."""

    id: str = Field(description="The most authoritative member's id.")
    preferred: str
    members: list[str]
    codes: dict[str, list[str]] = Field(default_factory=dict,
                                        description="System -> codes, the most authoritative first.")
    broader: dict[str, str] = Field(default_factory=dict,
                                    description="System -> nearest broader code where the system has no exact one "
                                                "(e.g. the WHO ICD-10 category of an ICD-10-CM-only code).")
    labels: dict[str, str] = Field(default_factory=dict, description="Language -> label, English included.")
    links: list[ConceptLink] = Field(default_factory=list)

    def code(self, system: str) -> str | None:
        codes = self.codes.get(system)
        return codes[0] if codes else None

    def link_confidence(self, member: str) -> float:
        """How sure the graph is that `member` belongs here: the weakest link on its path to the head
        (1 for the head itself)."""
        neighbours: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for link in self.links:
            if link.method != "code-parent":
                neighbours[link.source].append((link.target, link.confidence))
                neighbours[link.target].append((link.source, link.confidence))
        best = {self.id: 1.0}
        frontier = [self.id]
        while frontier:
            node = frontier.pop()
            for other, confidence in neighbours[node]:
                value = min(best[node], confidence)
                if value > best.get(other, -1.0):
                    best[other] = value
                    frontier.append(other)
        return best.get(member, 0.0)


class TermHit(BaseModel):
    """A concept found for a query: `matched` is the synonym or label that matched, `score` a 0-1 confidence."""

    concept: Concept
    matched: str
    score: float
    label: str | None = Field(None, description="The concept's label in the requested language, if there is one.")
    linked: LinkedConcept | None = Field(
        None, description="The same concept across all terminologies: every code (ICD-10, ICD-10-CM, SNOMED, HPO, "
                          "RadLex/LOINC where known), labels in every language, and how each link was made.")


class TermMention(BaseModel):
    """A concept mentioned in a text, at characters [start, end)."""

    start: int
    end: int
    text: str
    concept: Concept
    score: float


class SourceInfo(BaseModel):
    """Provenance kept in the index metadata and shown in the README."""

    name: str
    title: str
    package: str
    version: str
    licence: str
    concepts: int = 0
