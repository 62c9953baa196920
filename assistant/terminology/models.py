"""Typed records of the term index, shared by the tools, the translator and the report writer."""

from __future__ import annotations

from pydantic import BaseModel, Field


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


class TermHit(BaseModel):
    """A concept found for a query: `matched` is the synonym or label that matched, `score` a 0-1 confidence."""

    concept: Concept
    matched: str
    score: float
    label: str | None = Field(None, description="The concept's label in the requested language, if there is one.")


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
