"""Typed findings: what a report is assembled from (never from chat text).

Every tool result that belongs in a report turns itself into findings (`ToolResult.findings()`):
what was found or measured, where, its value with a unit, and which tool with which parameters
produced it, so that every number in a report can be traced back.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

FindingKind = Literal["technique", "measurement", "structure", "anomaly", "term", "observation"]


class Quantity(BaseModel):
    value: float
    unit: str  # UCUM-style where possible: "mm", "mL", "[hnsf'U]" is written "HU" for readability

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit}"


class Finding(BaseModel):
    kind: FindingKind
    what: str = Field(description="the finding or measured thing, e.g. 'brain volume', 'slice thickness'")
    where: str | None = Field(None, description="anatomical location or coordinates, when known")
    quantities: list[Quantity] = []
    concept_id: str | None = Field(None, description="term-index concept, once normalised")
    codes: dict[str, str] = {}
    source_tool: str
    parameters: dict[str, Any] = {}
    model_observation: bool = Field(False, description="stated by a model looking at the image, not measured")
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


# --- what each result field means, and the claims an answer is rendered from -----------------

ClaimKind = Literal["quantity", "count", "verdict", "code", "label", "side", "text"]


class FieldMeaning(BaseModel):
    """How one field of a typed tool result is said to a clinician (kept in the field's json_schema_extra["answer"]).

    The field's pydantic `description` is its meaning in clinical words; this adds what rendering needs, so that
    an answer's figures come from code, never from a model typing them.
    """

    kind: ClaimKind = "quantity"
    unit: str = ""
    fmt: str = "g"  # format spec of the value (or of each part)
    parts: list[str] = Field(default_factory=list, description="meaning of each component of a tuple, in order, "
                                                               "then '|'-separated ways of asking for it")
    says: list[str] = Field(default_factory=list, description="a yes/no field's words: for False, then for True")
    headline: bool = Field(False, description="said when the question names no particular field")
    asked_as: list[str] = Field(default_factory=list, description="how clinicians ask for it, for the field matcher")


def meaning(default: Any = ..., *, description: str, **answer: Any) -> Any:
    """A pydantic Field whose clinical meaning and rendering are declared where the field is (testable per field)."""
    return Field(default, description=description,
                 json_schema_extra={"answer": FieldMeaning(**answer).model_dump(exclude_defaults=True)})


def not_an_answer(default: Any = ..., *, description: str) -> Any:
    """A field that is bookkeeping (a name, a count used elsewhere), never a claim of an answer."""
    return Field(default, description=description, json_schema_extra={"answer": None})


class Claim(BaseModel):
    """One checkable statement an answer may make: the value of one named field of one tool result, rendered by code."""

    tool: str
    path: str = Field(description="dotted field path in the typed result, e.g. 'spacing_mm.2'")
    meaning: str = Field(description="the field's meaning in clinical words")
    kind: ClaimKind
    value: Any = None
    text: str = Field(description="the value as the answer writes it, with its unit")
    headline: bool = False
    asked_as: list[str] = []
    earlier: bool = Field(False, description="quoted from an earlier turn of the conversation, not measured now")

    def sentence(self) -> str:
        head = self.meaning[:1].upper() + self.meaning[1:]
        return f"{head}: {self.text}" + (" (from earlier in this conversation)" if self.earlier else "") + "."
